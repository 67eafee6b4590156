// Closers: fastify.drain.addCloser(name, fn, { timeout }). They run strictly
// after the last response and after the app's onClose hooks, last added first,
// each bounded by its timeout and by what is left of the budget; a failure is
// logged with its name and duration, the others still run, the exit code is 1.
import { once } from 'node:events'
import { setTimeout as delay } from 'node:timers/promises'
import t from 'tap'
import { request } from 'undici'
import { buildApp } from './helpers/in-process.js'
import { startChild, killChild, type RunningChild } from './helpers/child.js'
import { waitForLog } from './helpers/wait.js'

const fast = { drainDelay: 0, quietPeriod: 0 }

const fixtureEvents = (running: RunningChild): string[] => running.logs
  .filter(line => line.fixtureEvent !== undefined)
  .map(line => line.fixtureEvent === 'closer' ? `closer ${String(line.name)}` : String(line.fixtureEvent))

t.test('closers run after the last response and the onClose hooks, last added first', async t => {
  const { app, origin } = await buildApp(t, { ...fast, closeTimeout: 2_000 })
  const events: string[] = []
  const signals: AbortSignal[] = []
  let entered = (): void => {}
  const inHandler = new Promise<void>(resolve => { entered = resolve })
  app.get('/slow', async () => {
    entered()
    await once(app.drain.signal, 'abort')
    // Work that outlasts the switch to 'closing' (drainDelay 0): if the drain did
    // not wait for it, the onClose hook and the closers would run before it ends.
    await delay(200)
    return { done: true }
  })
  app.addHook('onResponse', async () => { events.push('response') })
  app.addHook('onClose', async () => { events.push('onClose') })
  for (const name of ['a', 'b', 'c']) {
    app.drain.addCloser(name, signal => {
      signals.push(signal)
      events.push(`closer ${name}`)
    })
  }
  await app.listen({ port: 0, host: '127.0.0.1' })

  const response = request(`${origin()}/slow`)
  await inHandler
  const report = await app.drain.start()
  const res = await response
  t.equal(res.statusCode, 200, 'the in-flight request is answered')
  t.same(await res.body.json(), { done: true })

  t.same(events, ['response', 'onClose', 'closer c', 'closer b', 'closer a'],
    'the last response, then the onClose hooks, then the closers from the last added to the first')
  t.same(report.closers.map(c => [c.name, c.outcome]), [['fastify.close', 'ok'], ['c', 'ok'], ['b', 'ok'], ['a', 'ok']],
    'the report lists fastify.close() and every closer, in the order they ran')
  for (const closer of report.closers) t.type(closer.durationMs, 'number', `${closer.name} has a duration`)
  t.ok(signals.every(signal => signal instanceof AbortSignal && !signal.aborted), 'each closer gets an AbortSignal, not aborted when it finishes in time')
  t.equal(report.exitCode, 0)
})

t.test('a closer that throws, rejects or hangs is reported; the others still run; exit code 1', async t => {
  const { app, logs } = await buildApp(t, { ...fast, closeTimeout: 5_000 })
  const ran: string[] = []
  let hangSignal: AbortSignal | undefined
  app.drain.addCloser('first-added', () => { ran.push('first-added') })
  app.drain.addCloser('hangs', signal => {
    ran.push('hangs')
    hangSignal = signal
    return new Promise(() => {}) // holds no handle either: only the timeout ends it
  }, { timeout: 200 })
  app.drain.addCloser('rejects', async () => {
    ran.push('rejects')
    throw new Error('rejected on purpose')
  })
  app.drain.addCloser('throws', () => {
    ran.push('throws')
    throw new Error('thrown on purpose') // synchronously: no promise is ever returned
  })
  await app.listen({ port: 0, host: '127.0.0.1' })

  const report = await app.drain.start()
  t.same(ran, ['throws', 'rejects', 'hangs', 'first-added'], 'every closer ran, last added first, failures notwithstanding')
  const byName = Object.fromEntries(report.closers.map(c => [c.name, c]))
  t.same(report.closers.map(c => c.name), ['fastify.close', 'throws', 'rejects', 'hangs', 'first-added'])
  t.match(byName.throws, { outcome: 'error', error: 'thrown on purpose' })
  t.match(byName.rejects, { outcome: 'error', error: 'rejected on purpose' })
  t.match(byName.hangs, { outcome: 'timeout', error: /200 ms/ })
  t.match(byName['first-added'], { outcome: 'ok' })
  // Bounded by its own 200 ms, not by closeTimeout (5 s); the upper bound is generous for a loaded machine.
  t.ok((byName.hangs?.durationMs ?? 0) >= 190 && (byName.hangs?.durationMs ?? Infinity) < 4_000,
    `the hung closer took its timeout (${byName.hangs?.durationMs} ms)`)
  t.equal(hangSignal?.aborted, true, 'the hung closer\'s AbortSignal aborted at its timeout')
  t.match(String((hangSignal?.reason as Error | undefined)?.message), /timed out after 200 ms/)
  t.equal(report.exitCode, 1, 'a failed closer makes the exit code 1')

  const errors = logs.filter(line => line.level === 50 && line.closer !== undefined)
  t.same(errors.map(line => (line.closer as { name: string }).name), ['throws', 'rejects', 'hangs'],
    'each failure is logged at error level, with its name')
  for (const line of errors) {
    t.type((line.closer as { durationMs: unknown }).durationMs, 'number', 'and its duration')
    t.match(line.msg, /after \d+ ms/)
  }
})

