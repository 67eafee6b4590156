// Requests in flight and arriving during the drain: they complete, are told to
// close their connection, are counted, and the app's onClose hooks wait for
// them. The delay adapts while requests keep arriving (quietPeriod).
import t, { type Test } from 'tap'
import { killChild, startChild, type RunningChild } from './helpers/child.js'
import { createPool, get } from './helpers/http.js'
import { startLoad } from '../scripts/support/load.js'

const drainStarted = (line: { msg: string }): boolean => line.msg.startsWith('drain started')
const raiseDrainDelay = (line: { msg: string, level: number }): boolean => line.level === 40 && /raise drainDelay/.test(line.msg)

const start = async (test: Test, options: object): Promise<RunningChild> => {
  const running = await startChild('app.ts', {
    FIXTURE: JSON.stringify({ trace: true, options: { gracePeriod: 8000, closeTimeout: 1000, exitMargin: 500, ...options } })
  })
  test.teardown(() => killChild(running))
  return running
}

t.test('a request in flight at SIGTERM completes, is counted, and onClose runs after its response', async t => {
  // drainDelay 1.5 s: the three requests below must fit inside the delay even on a loaded CI machine
  // (with 300 ms, a new connection opened late was refused: the delay had legitimately ended).
  const running = await start(t, { drainDelay: 1500, quietPeriod: 0 })
  const pool = createPool(running, 2)
  t.teardown(() => pool.destroy())
  // Outlasts the delay, so the drain has to wait for it with the listener already closed.
  const slow = get(pool, '/slow?ms=3000')
  await running.waitForMessage(m => m.event === 'request' && m.url === '/slow?ms=3000')
  running.kill('SIGTERM')
  await running.waitForLog(drainStarted)
  // During the delay: two requests and a probe; only the requests count as work.
  const during = [await get(pool, '/'), await get(pool, '/readyz'), await get(pool, '/')]
  t.same(during.map(r => r.status), [200, 503, 200])

  const response = await slow
  t.equal(response.status, 200, 'the in-flight request completed')
  t.equal(response.headers.connection, 'close', 'and told its client to close the connection')
  const exit = await running.exited
  t.equal(exit.code, 0)

  const report = running.report()
  t.equal(report?.requests.inFlightAtStart, 1)
  t.equal(report?.requests.servedDuringDrain, 2, 'requests served during the drain, probes excluded')
  t.same(report?.requests.cut, [])

  // IPC is one ordered channel: the order of these messages is the order of events in the app.
  const events = running.messages as Array<{ event: string, url?: string, inFlight?: number, state?: string }>
  const onClose = events.findIndex(m => m.event === 'onClose')
  const lastResponse = events.findLastIndex(m => m.event === 'response')
  t.ok(onClose > -1, 'onClose ran')
  t.ok(onClose > lastResponse, 'onClose ran after the last response')
  t.equal(events[lastResponse]?.url, '/slow?ms=3000', 'the last response was the slow one')
  t.match(events[onClose], { inFlight: 0, state: 'closing' })
})

t.test('a response whose headers left before the signal: its socket still closes after it, no keep-alive wait', async t => {
  const running = await start(t, { drainDelay: 200, quietPeriod: 0 })
  const pool = createPool(running, 1)
  t.teardown(() => pool.destroy())
  const response = await pool.request({ method: 'GET', path: '/stream?ms=1200' })
  t.equal(response.headers.connection, 'keep-alive', 'keep-alive was promised before the drain')
  running.kill('SIGTERM')
  t.equal(await response.body.text(), 'first,last', 'the response completes')
  const exit = await running.exited
  t.equal(exit.code, 0)
  // Bound: the stream ends at 1.2 s; leaving the socket to Fastify's 72 s keepAliveTimeout would miss any grace period.
  t.ok(exit.ms < 1200 + 3000, `exited ${Math.round(exit.ms)} ms after SIGTERM`)
  t.match(running.report(), { requests: { inFlightAtStart: 1, cut: [] }, connections: { closedGracefully: 1, destroyed: 0 } })
})

t.test('quietPeriod: the listener stays open while requests keep arriving after drainDelay', async t => {
  const running = await start(t, { drainDelay: 200, quietPeriod: 500 })
  running.kill('SIGTERM')
  await running.waitForLog(drainStarted)
  // A load balancer that noticed late: a request every 100 ms for 1.5 s, far past the 200 ms drainDelay.
  const load = await startLoad({ origin: running.origin, rate: 10, durationMs: 1500, connections: 2, slowFraction: 0 }).done
  t.equal(load.failed, 0, `every request served (${JSON.stringify(load.failures)})`)
  t.ok(load.sent >= 10, `${load.sent} requests sent`)
  const exit = await running.exited
  t.equal(exit.code, 0)
  const report = running.report()
  t.equal(report?.delay.plannedMs, 200)
  t.ok(report?.delay.extendedMs > 0, `the delay was extended by ${report?.delay.extendedMs} ms`)
  // The load ran for 1.5 s after the signal: the delay covered it.
  t.ok(report?.delay.actualMs >= 1500, `the listener stayed open ${report?.delay.actualMs} ms`)
  t.equal(report?.requests.servedDuringDrain, load.sent)
  const warning = await running.waitForLog(raiseDrainDelay)
  t.match(warning, { drainDelay: 200, quietPeriod: 500 }, 'the warning carries the figures')
})

t.test('quietPeriod: 0 turns the extension off', async t => {
  const running = await start(t, { drainDelay: 200, quietPeriod: 0 })
  running.kill('SIGTERM')
  await running.waitForLog(drainStarted)
  const load = await startLoad({ origin: running.origin, rate: 10, durationMs: 1500, connections: 2, slowFraction: 0 }).done
  // The listener closed at 200 ms: the rest of the load found nobody listening.
  t.ok((load.failures.ECONNREFUSED ?? 0) > 0, `later requests refused (${JSON.stringify(load.failures)})`)
  t.equal((await running.exited).code, 0)
  const report = running.report()
  t.equal(report?.delay.extendedMs, 0, 'no extension')
  t.ok(report?.delay.actualMs < 1000, `the listener closed after ${report?.delay.actualMs} ms`)
  t.notOk(running.logs.some(raiseDrainDelay), 'no warning')
})
