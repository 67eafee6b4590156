// The one budget (issue 11): defaults that fit any grace period, requests
// before reservations, no delay when the delay is 0, traffic that no load
// balancer routes does not hold the drain, the arithmetic logged, and a
// warning when gracePeriod was left at Kubernetes' default elsewhere.
import t, { type Test } from 'tap'
import Fastify from 'fastify'
import gracefulDrain, { resolveOptions } from 'fastify-graceful-drain'
import type { GracefulDrainOptions } from 'fastify-graceful-drain'
import { killChild, startChild, type LogLine, type RunningChild } from './helpers/child.js'
import { createPool, get } from './helpers/http.js'

const start = async (test: Test, options: GracefulDrainOptions, env: Record<string, string> = {}): Promise<RunningChild> => {
  const running = await startChild('app.ts', { FIXTURE: JSON.stringify({ trace: true, options }), ...env })
  test.teardown(() => killChild(running))
  return running
}

// A dozen child processes, two of them draining for 6–7 s by design, on a shared 2-core machine.
t.setTimeout(300_000)

const GRACE_PERIODS = [2_000, 5_000, 10_000, 15_000, 20_000, 30_000, 60_000, 120_000, 300_000]

t.test('every grace period from 2 s up registers with the defaults, and the derived budget fits', async t => {
  for (const gracePeriod of GRACE_PERIODS) {
    const app = Fastify()
    await app.register(gracefulDrain, { gracePeriod, exit: false, signals: [] })
    await app.close()
    const o = resolveOptions({ gracePeriod })
    const inFlightEnd = gracePeriod - o.exitMargin - o.closeTimeout
    t.ok(o.drainDelay > 0 && o.closeTimeout > 0 && o.exitMargin > 0, `${gracePeriod}: every reservation is there`)
    t.ok(o.drainDelay <= o.maxDrainDelay && o.maxDrainDelay < inFlightEnd, `${gracePeriod}: the quiet-period cap lies inside the in-flight window`)
    // The reservations are shares adding up to 45 %: the in-flight drain keeps more than half the budget.
    t.ok(inFlightEnd - o.drainDelay > gracePeriod / 2, `${gracePeriod}: requests keep more than half of the budget`)
    t.same(o.given, ['gracePeriod'], `${gracePeriod}: only gracePeriod counts as set`)
  }
  const at30 = resolveOptions({})
  t.match(at30, { gracePeriod: 30_000, drainDelay: 5_000, quietPeriod: 2_000, closeTimeout: 3_000, exitMargin: 1_000 }, 'the 30 s default')
})

t.test('options that are set are honoured exactly; the unset ones shrink around them', async t => {
  t.match(resolveOptions({ gracePeriod: 8_000, drainDelay: 3_000 }), { drainDelay: 3_000, closeTimeout: 800, exitMargin: 800 })
  const bigCloser = resolveOptions({ gracePeriod: 10_000, closeTimeout: 4_000 })
  t.equal(bigCloser.closeTimeout, 4_000, 'the closers\' share set is kept')
  // 6000 ms left by the set value: the derived delay and margin take at most half of it.
  t.ok(bigCloser.drainDelay + bigCloser.exitMargin <= 3_000 && bigCloser.drainDelay > 0, 'the derived ones shrink to fit', { ...bigCloser })
  const tight = resolveOptions({ gracePeriod: 3_000, drainDelay: 2_500 })
  t.equal(tight.drainDelay, 2_500, 'the delay set is kept')
  t.ok(tight.closeTimeout + tight.exitMargin <= 250, 'the derived reservations take at most half of the 500 ms left', { ...tight })
  t.same(resolveOptions({ gracePeriod: 3_000, drainDelay: 2_500 }).given, ['gracePeriod', 'drainDelay'])
})

t.test('requests before reservations: a request needing 2.6 s completes under { gracePeriod: 8000, drainDelay: 1500 }', async t => {
  const running = await start(t, { gracePeriod: 8_000, drainDelay: 1_500 })
  const pool = createPool(running, 2)
  t.teardown(() => pool.destroy())
  const slow = get(pool, '/slow?ms=2600')
  await running.waitForMessage(m => m.event === 'request' && m.url === '/slow?ms=2600')
  running.kill('SIGTERM')
  const response = await slow
  t.equal(response.status, 200, 'completed (a 5 s reservation used to cut it at +2.0 s)')
  t.equal(response.headers.connection, 'close')
  const exit = await running.exited
  t.equal(exit.code, 0)
  t.same(running.report()?.requests.cut, [])
})

