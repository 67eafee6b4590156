// The app's own exit code, an app.close() during the drain, a crash that
// drains (drainOnCrash), and the timeout audit at listen (issues 14 and 16).
import t, { type Test } from 'tap'
import { killChild, startChild, type RunningChild } from './helpers/child.js'
import { createPool, get } from './helpers/http.js'

const start = async (test: Test, fixture: object): Promise<RunningChild> => {
  const running = await startChild('lifecycle-app.ts', { FIXTURE: JSON.stringify(fixture) })
  test.teardown(() => killChild(running))
  return running
}

t.test('a non-zero process.exitCode set by the app wins over 0 after a clean drain', async t => {
  const running = await start(t, { options: { gracePeriod: 3_000, drainDelay: 100, exitMargin: 1_000 } })
  const pool = createPool(running, 1)
  t.teardown(() => pool.destroy())
  await get(pool, '/exit-code?code=3')
  running.kill('SIGTERM')
  t.equal((await running.exited).code, 3)
  t.equal(running.report()?.exitCode, 3, 'and the report says so')
})

t.test('a forced drain still exits 1 whatever the app set', async t => {
  const running = await start(t, { options: { gracePeriod: 3_000, drainDelay: 100, exitMargin: 1_000 } })
  const pool = createPool(running, 2)
  t.teardown(() => pool.destroy())
  await get(pool, '/exit-code?code=3')
  await get(pool, '/stubborn')
  running.kill('SIGTERM')
  t.equal((await running.exited).code, 1)
})

t.test('app.close() during the delay joins the drain: the delay goes on, new requests are served, close() resolves after the drain closed the app', async t => {
  const running = await start(t, { options: { gracePeriod: 6_000, drainDelay: 1_500, quietPeriod: 0 } })
  const pool = createPool(running, 2)
  t.teardown(() => pool.destroy())
  running.kill('SIGTERM')
  await running.waitForLog(l => l.msg.startsWith('drain started'))
  t.equal((await get(pool, '/close')).status, 200)
  await running.waitForLog(l => /app\.close\(\) during the drain/.test(l.msg))
  // During the rest of the delay, new connections are still accepted and served.
  const later = createPool(running, 1)
  t.teardown(() => later.destroy())
  const statuses = []
  for (let i = 0; i < 4; i++) statuses.push((await get(later, '/')).status)
  t.same(statuses, [200, 200, 200, 200], 'served after the app asked to close')
  t.equal((await running.exited).code, 0)
  const events = running.messages as Array<{ event: string }>
  const onClose = events.findIndex(m => m.event === 'onClose')
  const resolved = events.findIndex(m => m.event === 'app.close() resolved')
  t.ok(onClose > -1 && resolved > onClose, 'the app\'s close() resolved once the drain had closed the app', { events })
  t.notOk(running.report()?.interrupted)
})

for (const [route, origin] of [['/throw', 'uncaughtException'], ['/reject', 'unhandledRejection']] as const) {
  t.test(`drainOnCrash: ${origin} fails readiness, lets the request in flight finish, runs the closers, exits 1 with the error`, async t => {
    const running = await start(t, { options: { gracePeriod: 10_000, drainOnCrash: { timeout: 3_000 } } })
    const pool = createPool(running, 2)
    t.teardown(() => pool.destroy())
    const slow = get(pool, '/slow?ms=800')
    await running.waitForMessage(m => m.event === 'request')
    await get(pool, route)
    await running.waitForLog(l => /draining before exit 1/.test(l.msg))
    // Readiness fails from the drain's first instant; the listener closes at once too (no delay after a
    // crash), so the proof is the drain's own start line rather than a probe over the main port.
    t.match(await running.waitForLog(l => l.msg.startsWith('drain started')), { reason: 'crash' })
    t.equal((await slow).status, 200, 'the request in flight finished')
    t.equal((await running.exited).code, 1)
    const report = running.report()
    t.equal(report?.reason, 'crash')
    t.match(report?.crash, { origin, error: /in a timer/ })
    t.equal(report?.delay.plannedMs, 0, 'no delay after a crash')
    t.ok((running.messages as Array<{ event: string }>).some(m => m.event === 'onClose'), 'the app\'s onClose hooks ran')
  })
}

t.test('drainOnCrash: a second crash during that drain exits at once', async t => {
  const running = await start(t, { options: { gracePeriod: 10_000, drainOnCrash: true } })
  const pool = createPool(running, 2)
  t.teardown(() => pool.destroy())
  // Holds the crash drain open past the second crash (400 ms later), within its 5 s budget.
  const slow = get(pool, '/slow?ms=3000').catch(() => undefined)
  await running.waitForMessage(m => m.event === 'request')
  await get(pool, '/throw-twice')
  const exit = await running.exited
  await slow
  t.equal(exit.code, 1)
  t.ok(running.logs.some(l => /crash during the drain: exiting now/.test(l.msg)), 'the second crash is logged')
  t.match(running.report(), { forced: true, requests: { cut: ['GET /slow'] } }, 'and ended the drain at once')
})

t.test('without drainOnCrash, no crash handler is installed: an uncaught exception ends the process as Node would', async t => {
  const running = await start(t, { options: { gracePeriod: 10_000 } })
  const pool = createPool(running, 1)
  t.teardown(() => pool.destroy())
  await get(pool, '/throw')
  const exit = await running.exited
  t.equal(exit.code, 1)
  t.equal(running.report(), undefined, 'no drain ran')
})

t.test('timeout audit: keepAliveTimeout at or below the load balancer\'s idle timeout warns with the numbers', async t => {
  const running = await start(t, { options: { loadBalancerIdleTimeout: 60_000 }, fastify: { keepAliveTimeout: 60_000 } })
  const line = await running.waitForLog(l => l.timeout === 'keepAliveTimeout')
  t.match(line, { level: 40, keepAliveTimeout: 60_000, loadBalancerIdleTimeout: 60_000, suggested: 65_000 })
  t.match(line.msg, /set Fastify's keepAliveTimeout to 65000/)
})

t.test('timeout audit: a requestTimeout longer than the in-flight budget warns', async t => {
  const running = await start(t, { options: { gracePeriod: 10_000 }, fastify: { requestTimeout: 120_000 } })
  const line = await running.waitForLog(l => l.timeout === 'requestTimeout')
  t.match(line, { level: 40, requestTimeout: 120_000, inFlightCutAt: 8_000 })
})

t.test('timeout audit: a default app, and one whose balancer idles out first, log no timeout warning', async t => {
  for (const fixture of [{ options: {} }, { options: { loadBalancerIdleTimeout: 60_000 } }]) {
    const running = await start(t, fixture)
    await running.waitForLog(l => l.msg.startsWith('drain budget'))
    t.equal(running.logs.filter(l => l.timeout !== undefined).length, 0, `no warning with ${JSON.stringify(fixture)}`)
    running.kill('SIGINT')
    await running.exited
  }
})
