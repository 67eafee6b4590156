// Prometheus metrics through the app's prom-client: state, in-flight requests,
// open connections, drain duration and forced closes, read at scrape time
// from a real registry; bad options and name clashes are coded errors.
import t from 'tap'
import { once } from 'node:events'
import Fastify from 'fastify'
import { Registry, register as globalRegistry } from 'prom-client'
import gracefulDrain from 'fastify-graceful-drain'
import { buildApp, call } from './helpers/in-process.js'

/** The registry's values as `name{labels} value` lines, without HELP/TYPE. */
async function scrape (registry: Registry): Promise<string[]> {
  return (await registry.metrics()).split('\n').filter(line => line !== '' && !line.startsWith('#'))
}

t.test('a scrape reads the live state, in-flight requests and open connections', async t => {
  const registry = new Registry()
  const { app, origin } = await buildApp(t, { metrics: { registry }, drainDelay: 0, quietPeriod: 0 })
  let release: () => void = () => {}
  app.get('/slow', () => new Promise(resolve => { release = () => resolve('done') }))
  t.match(await scrape(registry), ['fastify_graceful_drain_state{state="starting"} 1'], 'starting before listen')
  await app.listen({ port: 0, host: '127.0.0.1' })
  const slow = call(`${origin()}/slow`)
  while (app.drain.inFlight === 0) await once(app.server, 'request')
  const lines = await scrape(registry)
  t.same(lines, [
    'fastify_graceful_drain_state{state="starting"} 0',
    'fastify_graceful_drain_state{state="ready"} 1',
    'fastify_graceful_drain_state{state="draining"} 0',
    'fastify_graceful_drain_state{state="closing"} 0',
    'fastify_graceful_drain_state{state="closed"} 0',
    'fastify_graceful_drain_in_flight_requests 1',
    'fastify_graceful_drain_open_connections 1',
    'fastify_graceful_drain_drain_duration_seconds 0',
    'fastify_graceful_drain_forced_closes_total 0'
  ])
  const report = app.drain.start()
  const during = await scrape(registry)
  t.ok(during.includes('fastify_graceful_drain_state{state="draining"} 1') || during.includes('fastify_graceful_drain_state{state="closing"} 1'),
    'the state gauge follows the drain')
  release()
  await slow
  const { durationMs } = await report
  const after = await scrape(registry)
  t.ok(after.includes('fastify_graceful_drain_state{state="closed"} 1'))
  t.ok(after.includes(`fastify_graceful_drain_drain_duration_seconds ${durationMs / 1000}`), 'the final drain duration')
  t.ok(after.includes('fastify_graceful_drain_forced_closes_total 0'))
})

t.test('forced closes are counted', async t => {
  const registry = new Registry()
  const { app, origin } = await buildApp(t, {
    metrics: { registry, prefix: 'app_' }, drainDelay: 0, quietPeriod: 0, gracePeriod: 2_500, closeTimeout: 1_000, exitMargin: 500
  })
  app.get('/hang', () => new Promise(() => {}))
  await app.listen({ port: 0, host: '127.0.0.1' })
  const hang = call(`${origin()}/hang`).catch(() => 'cut')
  while (app.drain.inFlight === 0) await once(app.server, 'request')
  await app.drain.start()
  t.equal(await hang, 'cut')
  const lines = await scrape(registry)
  t.ok(lines.includes('app_forced_closes_total 1'), 'one connection destroyed at the budget')
  t.ok((await scrape(registry)).includes('app_forced_closes_total 1'), 'a second scrape does not count it again')
})

t.test('metrics: true registers on prom-client\'s global registry, removed when the app closes without a drain', async t => {
  const { app } = await buildApp(t, { metrics: true })
  await app.ready()
  t.ok(globalRegistry.getSingleMetric('fastify_graceful_drain_state'))
  await app.close()
  t.equal(globalRegistry.getSingleMetric('fastify_graceful_drain_state'), undefined)
})

t.test('two apps on one registry need distinct prefixes', async t => {
  const registry = new Registry()
  await buildApp(t, { metrics: { registry } })
  const second = Fastify()
  t.teardown(() => second.close())
  await t.rejects(async () => {
    await second.register(gracefulDrain, { metrics: { registry }, exit: false, signals: [] })
  }, { code: 'FST_GRACEFUL_DRAIN_INVALID_OPTION', message: /metrics\.prefix/ })
  const third = Fastify()
  t.teardown(() => third.close())
  await third.register(gracefulDrain, { metrics: { registry, prefix: 'other_' }, exit: false, signals: [] })
  t.ok(registry.getSingleMetric('other_state'))
})

t.test('bad metrics options are coded errors at registration', async t => {
  for (const metrics of [{ registry: {} }, { prefix: '1bad' }, { prefix: 'has-dash_' }, 'yes']) {
    const app = Fastify()
    t.teardown(() => app.close())
    await t.rejects(async () => {
      await app.register(gracefulDrain, { metrics: metrics as never, exit: false, signals: [] })
    }, { code: 'FST_GRACEFUL_DRAIN_INVALID_OPTION' }, JSON.stringify(metrics))
  }
})