t.test('a real process: failed closers exit 1 after every closer ran; a hung one cannot stop the exit', async t => {
  const running = await startChild('closers-app.ts', {
    FIXTURE: JSON.stringify({
      options: fast,
      closers: [
        { name: 'first-added', behaviour: 'ok' },
        { name: 'hangs', behaviour: 'hang-until-aborted', timeout: 300 },
        { name: 'rejects', behaviour: 'reject' },
        { name: 'throws', behaviour: 'throw' },
        { name: 'last-added', behaviour: 'ok' }
      ]
    })
  })
  t.teardown(() => killChild(running))
  running.kill('SIGTERM')
  const { code, signal } = await running.exited
  t.equal(code, 1, 'exit code 1')
  t.equal(signal, null)
  t.same(fixtureEvents(running), ['onClose', 'closer last-added', 'closer throws', 'closer rejects', 'closer hangs', 'aborted', 'closer first-added'],
    'onClose first, then the closers last added first; the hung one is aborted at its timeout and the next one still runs')
  const report = running.report()
  t.same(report?.closers.map((c: { name: string, outcome: string }) => `${c.name}:${c.outcome}`),
    ['fastify.close:ok', 'last-added:ok', 'throws:error', 'rejects:error', 'hangs:timeout', 'first-added:ok'])
  t.equal(report?.exitCode, 1)
})

t.test('an onClose hook that never resolves is bounded by closeTimeout; the closers still run', async t => {
  const running = await startChild('closers-app.ts', {
    FIXTURE: JSON.stringify({ options: { ...fast, closeTimeout: 300 }, hangOnClose: true, closers: [{ name: 'after', behaviour: 'ok' }] })
  })
  t.teardown(() => killChild(running))
  running.kill('SIGTERM')
  const { code } = await running.exited
  t.equal(code, 1, 'the hung hook makes the exit code 1')
  t.same(fixtureEvents(running), ['onClose', 'closer after'])
  const [app, after] = running.report()?.closers ?? []
  t.match(app, { name: 'fastify.close', outcome: 'timeout' })
  t.ok(app.durationMs >= 290 && app.durationMs < 5_000, `fastify.close() was given closeTimeout (${app.durationMs} ms)`)
  t.match(after, { name: 'after', outcome: 'ok' })
})

// A closer's timer and the deadline's guard are timers: they never fire early, but on a loaded
// machine they fire late (20–40 ms measured at a load average of 16–20 on 2 cores); 200 ms allows far worse.
const TIMER_LATENESS_MS = 200

