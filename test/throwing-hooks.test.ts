// Issue 16, point 3: a throwing close hook or closer is an outcome, not a crash. Whether
// the app's onClose/preClose hook throws synchronously (callback style or not) or rejects,
// and whether a closer throws or throws later from a timer, the drain reports it as
// `outcome: 'error'`, the remaining closers still run, the report is logged and the
// exit code is 1. Before, a callback-style onClose that threw was an uncaught exception:
// exit 1 at +300 ms, no report, and the closers never ran.
import t from 'tap'
import { killChild, startChild } from './helpers/child.js'

// No delay and a short budget: the point is what happens in the closers' phase. The deadline
// (gracePeriod − exitMargin = 4500 ms) is far above what a failed hook takes (it settles at once),
// so an outcome of 'timeout', or an exit at the deadline, would mean the throw was not caught.
const options = { gracePeriod: 5_000, drainDelay: 0, quietPeriod: 0, closeTimeout: 2_000, exitMargin: 500 }

const cases: Array<{ throwing: string, failing: string, hooksAfter: boolean }> = [
  // The throw stops avvio's close queue: the onClose hooks queued after it never run (closers.ts, catchUncaught).
  { throwing: 'onClose callback, sync throw', failing: 'fastify.close', hooksAfter: false },
  { throwing: 'onClose 1-argument, sync throw', failing: 'fastify.close', hooksAfter: false },
  { throwing: 'onClose async, rejects', failing: 'fastify.close', hooksAfter: true },
  { throwing: 'onClose callback, done(error)', failing: 'fastify.close', hooksAfter: true },
  { throwing: 'preClose callback, sync throw', failing: 'fastify.close', hooksAfter: true },
  { throwing: 'preClose async, rejects', failing: 'fastify.close', hooksAfter: true },
  { throwing: 'closer, sync throw', failing: 'broken', hooksAfter: true },
  { throwing: 'closer, throws later from a timer', failing: 'broken', hooksAfter: true }
]

for (const { throwing, failing, hooksAfter } of cases) {
  t.test(`${throwing}: reported as an error, the other closers run, exit 1`, async t => {
    const running = await startChild('throwing-hooks-app.ts', { FIXTURE: JSON.stringify({ options, throwing }) })
    t.teardown(() => killChild(running))
    running.kill('SIGTERM')
    const exit = await running.exited
    t.comment(`${throwing}: SIGTERM → exit ${exit.code} after ${Math.round(exit.ms)} ms`)
    t.equal(exit.code, 1, 'exit 1: a closer failed')
    const report = running.report()
    t.ok(report !== undefined, 'the drain report was logged')
    const outcome = report?.closers.find((c: { name: string }) => c.name === failing)
    t.match(outcome, { outcome: 'error', error: `boom: ${throwing}` }, `${failing}: outcome 'error', with the message`)
    t.same(report?.closers.map((c: { name: string }) => c.name).slice(0, 1), ['fastify.close'], 'fastify.close() ran first')
    for (const closer of ['database', 'cache']) {
      t.ok(running.messages.some((m: any) => m.ran === `closer ${closer}`), `the closer ${closer} still ran`)
      t.match(report?.closers.find((c: { name: string }) => c.name === closer), { outcome: 'ok' })
    }
    t.equal(running.messages.some((m: any) => m.ran === 'earlier onClose hook'), hooksAfter,
      hooksAfter ? 'the other onClose hook ran' : 'the onClose hook queued after the throw did not run (avvio\'s queue stops there)')
    t.notOk(running.logs.some(line => line.level >= 50 && /uncaught/i.test(line.msg)), 'no uncaught-exception crash')
  })
}
