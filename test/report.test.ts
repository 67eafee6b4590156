// The drain report: one structured line through Fastify's logger with every
// figure, at info when clean and warn when forced; with `exit: false`,
// `fastify.drain.start()` resolves with it and leaves the process alone.
import t, { type Test } from 'tap'
import { Writable } from 'node:stream'
import Fastify from 'fastify'
import gracefulDrain, { type DrainPhases } from 'fastify-graceful-drain'
import { killChild, startChild, type LogLine } from './helpers/child.js'
import { createPool, get } from './helpers/http.js'

const options = { gracePeriod: 6000, drainDelay: 300, quietPeriod: 0, closeTimeout: 1000, exitMargin: 500 }
const drainStarted = (line: { msg: string }): boolean => line.msg.startsWith('drain started')

/** Every phase reached, in order: draining (0) ≤ closing ≤ resourcesClosing ≤ closed. */
function checkPhases (t: Test, phases: DrainPhases): void {
  const { draining, closing = NaN, resourcesClosing = NaN, closed = NaN } = phases
  t.equal(draining, 0)
  t.ok(draining <= closing, 'draining ≤ closing')
  t.ok(closing <= resourcesClosing, 'closing ≤ resourcesClosing')
  t.ok(resourcesClosing <= closed, 'resourcesClosing ≤ closed')
}

t.test('after a clean drain: every figure, one info line', async t => {
  const running = await startChild('app.ts', {
    FIXTURE: JSON.stringify({
      trace: true,
      options,
      // Registered pool first, cache second: the cache (which uses the pool) must close first.
      closers: [{ name: 'pool', behaviour: 'ok' }, { name: 'cache', behaviour: 'ok' }]
    })
  })
  t.teardown(() => killChild(running))
  const pool = createPool(running, 2)
  t.teardown(() => pool.destroy())
  const slow = get(pool, '/slow?ms=800')
  await running.waitForMessage(m => m.event === 'request' && m.url === '/slow?ms=800')
  running.kill('SIGTERM')
  await running.waitForLog(drainStarted)
  t.equal((await get(pool, '/')).status, 200, 'a request during the delay')
  t.equal((await slow).status, 200, 'the request in flight at the signal')
  t.equal((await running.exited).code, 0)

  const lines = running.logs.filter(line => line.drainReport !== undefined)
  t.equal(lines.length, 1, 'one report line')
  const line = lines[0] as LogLine
  t.equal(line.level, 30, 'at info')
  t.equal(line.plugin, 'fastify-graceful-drain', 'through a child logger with the plugin binding')
  t.match(line.msg, /drain complete .*exit code 0/)

  const report = line.drainReport as Record<string, any>
  t.match(report, {
    reason: 'SIGTERM',
    signal: 'SIGTERM',
    deadlineMs: options.gracePeriod - options.exitMargin,
    delay: { plannedMs: 300, extendedMs: 0 },
    requests: { inFlightAtStart: 1, servedDuringDrain: 1, cut: [] },
    // The request during the delay opened a second connection: both closed gracefully.
    connections: { openAtStart: 1, closedGracefully: 2, destroyed: 0 },
    forced: false,
    exitCode: 0
  })
  t.ok(Math.abs(Date.parse(report.startedAt) - Date.now()) < 60_000, `startedAt is an ISO time: ${report.startedAt}`)
  checkPhases(t, report.phases)
  t.same(report.closers.map((c: { name: string }) => c.name), ['fastify.close', 'cache', 'pool'],
    'fastify.close (the app\'s onClose hooks) first, then the closers, last added first')
  t.ok(report.closers.every((c: { outcome: string, durationMs: number }) => c.outcome === 'ok' && c.durationMs >= 0))
  t.ok(report.durationMs >= report.phases.closed)
})

t.test('after a forced drain: the cut routes, destroyed connections, one warn line', async t => {
  const running = await startChild('app.ts', { FIXTURE: JSON.stringify({ trace: true, options: { ...options, gracePeriod: 3000 } }) })
  t.teardown(() => killChild(running))
  const pool = createPool(running, 1)
  t.teardown(() => pool.destroy())
  get(pool, '/hang?id=1').catch(() => {})
  await running.waitForMessage(m => m.event === 'request' && m.url === '/hang?id=1')
  running.kill('SIGTERM')
  t.equal((await running.exited).code, 1)
  const lines = running.logs.filter(line => line.drainReport !== undefined)
  t.equal(lines.length, 1)
  t.equal(lines[0]?.level, 40, 'at warn')
  t.match(lines[0]?.msg, /finished with problems.*1 cut.*exit code 1/)
  const report = lines[0]?.drainReport as Record<string, any>
  t.match(report, {
    requests: { inFlightAtStart: 1, cut: ['GET /hang'] },
    connections: { openAtStart: 1, destroyed: 1 },
    forced: true,
    exitCode: 1
  })
  t.equal(report.closers[0]?.name, 'fastify.close')
  t.equal(report.closers[0]?.outcome, 'ok', 'the app still closes its resources after the cut')
  checkPhases(t, report.phases)
  t.ok(report.phases.resourcesClosing >= 3000 - 500 - 1000, 'resources close once the HTTP budget is spent')
})

t.test('exit: false: drain.start() resolves with the report and the process lives on', async t => {
  const lines: LogLine[] = []
  const stream = new Writable({
    write (chunk, _encoding, done) {
      for (const text of String(chunk).split('\n')) if (text !== '') lines.push(JSON.parse(text))
      done()
    }
  })
  const listenersBefore = process.listenerCount('SIGTERM')
  const app = Fastify({ logger: { level: 'info', stream } })
  await app.register(gracefulDrain, { ...options, drainDelay: 0, exit: false })
  app.get('/', async () => 'ok')
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.equal(process.listenerCount('SIGTERM'), listenersBefore + 1)

  const report = await app.drain.start('test')
  t.match(report, { reason: 'test', signal: undefined, exitCode: 0, forced: false, delay: { plannedMs: 0 } })
  checkPhases(t, report.phases)
  t.equal(app.drain.report, report, 'the decorator keeps the last report')
  t.equal(app.drain.state, 'closed')
  t.equal(await app.drain.start('again'), report, 'start() again returns the same report')
  t.notOk(app.server.listening, 'the server is closed')
  t.equal(process.listenerCount('SIGTERM'), listenersBefore, 'signal handlers removed')
  const reportLines = lines.filter(line => line.drainReport !== undefined)
  t.equal(reportLines.length, 1)
  t.equal(reportLines[0]?.plugin, 'fastify-graceful-drain')
  t.same(reportLines[0]?.drainReport, JSON.parse(JSON.stringify(report)), 'the logged report is the resolved one')
})
