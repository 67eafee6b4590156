// Keep-alive connections across a drain, over HTTP/1.1 and HTTPS: keep serving
// during the delay, Connection: close on every response, then refuse new
// connections and close idle ones with a FIN, never waiting on Fastify's 72 s
// keepAliveTimeout.
import t, { type Test } from 'tap'
import { performance } from 'node:perf_hooks'
import { killChild, startChild, type RunningChild } from './helpers/child.js'
import { connectRaw, createPool, errorCode, get, getOnNewConnection, heldRequest, howClosed, idleSocket, readResponse, requestHead } from './helpers/http.js'

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

  t.test(`${protocol}: closing the listener cuts no request that is already on its way`, async t => {
    const running = await start(t, { drainDelay: 5000 })
    // Accepted, but its first request not sent yet: it is probably on the wire (DESIGN §4).
    const fresh = await connectRaw(running)
    t.teardown(() => fresh.destroy())
    // Served once, then the next request half-sent: unread bytes on an otherwise idle socket.
    const held = await heldRequest(running, '/port')
    t.teardown(() => held.socket.destroy())
    // SIGINT: no delay, the listener closes and idle sockets are closed at once.
    running.kill('SIGINT')
    await running.waitForLog(drainStarted)
    const first = readResponse(fresh)
    fresh.write(requestHead('/port', '\r\n'))
    const [freshResponse, heldResponse] = await Promise.all([first, held.finish()])
    t.equal(freshResponse.status, 200, 'the fresh socket\'s first request is served')
    t.equal(freshResponse.headers.connection, 'close')
    t.equal(heldResponse.status, 200, 'the half-sent request is served')
    t.equal(heldResponse.headers.connection, 'close')
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