t.test('a closer is bounded by what is left of the budget, not only by its own timeout', async t => {
  // deadline = gracePeriod 3500 − exitMargin 1000 = 2500 ms after the signal. exitMargin 1000 (the
  // default's cap) is the headroom a loaded machine needs between the drain's end and the SIGKILL.
  const gracePeriod = 3_500
  const deadline = gracePeriod - 1_000
  const running = await startChild('closers-app.ts', {
    FIXTURE: JSON.stringify({
      options: { ...fast, gracePeriod, exitMargin: gracePeriod - deadline, closeTimeout: 1_000 },
      closers: [{ name: 'greedy', behaviour: 'hang', timeout: 60_000 }]
    })
  })
  t.teardown(() => killChild(running))
  running.kill('SIGTERM')
  const { code, ms } = await running.exited
  t.equal(code, 1)
  const report = running.report()
  const greedy = report?.closers.find((c: { name: string }) => c.name === 'greedy')
  t.match(greedy, { outcome: 'timeout' })
  // What was left when it started: the deadline minus the time the closers' phase began
  // (fastify.close() ran before it, a few ms). Its own 60 s never came into it.
  const left = deadline - (report?.phases.resourcesClosing ?? 0)
  t.ok(greedy.durationMs <= left + TIMER_LATENESS_MS,
    `cut after ${greedy.durationMs} ms: what was left of the budget (${left} ms), not its own 60 s`)
  t.ok(report?.durationMs <= deadline + TIMER_LATENESS_MS, `the drain was over ${report?.durationMs} ms after the signal, by the deadline (${deadline} ms)`)
  // deadline + exitMargin = gracePeriod is the kubelet's SIGKILL: the exit margin is the headroom
  // for the report's flush and the exit, and a process still there at gracePeriod would be killed.
  t.ok(ms < gracePeriod, `gone ${Math.round(ms)} ms after SIGTERM, before gracePeriod (${gracePeriod} ms)`)
  // Here the closer's own bound, min(60 s, what is left), and the deadline's guard expire at
  // the same instant, so this shows the budget holds, not which of the two held it: the next test does.
})

t.test('a closer that would start once the budget is spent is skipped, even while the deadline\'s guard cannot run', async t => {
  // The first closer blocks the main thread until just past the deadline (1500 ms). No timer fires
  // meanwhile, the guard's included, and the next closer is started before the guard gets its turn:
  // only each closer's own bound, min(its timeout, what is left of the budget), can stop it, and
  // what is left is 0. Its own timeout (60 s) would let it run.
  const gracePeriod = 2_500
  const exitMargin = 1_000
  const running = await startChild('blocking-closer-app.ts', {
    FIXTURE: JSON.stringify({ options: { ...fast, gracePeriod, exitMargin, closeTimeout: 1_000 }, pastDeadlineMs: 10 })
  })
  t.teardown(() => killChild(running))
  running.kill('SIGTERM')
  const { code, signal, ms } = await running.exited
  t.equal(signal, null, 'exited by itself')
  t.ok(fixtureEvents(running).includes('unblocked'), 'the blocking closer ran and returned')
  t.notOk(fixtureEvents(running).includes('closer after'), 'the closer after it was never started')
  const report = running.report()
  const byName = Object.fromEntries((report?.closers ?? []).map((c: { name: string }) => [c.name, c]))
  t.match(byName.after, { outcome: 'skipped', error: /no time left in the budget/ },
    'skipped by its own bound (nothing left of the budget), not abandoned by the deadline\'s guard')
  t.not(byName.blocks?.outcome, 'skipped', 'the blocking closer itself had its share and ran')
  t.equal(code, 1, 'a closer that never ran left its resource open: exit code 1')
  // Blocked until 10 ms past the deadline, the drain then has exitMargin (1000 ms) to report and exit.
  t.ok(ms < gracePeriod, `gone ${Math.round(ms)} ms after SIGTERM, before gracePeriod (${gracePeriod} ms)`)
})

t.test('a second signal during a closer: the report still lists every closer', async t => {
  const running = await startChild('closers-app.ts', {
    FIXTURE: JSON.stringify({
      options: { ...fast, closeTimeout: 20_000 },
      closers: [{ name: 'never-runs', behaviour: 'ok' }, { name: 'hangs', behaviour: 'hang', timeout: 20_000 }]
    })
  })
  t.teardown(() => killChild(running))
  running.kill('SIGTERM')
  await waitForLog(running, line => line.fixtureEvent === 'closer' && line.name === 'hangs')
  running.child.kill('SIGTERM')
  const { code } = await running.exited
  t.equal(code, 128 + 15, 'a second SIGTERM exits at once with 143')
  t.same(running.report()?.closers.map((c: { name: string, outcome: string }) => `${c.name}:${c.outcome}`),
    ['fastify.close:ok', 'hangs:timeout', 'never-runs:skipped'], 'the running closer is cut short, the rest are listed as skipped')
  t.notOk(fixtureEvents(running).includes('closer never-runs'), 'the skipped closer did not run')
})

