// Liveness checks: /livez answers 503 naming a check that fails, throws, hangs
// or returns a non-boolean, behind the same timeout and cache as the readiness
// checks, logged once per change; a drain never makes liveness fail, but a
// check that fails during one is reported; the built-in event-loop check sees
// a real blocked event loop (a child process that busy-waits), and is off by default.
import t, { type Test } from 'tap'
import { performance } from 'node:perf_hooks'
import Fastify from 'fastify'
import { Pool } from 'undici'
import gracefulDrain from 'fastify-graceful-drain'
import { buildApp, call } from './helpers/in-process.js'
import { killChild, startChild, type RunningChild } from './helpers/child.js'

const livez = async (origin: string) => await call(`${origin}/livez`)

t.test('a liveness check that fails, throws, hangs or returns a non-boolean makes /livez 503 naming it', async t => {
  const cases: Array<[string, () => unknown]> = [
    ['returns false', () => false],
    ['resolves false', async () => false],
    ['throws', () => { throw new Error('boom') }],
    ['rejects', async () => { throw new Error('down') }],
    ['returns a string', () => 'yes'],
    ['hangs', () => new Promise(() => {})]
  ]
  for (const [label, failing] of cases) {
    const { app, origin } = await buildApp(t, {
      liveness: { checks: { first: () => true, broken: failing as () => boolean, last: async () => true }, checkTimeout: 200, checkCacheTtl: 0 }
    })
    await app.listen({ port: 0, host: '127.0.0.1' })
    const res = await livez(origin())
    t.same([res.status, res.body], [503, { status: 'not alive', check: 'broken', state: 'ready' }], `${label}: 503 naming the check`)
    t.equal(res.headers['cache-control'], 'no-store', `${label}: not cached by anyone in between`)
    await app.close()
  }
})

t.test('passing liveness checks: 200 alive, as without checks', async t => {
  const { app, origin } = await buildApp(t, { liveness: { checks: { heap: () => true, worker: async () => true } } })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const res = await livez(origin())
  t.same([res.status, res.body], [200, { status: 'alive', state: 'ready' }])
})

