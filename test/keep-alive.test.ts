// Keep-alive connections across a drain, over HTTP/1.1 and HTTPS: keep serving
// during the delay, Connection: close on every response, then refuse new
// connections and close idle ones with a FIN, never waiting on Fastify's 72 s
// keepAliveTimeout.
import t, { type Test } from 'tap'
import type { Socket } from 'node:net'
import { performance } from 'node:perf_hooks'
import { setTimeout } from 'node:timers/promises'
import { killChild, startChild, type RunningChild } from './helpers/child.js'
import { connectRaw, createPool, errorCode, get, getOnNewConnection, howClosed, idleSocket, readResponse, requestHead, type Response } from './helpers/http.js'

/** lib's FRESH_SOCKET_GRACE_MS: how long after its accept a socket that has sent nothing is left open. */
const FRESH_SOCKET_GRACE_MS = 1_000

const drainStarted = (line: { msg: string }): boolean => line.msg.startsWith('drain started')

for (const https of [false, true]) {
  const protocol = https ? 'HTTPS' : 'HTTP/1.1'
  const start = async (test: Test, options: object): Promise<RunningChild> => {
    const running = await startChild('app.ts', {
      FIXTURE: JSON.stringify({ https, trace: true, options: { gracePeriod: 8000, quietPeriod: 0, closeTimeout: 1000, exitMargin: 500, ...options } })
    })
    test.teardown(() => killChild(running))
    return running
  }

  t.test(`${protocol}: during the delay, existing and new connections are served, with Connection: close`, async t => {
    const running = await start(t, { drainDelay: 1500 })
    const pool = createPool(running, 1)
    t.teardown(() => pool.destroy())
    const before = await get(pool, '/port')
    t.equal(before.headers.connection, 'keep-alive', 'keep-alive before the drain')
    running.kill('SIGTERM')
    await running.waitForLog(drainStarted)

    const existing = await get(pool, '/port')
    t.equal(existing.status, 200, 'existing connection: 200, not 503')
    t.equal(existing.headers.connection, 'close', 'existing connection: told to close')
    t.equal(JSON.parse(existing.body).port, JSON.parse(before.body).port, 'the same keep-alive socket served it')
    t.equal(JSON.parse(existing.body).state, 'draining', 'served during the delay')

    const fresh = await getOnNewConnection(running, '/port')
    t.equal(fresh.status, 200, 'new connection: 200, not 503, not refused')
    t.equal(fresh.headers.connection, 'close', 'new connection: told to close')
    t.equal(JSON.parse(fresh.body).state, 'draining', 'served during the delay')

    const exit = await running.exited
    t.equal(exit.code, 0)
    t.equal(running.report()?.requests.servedDuringDrain, 2)
  })

  t.test(`${protocol}: after the delay, idle sockets get a FIN and new connections are refused`, async t => {
    const drainDelay = 800
    const running = await start(t, { drainDelay })
    const idle = await idleSocket(running)
    t.teardown(() => idle.destroy())
    const closed = howClosed(idle)
    // Keeps the process serving after the listener closed, so the refusal comes from a live server.
    const slowPool = createPool(running, 1)
    t.teardown(() => slowPool.destroy())
    let slowDone = false
    const slow = get(slowPool, '/slow?ms=2500').finally(() => { slowDone = true })
    await running.waitForMessage(m => m.event === 'request' && m.url === '/slow?ms=2500')
    const killedAt = performance.now()
    running.kill('SIGTERM')

    t.equal(await closed, 'end', 'the idle keep-alive socket was ended with a FIN, not reset')
    const closedAfter = performance.now() - killedAt
    // A lower bound, so timing cannot make it flaky: timers never fire early.
    t.ok(closedAfter >= drainDelay, `closed late, after the delay (${Math.round(closedAfter)} ms)`)
    // The listener closes before idle sockets are ended, so by now it is closed.
    t.equal(await errorCode(() => getOnNewConnection(running, '/')), 'ECONNREFUSED', 'refused, not reset')
    t.notOk(slowDone, 'while the process still serves its in-flight request')
    const response = await slow
    t.equal(response.status, 200)
    t.equal(response.headers.connection, 'close')
    t.equal((await running.exited).code, 0)
  })

  // Two guards keep a socket that looks idle when the listener closes but is not: unread
  // bytes (a request is arriving) and the fresh-socket grace (a socket that has not sent its
  // first request yet). Each case below is protected by one of them only, so removing either
  // guard fails its own case. SIGINT skips the delay: the listener closes and the idle sockets
  // are judged at once. A sibling keep-alive socket, idle for real, says when that has happened:
  // one scan ends every idle socket, so once the sibling's FIN is in, the socket under test was judged too.

  t.test(`${protocol}: unread bytes: an established socket holding part of its next request is not closed`, async t => {
    const running = await start(t, { drainDelay: 0 })
    // Served a real request (not a probe): the fresh-socket grace does not apply to it.
    const held = await idleSocket(running)
    t.teardown(() => held.destroy())
    held.on('error', () => {})
    const heldClosed = closedYet(held)
    const sibling = await idleSocket(running)
    t.teardown(() => sibling.destroy())
    const siblingClosed = howClosed(sibling)
    // The scenario is an old socket: older than FRESH_SOCKET_GRACE_MS, so that no grace for new
    // sockets can protect it, whatever that grace is keyed on. This wait is its age, not a race hidden.
    await setTimeout(FRESH_SOCKET_GRACE_MS + 200)
    // Its next request, the headers without the final blank line: bytes the server reads and cannot answer yet.
    held.write(requestHead('/port'))
    // Those bytes were in the server's receive buffer before this request's connection even existed,
    // and the server reads every readable socket each time round its loop: once this is answered, they are read.
    await roundTrip(running)
    running.kill('SIGINT')
    t.equal(await siblingClosed, 'end', 'the idle scan ran: the idle sibling got its FIN')
    // The rest of the request takes its time, as a slow client's would: 300 ms, well under the
    // limit after which a request that makes no progress is cut as stalled (a couple of seconds).
    // The socket must still be open when it comes.
    await setTimeout(300)
    t.notOk(heldClosed(), 'the socket with unread bytes was not closed by the idle scan')
    const answer = await send(held, '\r\n')
    t.equal((answer as Response).status, 200, `the request is served once complete (${answer instanceof Error ? answer.message : 'answered'})`)
    t.equal((answer as Response).headers?.connection, 'close')
    t.equal((await running.exited).code, 0)
    t.match(running.report(), { requests: { cut: [] }, connections: { destroyed: 0 } })
  })

  t.test(`${protocol}: fresh socket: one accepted just before the listener closed, silent so far, is served`, async t => {
    const running = await start(t, { drainDelay: 0 })
    const sibling = await idleSocket(running)
    t.teardown(() => sibling.destroy())
    const siblingClosed = howClosed(sibling)
    // Connected, and (below) accepted by the server, but its first request not sent yet: it is
    // probably on the wire (DESIGN §4). No byte of it has arrived, so only the grace protects it.
    const fresh = await connectRaw(running)
    const connectedAt = performance.now()
    t.teardown(() => fresh.destroy())
    fresh.on('error', () => {})
    const freshClosed = closedYet(fresh)
    // TLS: the handshake is done, so the server has accepted it. Plain TCP: the kernel completes the
    // handshake alone; a later connection answered means this one was accepted first (the backlog is FIFO).
    if (!running.https) await roundTrip(running)
    running.kill('SIGINT')
    t.equal(await siblingClosed, 'end', 'the idle scan ran: the idle sibling got its FIN')
    t.notOk(freshClosed(), 'the fresh socket was not closed by the idle scan')
    // The grace is FRESH_SOCKET_GRACE_MS from the accept: the request must be in before it ends.
    t.comment(`request sent ${Math.round(performance.now() - connectedAt)} ms after the connection (grace: ${FRESH_SOCKET_GRACE_MS} ms)`)
    const answer = await send(fresh, requestHead('/port', '\r\n'))
    t.equal((answer as Response).status, 200, `its first request is served (${answer instanceof Error ? answer.message : 'answered'})`)
    t.equal((answer as Response).headers?.connection, 'close')
    t.equal(await errorCode(() => getOnNewConnection(running, '/')), 'ECONNREFUSED', 'while the listener is closed')
    t.equal((await running.exited).code, 0)
    t.match(running.report(), { requests: { cut: [] }, connections: { destroyed: 0 } })
  })

  t.test(`${protocol}: an idle keep-alive connection does not hold the drain for keepAliveTimeout`, async t => {
    const drainDelay = 500
    const running = await start(t, { drainDelay })
    // The client would keep this socket for 60 s and Fastify for 72 s: only the drain closes it.
    const pool = createPool(running, 2)
    t.teardown(() => pool.destroy())
    await Promise.all([get(pool, '/'), get(pool, '/')])
    running.kill('SIGTERM')
    const exit = await running.exited
    t.equal(exit.code, 0)
    // Bound: drainDelay plus a generous allowance for a loaded machine; waiting on the keep-alive timeout would take 72 s.
    t.ok(exit.ms < drainDelay + 4000, `exited ${Math.round(exit.ms)} ms after SIGTERM`)
    t.comment(`${protocol}, idle keep-alive pool: exit after ${Math.round(exit.ms)} ms (drainDelay ${drainDelay})`)
    const report = running.report()
    t.equal(report?.connections.openAtStart, 2)
    t.equal(report?.connections.closedGracefully, 2)
    t.equal(report?.connections.destroyed, 0)
  })
}

/** One request on a connection of its own, answered and closed: the server has been round its loop since. */
async function roundTrip (running: RunningChild): Promise<void> {
  const socket = await connectRaw(running)
  // Only the answer matters: how the socket goes afterwards (a FIN, or a reset on a loaded machine) does not.
  socket.on('error', () => {})
  const closed = new Promise(resolve => socket.once('close', resolve))
  const response = readResponse(socket)
  socket.write(requestHead('/', 'Connection: close\r\n\r\n'))
  await response
  await closed
}

/** Writes `text` on `socket` and reads the response, or says why there is none (a closed socket, at once). */
async function send (socket: Socket, text: string): Promise<Response | Error> {
  if (socket.destroyed || socket.readableEnded) return new Error('the server had closed the socket')
  const response = readResponse(socket).catch((error: Error) => error)
  socket.write(text)
  return await response
}

/**
 * Whether the server has ended or closed `socket` yet. Resumes it, since a paused socket
 * never emits 'end': the server sends nothing before the test's request, and readResponse()
 * is listening before that is written.
 */
function closedYet (socket: Socket): () => boolean {
  let closed = false
  const mark = (): void => { closed = true }
  socket.once('end', mark)
  socket.once('close', mark)
  socket.resume()
  return () => closed
}
