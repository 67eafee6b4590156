// The preStop endpoint: it starts the drain and answers after drainDelay; the
// SIGTERM that follows joins that drain (no second delay, no forced exit);
// the deadline counts from the preStop call; without the right credentials
// it answers 403 and starts nothing.
import t, { type Test } from 'tap'
import { once } from 'node:events'
import { performance } from 'node:perf_hooks'
import { request } from 'undici'
import { startChild, killChild, type RunningChild } from './helpers/child.js'
import { buildApp, call } from './helpers/in-process.js'

const token = 'a-token-of-24-characters'

async function startKubernetesApp (t: Test, options: object): Promise<RunningChild & { health: string }> {
  const running = await startChild('kubernetes-app.ts', { FIXTURE: JSON.stringify({ options }) })
  t.teardown(() => killChild(running))
  const message = running.messages.find(m => (m as { healthPort?: unknown }).healthPort !== undefined) ??
    (await once(running.child, 'message'))[0]
  return { ...running, health: `http://127.0.0.1:${(message as { healthPort: number }).healthPort}` }
}

t.test('on the health port: readiness fails at once, the call answers after drainDelay, the SIGTERM that follows joins the drain', async t => {
  const drainDelay = 1_500
  const app = await startKubernetesApp(t, { healthPort: 0, healthHost: '127.0.0.1', preStop: true, drainDelay, quietPeriod: 0 })
  // Still in flight when the SIGTERM comes, so the drain is still running then.
  const slow = call(`${app.origin}/slow?ms=${drainDelay + 1_500}`)
  const started = performance.now()
  const preStop = call(`${app.health}/prestop`).then(res => ({ ...res, ms: performance.now() - started }))
  // Ask until the drain shows: the preStop request and this probe race on separate connections.
  let ready = await call(`${app.health}/readyz`)
  for (let i = 0; i < 100 && ready.status === 200; i++) ready = await call(`${app.health}/readyz`)
  t.same(ready.body, { status: 'draining' }, 'readiness fails while the hook is still waiting')
  t.equal((await call(`${app.origin}/`)).status, 200, 'the app still serves during the delay')
  const answered = await preStop
  t.equal(answered.status, 200)
  t.equal(answered.body.status, 'draining')
  t.ok(answered.ms >= drainDelay - 50, `answered after drainDelay (${Math.round(answered.ms)} ms)`)
  app.kill('SIGTERM')
  const exited = await app.exited
  t.same([exited.code, exited.signal], [0, null], 'a clean exit: the SIGTERM was the expected one, not a second signal')
  t.equal((await slow).status, 200, 'the request in flight finished')
  const report = app.report()
  t.equal(report?.reason, 'prestop')
  t.equal(report?.delay.plannedMs, drainDelay, 'one delay')
  // A second delay would put closing at ≥ 2 × drainDelay; the margin absorbs a loaded machine.
  t.ok(report?.phases.closing < 2 * drainDelay - 100, `closing at ${report?.phases.closing} ms: the SIGTERM added no delay`)
  t.ok(app.logs.some(line => line.msg === 'SIGTERM received: the drain is already running, continuing it'))
})

t.test('a second signal after the SIGTERM that followed preStop forces the exit', async t => {
  const app = await startKubernetesApp(t, { healthPort: 0, healthHost: '127.0.0.1', preStop: true, drainDelay: 200, quietPeriod: 0 })
  const hang = call(`${app.origin}/hang`).catch(() => 'cut')
  await call(`${app.health}/prestop`)
  app.kill('SIGTERM')
  await waitForLog(app, 'SIGTERM received: the drain is already running, continuing it')
  app.kill('SIGTERM')
  const exited = await app.exited
  t.equal(exited.code, 143, '128 + SIGTERM')
  t.equal(await hang, 'cut')
})