t.test('fastify.close() without a drain runs the closers too, after the onClose hooks, and only once', async t => {
  const { app, logs } = await buildApp(t)
  const events: string[] = []
  app.addHook('onClose', async () => { events.push('onClose') })
  app.drain.addCloser('a', () => { events.push('closer a') })
  app.drain.addCloser('fails', () => { events.push('closer fails'); throw new Error('failed on purpose') })
  app.drain.addCloser('b', () => { events.push('closer b') })
  await app.listen({ port: 0, host: '127.0.0.1' })
  await app.close()
  t.same(events, ['onClose', 'closer b', 'closer fails', 'closer a'], 'a resource registered with addCloser() is never left open')
  t.match(logs.find(line => line.level === 50), { closer: { name: 'fails', outcome: 'error' } }, 'a failure is logged, and close() still resolves')
  t.equal(app.drain.state, 'closed')
})

t.test('after a drain, closing the app again does not run the closers twice', async t => {
  const { app } = await buildApp(t, fast)
  let runs = 0
  app.drain.addCloser('once', () => { runs++ })
  await app.listen({ port: 0, host: '127.0.0.1' })
  await app.drain.start()
  await app.close()
  t.equal(runs, 1)
})

t.test('addCloser() rejects bad arguments with a coded TypeError naming the argument', async t => {
  const { app } = await buildApp(t)
  const noop = (): void => {}
  const cases: Array<[string, unknown[], string]> = [
    ['empty name', ['', noop], 'name'],
    ['blank name', ['   ', noop], 'name'],
    ['number name', [42, noop], 'name'],
    ['missing name', [undefined, noop], 'name'],
    ['no function', ['db', undefined], 'fn'],
    ['a promise instead of a function', ['db', Promise.resolve()], 'fn'],
    ['null options', ['db', noop, null], 'options'],
    ['string options', ['db', noop, '100'], 'options'],
    ['zero timeout', ['db', noop, { timeout: 0 }], 'options.timeout'],
    ['negative timeout', ['db', noop, { timeout: -1 }], 'options.timeout'],
    ['NaN timeout', ['db', noop, { timeout: NaN }], 'options.timeout'],
    ['infinite timeout', ['db', noop, { timeout: Infinity }], 'options.timeout'],
    ['string timeout', ['db', noop, { timeout: '100' }], 'options.timeout']
  ]
  const addCloser = app.drain.addCloser as (...args: unknown[]) => void
  for (const [label, args, argument] of cases) {
    t.throws(() => addCloser(...args), {
      name: 'GracefulDrainError',
      code: 'FST_GRACEFUL_DRAIN_INVALID_CLOSER',
      message: `\`${argument}\``
    }, label)
    let thrown: unknown
    try { addCloser(...args) } catch (error) { thrown = error }
    t.ok(thrown instanceof TypeError, `${label}: a TypeError`)
  }
  t.doesNotThrow(() => app.drain.addCloser('db', noop, { timeout: 1 }), 'a valid closer is accepted')
  t.doesNotThrow(() => app.drain.addCloser('cache', async () => {}), 'options are optional')
})

t.test('addCloser() once the drain has started is an error, never a silently skipped resource', async t => {
  const { app } = await buildApp(t, fast)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const finished = app.drain.start()
  t.throws(() => app.drain.addCloser('late', () => {}), {
    code: 'FST_GRACEFUL_DRAIN_CLOSER_AFTER_START',
    message: /addCloser\("late"\).*draining/
  }, 'while draining')
  const report = await finished
  t.throws(() => app.drain.addCloser('later', () => {}), { code: 'FST_GRACEFUL_DRAIN_CLOSER_AFTER_START' }, 'after the drain')
  t.notOk(report.closers.some(c => c.name === 'late' || c.name === 'later'), 'neither was scheduled')
})
