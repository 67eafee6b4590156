// fastify.drain.track(): work that is not a request holds the closers until it
// settles, within the in-flight budget (issue 14). Real processes, real sockets,
// and a real PostgreSQL for the order of the job's query and the pool's end.
import t, { type Test } from 'tap'
import Fastify from 'fastify'
import gracefulDrain from 'fastify-graceful-drain'
import { startEmbeddedPostgres } from '../examples/support/embedded-postgres.js'
import { killChild, startChild, type RunningChild } from './helpers/child.js'
import { createPool, get } from './helpers/http.js'

const start = async (test: Test, fixture: string, env: Record<string, string>): Promise<RunningChild> => {
  const running = await startChild(fixture, env)
  test.teardown(() => killChild(running))
  return running
}

t.test('a job started after its reply finishes before onClose runs, and the pool ends after its query (real PostgreSQL)', async t => {
  const db = await startEmbeddedPostgres()
  t.teardown(() => db.stop())
  const running = await start(t, 'postgres-job-app.ts', { DATABASE_URL: db.url })
  const pool = createPool(running, 1)
  t.teardown(() => pool.destroy())
  t.equal((await get(pool, '/job?ms=1500')).status, 200, 'the reply went out at once')
  await running.waitForMessage(m => m.event === 'job started')
  running.kill('SIGTERM')
  const exit = await running.exited
  t.equal(exit.code, 0, 'a clean drain')
  const events = running.messages as Array<{ event: string, ok?: boolean, poolEnded?: boolean }>
  const done = events.findIndex(m => m.event === 'job done')
  const onClose = events.findIndex(m => m.event === 'onClose')
  t.ok(events[done]?.ok, 'the job\'s query succeeded: the pool was still open', { events })
  t.ok(done > -1 && onClose > done, 'onClose (and with it the pool\'s end) came after the job', { events })
  t.equal(events[onClose]?.poolEnded, false, 'the pool was still open when the app\'s hooks began')
  t.match(running.report()?.background, { total: 1, settled: 1, abandoned: [] })
})

t.test('a job that ignores its signal is abandoned at the budget, named in the report, exit 1 before the deadline', async t => {
  // exitMargin 1000, not the 300 derived from 3 s: the watchdog fires a quarter of it before gracePeriod,
  // and a loaded 2-core machine can hold a healthy exit back by more than 75 ms.
  const options = { gracePeriod: 3_000, drainDelay: 100, exitMargin: 1_000 }
  const running = await start(t, 'lifecycle-app.ts', { FIXTURE: JSON.stringify({ options }) })
  const pool = createPool(running, 1)
  t.teardown(() => pool.destroy())
  t.equal((await get(pool, '/stubborn')).status, 200)
  running.kill('SIGTERM')
  const exit = await running.exited
  t.equal(exit.code, 1, 'abandoned work is a forced drain')
  const report = running.report()
  t.match(report?.background, { total: 1, settled: 0, abandoned: ['stubborn job'] })
  t.equal(report?.forced, true)
  // The promise is the deadline (gracePeriod − exitMargin), measured inside the process.
  t.ok(report !== undefined && report.durationMs <= report.deadlineMs, 'ended by its deadline', { durationMs: report?.durationMs })
  t.match(running.logs.find(l => l.msg.startsWith('drain budget spent: background work abandoned')), { abandoned: ['stubborn job'] })
})

t.test('the job\'s signal aborts before the in-flight budget ends, so a cooperative job stops in time', async t => {
  const options = { gracePeriod: 3_000, drainDelay: 100, exitMargin: 1_000 }
  const running = await start(t, 'lifecycle-app.ts', { FIXTURE: JSON.stringify({ options }) })
  const pool = createPool(running, 1)
  t.teardown(() => pool.destroy())
  await get(pool, '/job')
  await running.waitForMessage(m => m.event === 'job started')
  running.kill('SIGTERM')
  const exit = await running.exited
  // The job waits 1.7 s unless aborted; the in-flight budget here ends at 3000 − 1000 − 300 = 1700 ms,
  // and the job's signal aborts a tenth of that before: the job stops in time.
  t.equal(exit.code, 0)
  t.match(running.report()?.background, { total: 1, settled: 1, abandoned: [] })
})

t.test('track() returns the work\'s result, settles once, and is refused once the closers run', async t => {
  const app = Fastify()
  await app.register(gracefulDrain, { exit: false, signals: [], gracePeriod: 2_000, drainDelay: 0 })
  t.equal(await app.drain.track('value', Promise.resolve(42)), 42, 'a promise: its value')
  t.equal(await app.drain.track('fn', async signal => signal instanceof AbortSignal ? 'signal' : 'none'), 'signal', 'a function gets the signal')
  await t.rejects(app.drain.track('sync throw', () => { throw new Error('boom') }), /boom/, 'a synchronous throw is a rejection')
  t.throws(() => app.drain.track('', Promise.resolve()), { code: 'FST_GRACEFUL_DRAIN_INVALID_TRACK' })
  t.throws(() => app.drain.track('x', 42 as unknown as Promise<number>), { code: 'FST_GRACEFUL_DRAIN_INVALID_TRACK' })
  let late: unknown
  app.addHook('onClose', async () => {
    try { await app.drain.track('too late', Promise.resolve()) } catch (error) { late = error }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const report = await app.drain.start()
  t.equal(report.exitCode, 0)
  t.match(late, { code: 'FST_GRACEFUL_DRAIN_TRACK_AFTER_CLOSE', message: /track\("too late"\) was called after the drain reached its closers/ })
})
