// Readiness checks and startup tasks: /readyz names the check that fails,
// throws, hangs or returns a non-boolean; the probe never hangs; checks are
// cached; state changes are logged once; startup says 'starting' until the
// server listens and every startup task has resolved.
import t from 'tap'
import { performance } from 'node:perf_hooks'
import { buildApp, call } from './helpers/in-process.js'

const readyz = async (origin: string) => await call(`${origin}/readyz`)

t.test('a check that fails, throws or returns a non-boolean makes /readyz 503 naming it', async t => {
  const cases: Array<[string, () => unknown]> = [
    ['returns false', () => false],
    ['resolves false', async () => false],
    ['throws', () => { throw new Error('boom') }],
    ['rejects', async () => { throw new Error('down') }],
    ['returns a string', () => 'yes'],
    ['resolves undefined', async () => undefined]
  ]
  for (const [label, failing] of cases) {
    const { app, origin } = await buildApp(t, {
      readiness: { checks: { first: () => true, broken: failing as () => boolean, last: async () => true }, checkCacheTtl: 0 }
    })
    await app.listen({ port: 0, host: '127.0.0.1' })
    const res = await readyz(origin())
    t.equal(res.status, 503, `${label}: 503`)
    t.same(res.body, { status: 'not ready', check: 'broken' }, `${label}: names the check`)
    await app.close()
  }
})

t.test('passing checks: 200 ready', async t => {
  const { app, origin } = await buildApp(t, { readiness: { checks: { db: async () => true, cache: () => true } } })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const res = await readyz(origin())
  t.equal(res.status, 200)
  t.same(res.body, { status: 'ready' })
})

t.test('a hanging check fails after checkTimeout: the probe answers, and the check is not called again while it hangs', async t => {
  let calls = 0
  const checkTimeout = 200
  const { app, origin } = await buildApp(t, {
    readiness: { checks: { hung: () => { calls++; return new Promise<boolean>(() => {}) } }, checkTimeout, checkCacheTtl: 0 }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const started = performance.now()
  const answers = await Promise.all([readyz(origin()), readyz(origin()), readyz(origin())])
  const took = performance.now() - started
  for (const res of answers) t.same([res.status, res.body], [503, { status: 'not ready', check: 'hung' }])
  // The timeout bounds the probe; the generous upper bound only absorbs a loaded CI machine.
  t.ok(took >= checkTimeout - 20 && took < checkTimeout + 5_000, `answered after the timeout (${Math.round(took)} ms)`)
  t.equal(calls, 1, 'three concurrent probes share the one hung call')
  await readyz(origin())
  t.equal(calls, 1, 'a later probe still waits on the same hung call instead of piling up another')
})

t.test('results are cached for checkCacheTtl, so probes do not hammer a dependency', async t => {
  let calls = 0
  const { app, origin } = await buildApp(t, { readiness: { checks: { db: () => { calls++; return true } }, checkCacheTtl: 60_000 } })
  await app.listen({ port: 0, host: '127.0.0.1' })
  for (let i = 0; i < 5; i++) t.equal((await readyz(origin())).status, 200)
  t.equal(calls, 1, 'one call for five probes within the TTL')
})

t.test('with checkCacheTtl 0 every probe calls the check, and a recovery is seen at once', async t => {
  let up = false
  const { app, origin } = await buildApp(t, { readiness: { checks: { db: () => up }, checkCacheTtl: 0 } })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.equal((await readyz(origin())).status, 503)
  up = true
  t.equal((await readyz(origin())).status, 200)
})

t.test('a failing check is logged once per state change, not once per probe', async t => {
  let up = false
  const { app, origin, logs } = await buildApp(t, { readiness: { checks: { db: () => up }, checkCacheTtl: 0 } })
  await app.listen({ port: 0, host: '127.0.0.1' })
  for (let i = 0; i < 4; i++) await readyz(origin())
  up = true
  for (let i = 0; i < 3; i++) await readyz(origin())
  up = false
  await readyz(origin())
  const lines = logs.filter(line => line.check === 'db').map(line => [line.level, line.msg])
  t.same(lines, [
    [40, 'readiness check "db" failing: returned false'],
    [30, 'readiness check "db" passing again'],
    [40, 'readiness check "db" failing: returned false']
  ])
})

t.test('the drain state wins over passing checks', async t => {
  const { app, origin } = await buildApp(t, { drainDelay: 2_000, readiness: { checks: { db: () => true } } })
  await app.listen({ port: 0, host: '127.0.0.1' })
  app.drain.start().catch(() => {})
  const res = await readyz(origin())
  t.same([res.status, res.body], [503, { status: 'draining' }])
})

t.test('startup: starting until listening and until every startup task resolves', async t => {
  const { app, origin } = await buildApp(t)
  let finish: () => void = () => {}
  app.drain.startupTask('warm-up', new Promise<void>(resolve => { finish = resolve }))
  const before = await app.inject('/readyz')
  t.same([before.statusCode, before.json()], [503, { status: 'starting' }], 'before listen()')
  await app.listen({ port: 0, host: '127.0.0.1' })
  const pending = await readyz(origin())
  t.same([pending.status, pending.body], [503, { status: 'starting' }], 'listening, task pending')
  t.equal(app.drain.state, 'ready', 'the drain state itself is ready: only readiness waits for the task')
  finish()
  await new Promise(resolve => setImmediate(resolve))
  t.equal((await readyz(origin())).status, 200, 'task resolved')
})

t.test('a startup task that rejects keeps readiness at starting and is logged with its name', async t => {
  const { app, origin, logs } = await buildApp(t)
  app.drain.startupTask('migrations', Promise.reject(new Error('relation "users" does not exist')))
  await app.listen({ port: 0, host: '127.0.0.1' })
  const res = await readyz(origin())
  t.same([res.status, res.body], [503, { status: 'starting' }])
  const line = logs.find(l => l.task === 'migrations')
  t.equal(line?.level, 50)
  t.match(line?.msg, /startup task "migrations" failed/)
})

t.test('startupTask() rejects bad arguments with a coded error', async t => {
  const { app } = await buildApp(t)
  t.throws(() => app.drain.startupTask('', Promise.resolve()), { code: 'FST_GRACEFUL_DRAIN_INVALID_OPTION' })
  t.throws(() => app.drain.startupTask('x', 42 as unknown as Promise<void>), { code: 'FST_GRACEFUL_DRAIN_INVALID_OPTION' })
})
