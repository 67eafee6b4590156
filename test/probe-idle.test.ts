// Issue 16, point 1: a response the plugin sends itself (a probe, a preStop answer)
// leaves its keep-alive socket exactly as idle as any other finished request. A
// monitor or load balancer that keeps its health-check connection open must not hold
// the drain to its budget: the socket is closed with the other idle ones, exit 0.
import t, { type Test } from 'tap'
import type { Socket } from 'node:net'
import { killChild, startChild, type RunningChild } from './helpers/child.js'
import { connectRaw, howClosed, readResponse } from './helpers/http.js'

const TOKEN = 'a-token-of-sixteen-chars'
// gracePeriod 15000 with drainDelay 500: the numbers of the issue. exitMargin is derived (1000) and
// closeTimeout too (1500), so requests are cut at 12 500 ms: a socket held to the budget exits 1 after that.
const options = { gracePeriod: 15_000, drainDelay: 500, quietPeriod: 0, preStop: { token: TOKEN } }
const IN_FLIGHT_END = 15_000 - 1_000 - 1_500

async function start (test: Test): Promise<RunningChild> {
  const running = await startChild('app.ts', { FIXTURE: JSON.stringify({ options }) })
  test.teardown(() => killChild(running))
  return running
}

/** A raw keep-alive socket whose only request was `request`, answered with `status`, and that then stays idle. */
async function servedOnce (test: Test, running: RunningChild, request: string, status: number): Promise<Socket> {
  const socket = await connectRaw(running)
  test.teardown(() => socket.destroy())
  socket.on('error', () => {})
  const response = readResponse(socket)
  socket.write(request)
  const answer = await response
  test.equal(answer.status, status, `answered ${status}`)
  test.not(answer.headers.connection, 'close', 'and kept alive: the client may reuse the socket')
  return socket
}

const cases: Array<[string, string, number]> = [
  ['GET /readyz', 'GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n', 200],
  ['GET /livez', 'GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n', 200],
  ['GET /readyz?verbose (a query string)', 'GET /readyz?verbose HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n', 200],
  ['a preStop call without the token (403)', 'GET /prestop HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n', 403]
]

for (const [name, request, status] of cases) {
  t.test(`a keep-alive socket whose last request was ${name} is closed like any idle one: exit 0, nothing cut`, async t => {
    const running = await start(t)
    const socket = await servedOnce(t, running, request, status)
    const closed = howClosed(socket)
    running.kill('SIGTERM')
    t.equal(await closed, 'end', 'the server ended the socket with a FIN')
    const exit = await running.exited
    t.comment(`${name}, then idle: SIGTERM → exit ${exit.code} after ${Math.round(exit.ms)} ms`)
    t.equal(exit.code, 0, 'exit 0: nothing was lost')
    // Held to the budget, the drain would end after IN_FLIGHT_END (12.5 s). The bound sits far below it and
    // far above what the drain needs (drainDelay 500 + a scan + the closers: well under a second when idle),
    // so a loaded 2-core machine cannot make it flaky.
    t.ok(exit.ms < IN_FLIGHT_END / 2, `exited ${Math.round(exit.ms)} ms after SIGTERM, not held to the budget (${IN_FLIGHT_END} ms)`)
    t.match(running.report(), { requests: { cut: [] }, connections: { destroyed: 0, closedGracefully: 1 } })
  })
}

t.test('a probe is still no work: it does not count as served during the drain, nor hold the quiet period', async t => {
  const running = await start(t)
  const socket = await servedOnce(t, running, cases[0]?.[1] ?? '', 200)
  const closed = howClosed(socket)
  running.kill('SIGTERM')
  await running.waitForLog(line => line.msg.startsWith('drain started'))
  // A probe on a new connection during the delay: readiness fails, and the connection is told to close.
  const probe = await connectRaw(running)
  t.teardown(() => probe.destroy())
  const answer = readResponse(probe)
  probe.write('GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
  t.match(await answer, { status: 503, headers: { connection: 'close' } })
  t.equal(await closed, 'end')
  t.equal((await running.exited).code, 0)
  t.match(running.report(), { requests: { servedDuringDrain: 0, cut: [] }, delay: { endedBy: 'delay' } })
})