t.test('requests before reservations: with only { gracePeriod: 10000 }, a request needing 6.5 s completes and the exit comes before 10 s', async t => {
  const running = await start(t, { gracePeriod: 10_000 })
  const pool = createPool(running, 2)
  t.teardown(() => pool.destroy())
  const slow = get(pool, '/slow?ms=6500')
  await running.waitForMessage(m => m.event === 'request' && m.url === '/slow?ms=6500')
  running.kill('SIGTERM')
  const response = await slow
  t.equal(response.status, 200)
  t.equal(response.headers.connection, 'close')
  const exit = await running.exited
  t.equal(exit.code, 0)
  const report = running.report()
  t.same(report?.requests.cut, [])
  // The deadline is gracePeriod − exitMargin (derived: 1000) = 9000 ms after the signal.
  t.ok(report !== undefined && report.durationMs < 9_000, 'the drain ended before its deadline', { durationMs: report?.durationMs })
  t.ok(report !== undefined && report.remainingMs > 0, 'the report says how much time was left')
})

t.test('no delay means no delay: drainDelay 0 skips the quiet-period extension', async t => {
  const running = await start(t, { gracePeriod: 10_000, drainDelay: 0 })
  const pool = createPool(running, 2)
  t.teardown(() => pool.destroy())
  const slow = get(pool, '/slow?ms=500')
  await running.waitForMessage(m => m.event === 'request' && m.url === '/slow?ms=500')
  running.kill('SIGTERM')
  t.equal((await slow).status, 200)
  t.equal((await running.exited).code, 0)
  const delay = running.report()?.delay
  t.match(delay, { plannedMs: 0, endedBy: 'delay' }, 'the listener closed at once, not after a quiet period')
  // The listener closes while the request is still in flight: the closing phase starts before it ends.
  const closing = running.report()?.phases.closing
  t.ok(closing !== undefined && closing < 500, 'closing began before the in-flight request ended (500 ms)', { closing })
})

t.test('no delay means no timer: with drainDelay 0 the listener closes before the event loop turns', async t => {
  const app = Fastify()
  await app.register(gracefulDrain, { drainDelay: 0, exit: false, signals: [] })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const report = app.drain.start()
  // A setTimeout(0) waits for the next timers phase (at least 1 ms): a setImmediate
  // queued now runs before it, so the listener is closed here only if nothing waited.
  await new Promise(resolve => setImmediate(resolve))
  t.equal(app.server.listening, false, 'the listener is closed within the signal\'s own turn')
  t.match(await report, { delay: { plannedMs: 0, endedBy: 'delay' }, exitCode: 0 })
})

t.test('drainDelay 0 with quietPeriod set: the extension runs, because it was asked for', async t => {
  const running = await start(t, { gracePeriod: 10_000, drainDelay: 0, quietPeriod: 300 })
  const pool = createPool(running, 2)
  t.teardown(() => pool.destroy())
  const slow = get(pool, '/slow?ms=500')
  await running.waitForMessage(m => m.event === 'request' && m.url === '/slow?ms=500')
  running.kill('SIGTERM')
  t.equal((await slow).status, 200)
  t.equal((await running.exited).code, 0)
  t.match(running.report()?.delay, { plannedMs: 0, endedBy: 'quiet period' })
})

/** Sends GET `path` every `everyMs` until `stop` aborts; bounded to 400 requests. */
async function poll (running: RunningChild, path: string, everyMs: number, stop: AbortSignal): Promise<number> {
  const pool = createPool(running, 1)
  let sent = 0
  try {
    for (; sent < 400 && !stop.aborted; sent++) {
      await get(pool, path).catch(() => {})
      await new Promise(resolve => setTimeout(resolve, everyMs))
    }
  } finally {
    await pool.destroy()
  }
  return sent
}

t.test('a /metrics scrape does not hold the drain open', async t => {
  const running = await start(t, { gracePeriod: 30_000, drainDelay: 500, quietPeriod: 500 })
  const stop = new AbortController()
  t.teardown(() => stop.abort())
  const scraping = poll(running, '/metrics', 100, stop.signal)
  running.kill('SIGTERM')
  const exit = await running.exited
  stop.abort()
  await scraping
  t.equal(exit.code, 0)
  const delay = running.report()?.delay
  t.not(delay?.endedBy, 'cap', 'the delay did not run to its cap')
  t.notOk(running.logs.some(line => line.level === 40 && /never went quiet|raise drainDelay/.test(line.msg)), 'no warning about late traffic')
})