t.test('a hung liveness check: the probe answers after checkTimeout and the check is not called again while it hangs', async t => {
  let calls = 0
  const checkTimeout = 200
  const { app, origin } = await buildApp(t, {
    liveness: { checks: { hung: () => { calls++; return new Promise<boolean>(() => {}) } }, checkTimeout, checkCacheTtl: 0 }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const started = performance.now()
  const answers = await Promise.all([livez(origin()), livez(origin()), livez(origin())])
  const took = performance.now() - started
  for (const res of answers) t.same([res.status, res.body], [503, { status: 'not alive', check: 'hung', state: 'ready' }])
  // The timeout bounds the probe; the upper bound only absorbs a loaded machine.
  t.ok(took >= checkTimeout - 20 && took < checkTimeout + 5_000, `answered after the timeout (${Math.round(took)} ms)`)
  t.equal(calls, 1, 'three concurrent probes share the one hung call')
})

t.test('liveness results are cached for checkCacheTtl', async t => {
  let calls = 0
  const { app, origin } = await buildApp(t, { liveness: { checks: { heap: () => { calls++; return true } }, checkCacheTtl: 60_000 } })
  await app.listen({ port: 0, host: '127.0.0.1' })
  for (let i = 0; i < 5; i++) t.equal((await livez(origin())).status, 200)
  t.equal(calls, 1, 'one call for five probes within the TTL')
})

t.test('a failing liveness check is logged once per state change, as a liveness check', async t => {
  let ok = false
  const { app, origin, logs } = await buildApp(t, { liveness: { checks: { worker: () => ok }, checkCacheTtl: 0 } })
  await app.listen({ port: 0, host: '127.0.0.1' })
  for (let i = 0; i < 4; i++) await livez(origin())
  ok = true
  for (let i = 0; i < 3; i++) await livez(origin())
  ok = false
  await livez(origin())
  t.same(logs.filter(line => line.check === 'worker').map(line => [line.level, line.msg]), [
    [40, 'liveness check "worker" failing: returned false'],
    [30, 'liveness check "worker" passing again'],
    [40, 'liveness check "worker" failing: returned false']
  ])
})

t.test('readiness and liveness checks are separate: each probe runs only its own', async t => {
  const { app, origin } = await buildApp(t, {
    readiness: { checks: { db: () => false }, checkCacheTtl: 0 },
    liveness: { checks: { worker: () => true }, checkCacheTtl: 0 }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.same((await call(`${origin()}/readyz`)).body, { status: 'not ready', check: 'db' })
  t.same((await livez(origin())).body, { status: 'alive', state: 'ready' }, 'a dependency that is down does not ask for a restart')
})

t.test('a drain never makes liveness fail; a check failing during the drain is reported', async t => {
  let ok = true
  // The delay only has to outlast two local requests (the drain ends after it, and the test awaits the report).
  const { app, origin } = await buildApp(t, { drainDelay: 1_500, quietPeriod: 0, liveness: { checks: { worker: () => ok }, checkCacheTtl: 0 } })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const report = app.drain.start('test')
  const during = await livez(origin())
  t.same([during.status, during.body], [200, { status: 'alive', state: 'draining' }], 'passing checks: 200 through the drain')
  ok = false
  const failing = await livez(origin())
  t.same([failing.status, failing.body], [503, { status: 'not alive', check: 'worker', state: 'draining' }],
    'a failing check is reported as such during the drain, with the drain state beside it')
  t.equal(app.drain.state, 'draining', 'all of this happened within the delay')
  t.equal((await report).exitCode, 0)
})

t.test('a user check named "event-loop" next to maxEventLoopDelay is a coded error', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await t.rejects(async () => {
    await app.register(gracefulDrain, { exit: false, signals: [], liveness: { maxEventLoopDelay: 500, checks: { 'event-loop': () => true } } })
  }, { code: 'FST_GRACEFUL_DRAIN_INVALID_OPTION', message: /liveness\.checks\.event-loop/ })
})

interface Probe { status: number, body: any }

interface Blockable {
  running: RunningChild
  probe: () => Promise<Probe>
  /** Starts requests that each busy-wait 300 ms, one after the other; `served()` counts them, `stop()` ends them. */
  block: () => { served: () => number, stop: () => Promise<void> }
}

/** The app in a process of its own, a keep-alive pool for the probes and another for the load that blocks the loop. */
async function startBlockable (t: Test, options: object): Promise<Blockable> {
  const running = await startChild('probes-app.ts', { FIXTURE: JSON.stringify({ options: { ...options, exit: false } }) })
  t.teardown(() => killChild(running))
  const probes = new Pool(running.origin, { connections: 1 })
  const load = new Pool(running.origin, { connections: 1 })
  t.teardown(async () => { await probes.destroy(); await load.destroy() })
  return {
    running,
    async probe () {
      const res = await probes.request({ method: 'GET', path: '/livez' })
      return { status: res.statusCode, body: await res.body.json() }
    },
    // The loop is blocked nearly all the time, with a round trip between two blocks.
    block () {
      const state = { stopped: false, served: 0 }
      const loop = (async () => {
        while (!state.stopped) {
          const res = await load.request({ method: 'GET', path: '/block?ms=300' })
          await res.body.dump()
          state.served++
        }
      })()
      return { served: () => state.served, stop: async () => { state.stopped = true; await loop } }
    }
  }
}

/**
 * Probes until `done(answer)` or `ms` have passed. The event-loop check looks
 * at whole one-second windows, so a change shows a window later: the probes
 * are paced (50 ms apart), and the bound is generous, for a loaded machine.
 */
async function probeUntil (probe: () => Promise<Probe>, done: (answer: Probe) => boolean, ms = 20_000): Promise<Probe> {
  const deadline = performance.now() + ms
  let answer = await probe()
  while (!done(answer) && performance.now() < deadline) {
    await new Promise(resolve => setTimeout(resolve, 50))
    answer = await probe()
  }
  return answer
}

t.test('maxEventLoopDelay: a really blocked event loop fails /livez with the event-loop check, and recovers', async t => {
  const { running, probe, block } = await startBlockable(t, { liveness: { maxEventLoopDelay: 100, checkCacheTtl: 0 } })
  // Startup work (loading, compiling) may itself stall the loop in the first window.
  const before = await probeUntil(probe, answer => answer.status === 200)
  t.same(before, { status: 200, body: { status: 'alive', state: 'ready' } }, 'alive while the loop is free')

  const load = block()
  // The first whole window of blocking fails the check: a second or two, not the 20 s bound.
  const during = await probeUntil(probe, answer => answer.status !== 200)
  t.same(during, { status: 503, body: { status: 'not alive', check: 'event-loop', state: 'ready' } }, '503 naming the event-loop check')
  const failing = await running.waitForLog(line => line.msg.startsWith('liveness check "event-loop" failing'))
  t.equal(failing.level, 40, 'logged as a warning')
  t.match(failing.msg, /the event loop's delay was \d+ ms \(p99 over the last second\), above maxEventLoopDelay \(100 ms\)/)
  t.ok(Number(/was (\d+) ms/.exec(failing.msg)?.[1]) > 100, 'with the delay it measured')
  await load.stop()
  t.ok(load.served() > 0, `${load.served()} blocking requests served meanwhile`)

  const after = await probeUntil(probe, answer => answer.status === 200)
  t.same(after, { status: 200, body: { status: 'alive', state: 'ready' } }, 'alive again once the loop is free')
  await running.waitForLog(line => line.msg === 'liveness check "event-loop" passing again')
  t.equal(running.logs.filter(line => line.check === 'event-loop' && line.level === 40).length, 1, 'one warning for the whole episode')
})

t.test('without maxEventLoopDelay (the default) the same blocked loop leaves /livez at 200', async t => {
  const { probe, block } = await startBlockable(t, { liveness: { checkCacheTtl: 0 } })
  const load = block()
  const answers: Probe[] = []
  // Ten blocks of 300 ms: three whole windows or more of a loop blocked nearly all the time, which the
  // test above saw fail within one. Counted in blocks served, not in time, so a slow machine only makes it longer.
  while (load.served() < 10) answers.push(await probe())
  await load.stop()
  t.ok(answers.length > 0, `${answers.length} probes answered while the loop was blocked`)
  t.same(answers.filter(a => a.status !== 200), [], 'every probe answered 200: a busy process is not a broken one')
})