t.test('the deadline counts from the preStop call, not from the SIGTERM', async t => {
  const gracePeriod = 5_000
  const exitMargin = 500
  const closeTimeout = 1_000
  const drainDelay = 2_000
  const app = await startKubernetesApp(t, {
    healthPort: 0, healthHost: '127.0.0.1', preStop: true, gracePeriod, drainDelay, closeTimeout, exitMargin, quietPeriod: 0
  })
  // A request that never ends: only the deadline can end the drain.
  const hang = call(`${app.origin}/hang`).catch(() => 'cut')
  const started = performance.now()
  const calledAt = Date.now()
  await call(`${app.health}/prestop`)
  const killedAt = Date.now()
  app.kill('SIGTERM')
  const exited = await app.exited
  const sincePreStop = performance.now() - started
  t.equal(exited.code, 1, 'forced: the request was cut')
  t.equal(await hang, 'cut')
  t.same(app.report()?.requests.cut, ['GET /hang'], 'the report names what was still open')
  t.equal(app.report()?.deadlineMs, gracePeriod - exitMargin)
  const startedAt = Date.parse(app.report()?.startedAt)
  t.ok(startedAt >= calledAt - 50 && startedAt < killedAt - drainDelay / 2, 'the drain (and its deadline) started at the preStop call')
  // The in-flight budget ends closeTimeout before the deadline: 3.5 s after the preStop call, or
  // ≥ 5.5 s if the SIGTERM (≥ drainDelay later) had restarted the clock. The bound splits the two.
  const budgetEnd = gracePeriod - exitMargin - closeTimeout
  t.ok(sincePreStop < budgetEnd + drainDelay / 2, `exited ${Math.round(sincePreStop)} ms after the preStop call`)
})

t.test('with a token on the main port: missing or wrong credentials get 403 and start nothing', async t => {
  const { app, origin, logs } = await buildApp(t, { preStop: { token }, drainDelay: 100, quietPeriod: 0 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const attempts: Array<[string, string, Record<string, string>]> = [
    ['no token', '/prestop', {}],
    ['wrong bearer token', '/prestop', { authorization: 'Bearer a-token-of-24-characterZ' }],
    ['a prefix of the token', '/prestop', { authorization: `Bearer ${token.slice(0, 16)}` }],
    ['wrong query token', '/prestop?token=nope', {}],
    ['basic auth scheme', '/prestop', { authorization: `Basic ${token}` }]
  ]
  for (const [label, path, headers] of attempts) {
    const res = await call(`${origin()}${path}`, { headers })
    t.equal(res.status, 403, `${label}: 403`)
  }
  t.equal(app.drain.state, 'ready', 'no drain started')
  t.equal((await call(`${origin()}/readyz`)).status, 200, 'readiness unchanged')
  t.equal(logs.filter(line => line.msg === 'preStop endpoint called without the right token: nothing started').length, attempts.length)
  t.notOk(logs.some(line => JSON.stringify(line).includes(token)), 'the token is never logged')
})

t.test('with a token on the main port: the right token, as a bearer header or a query parameter, starts the drain', async t => {
  for (const [label, path, headers] of [
    ['bearer', '/prestop', { authorization: `Bearer ${token}` }],
    ['query', `/prestop?token=${token}`, {}]
  ] as Array<[string, string, Record<string, string>]>) {
    const { app, origin, logs } = await buildApp(t, { preStop: { token }, drainDelay: 200, quietPeriod: 0 })
    await app.listen({ port: 0, host: '127.0.0.1' })
    const res = await call(`${origin()}${path}`, { headers, method: 'POST' })
    t.equal(res.status, 200, `${label}: 200`)
    t.not(app.drain.state, 'ready', `${label}: the drain started`)
    t.equal((await app.drain.start()).reason, 'prestop')
    t.notOk(logs.some(line => JSON.stringify(line).includes(token)), `${label}: the token is never logged`)
  }
})

t.test('a HEAD request (monitoring, link checkers) does not start the drain', async t => {
  const { app } = await buildApp(t, { healthPort: 0, healthHost: '127.0.0.1', preStop: true })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const res = await request(`http://127.0.0.1:${app.drain.healthPort}/prestop`, { method: 'HEAD', reset: true })
  await res.body.dump()
  t.equal(res.statusCode, 404)
  t.equal(app.drain.state, 'ready')
})

t.test('with a health port, the preStop endpoint is not on the main port', async t => {
  const { app, origin } = await buildApp(t, { healthPort: 0, healthHost: '127.0.0.1', preStop: true })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.equal((await call(`${origin()}/prestop`)).status, 404)
  t.equal(app.drain.state, 'ready')
})

t.test('a token shorter than 16 characters, or no token and no health port, is rejected at registration', async t => {
  const { default: Fastify } = await import('fastify')
  const { default: gracefulDrain } = await import('fastify-graceful-drain')
  for (const options of [{ preStop: { token: 'short' } }, { preStop: true }]) {
    const app = Fastify()
    t.teardown(() => app.close())
    await t.rejects(async () => {
      await app.register(gracefulDrain, { ...options, exit: false, signals: [] })
    }, { code: 'FST_GRACEFUL_DRAIN_INVALID_OPTION' })
  }
})

async function waitForLog (app: RunningChild, msg: string): Promise<void> {
  while (!app.logs.some(line => line.msg === msg)) await once(app.child.stdout as NodeJS.EventEmitter, 'data')
}