t.test('a poller that never stops runs the delay to its cap, and the warning names it instead of advising a drainDelay', async t => {
  const options = { gracePeriod: 30_000, drainDelay: 500, quietPeriod: 500, maxDrainDelay: 2_000 }
  const running = await start(t, options)
  const stop = new AbortController()
  t.teardown(() => stop.abort())
  const polling = poll(running, '/status', 100, stop.signal)
  await running.waitForMessage(m => m.event === 'request' && m.url === '/status')
  running.kill('SIGTERM')
  const warning = await running.waitForLog(line => line.level === 40 && /never went quiet/.test(line.msg))
  stop.abort()
  await polling
  await running.exited
  t.match(warning.msg, /GET \/status ×\d+ \(every ~\d+ ms\)/, 'names the route and how often it came')
  t.match(warning.msg, /quietPeriodIgnore/, 'and the option that leaves it out')
  t.notMatch(warning.msg, /raise drainDelay/, 'no drainDelay can help against a poller')
  t.equal(running.report()?.delay.endedBy, 'cap')

  // The same poller, listed in quietPeriodIgnore: the drain no longer waits for it.
  const ignored = await start(t, { ...options, quietPeriodIgnore: ['/status'] })
  const stop2 = new AbortController()
  t.teardown(() => stop2.abort())
  const polling2 = poll(ignored, '/status', 100, stop2.signal)
  await ignored.waitForMessage(m => m.event === 'request' && m.url === '/status')
  ignored.kill('SIGTERM')
  await ignored.exited
  stop2.abort()
  await polling2
  t.not(ignored.report()?.delay.endedBy, 'cap', 'an ignored path does not extend the delay')
})

t.test('the resolved budget is logged at listen, once', async t => {
  const running = await start(t, { gracePeriod: 10_000 })
  const line = await running.waitForLog(l => l.msg.startsWith('drain budget'))
  t.match(line.budget, {
    gracePeriod: 10_000,
    drainDelay: 2_500,
    maxDrainDelay: 5_250,
    requestSignalAt: 7_200,
    inFlightCutAt: 8_000,
    closeTimeout: 1_000,
    exitMargin: 1_000,
    deadline: 9_000
  })
  t.same((line.budget as { derived: string[] }).derived, ['drainDelay', 'quietPeriod', 'maxDrainDelay', 'closeTimeout', 'exitMargin'])
  running.kill('SIGTERM')
  await running.exited
  t.equal(running.logs.filter(l => l.msg.startsWith('drain budget')).length, 1)
})

t.test('gracePeriod left unset outside Kubernetes: one warning naming the platform and the value to set', async t => {
  const platform = (running: RunningChild): LogLine | undefined => running.logs.find(l => l.msg.startsWith('gracePeriod is not set'))
  const cases: Array<[string, Record<string, string>, GracefulDrainOptions, string | undefined, number | undefined]> = [
    ['Cloud Run', { K_SERVICE: 'api', KUBERNETES_SERVICE_HOST: '' }, {}, 'Cloud Run', 10_000],
    ['PM2', { pm_id: '3', KUBERNETES_SERVICE_HOST: '', K_SERVICE: '' }, {}, 'PM2', 1_600],
    ['plain', { KUBERNETES_SERVICE_HOST: '', K_SERVICE: '', pm_id: '' }, {}, 'not Kubernetes', 10_000],
    ['a Kubernetes pod', { KUBERNETES_SERVICE_HOST: '10.0.0.1', K_SERVICE: '', pm_id: '' }, {}, undefined, undefined],
    ['gracePeriod set', { K_SERVICE: 'api', KUBERNETES_SERVICE_HOST: '' }, { gracePeriod: 10_000 }, undefined, undefined]
  ]
  for (const [name, env, options, expected, suggested] of cases) {
    const running = await start(t, options, env)
    await running.waitForLog(l => l.msg.startsWith('drain budget'))
    const line = platform(running)
    if (expected === undefined) t.equal(line, undefined, `${name}: no warning`)
    else {
      t.equal(line?.level, 40, `${name}: a warning`)
      t.match(line?.platform, expected, `${name}: names the platform`)
      t.equal(line?.suggested, suggested, `${name}: suggests gracePeriod ${String(suggested)}`)
      t.match(line?.msg, `set gracePeriod: ${String(suggested)}`)
    }
    running.kill('SIGTERM')
    await running.exited
  }
})
