// An app that closes itself (tests, fastify-cli, embedding) with no signal and
// no drain: it closes normally and the plugin leaves nothing behind, neither
// process signal listeners, nor server listeners, nor timers that hold the process.

import t from 'tap'
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import type { FastifyInstance } from 'fastify'
import { Pool } from 'undici'
import gracefulDrain from 'fastify-graceful-drain'

const serverEvents = ['request', 'connection', 'secureConnection', 'upgrade', 'newListener', 'removeListener'] as const

const signalListeners = (): { SIGTERM: number, SIGINT: number } =>
  ({ SIGTERM: process.listenerCount('SIGTERM'), SIGINT: process.listenerCount('SIGINT') })

const serverListeners = (app: FastifyInstance): Record<string, number> =>
  Object.fromEntries(serverEvents.map(event => [event, app.server.listenerCount(event)]))

/** What keeps the event loop alive, by kind (unref'd timers are not listed: they hold nothing). */
function activeResources (): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const kind of process.getActiveResourcesInfo()) counts[kind] = (counts[kind] ?? 0) + 1
  return counts
}

/**
 * The active resources once closed handles are gone: libuv releases a closed
 * socket or server handle in a later loop turn than the close callback, with no
 * event to wait on, so give it a few turns. A leaked timer stays whatever the wait.
 */
async function settledResources (expected: Record<string, number>): Promise<Record<string, number>> {
  let resources = activeResources()
  for (let turn = 0; turn < 20 && JSON.stringify(resources) !== JSON.stringify(expected); turn++) {
    await new Promise(resolve => setImmediate(resolve))
    resources = activeResources()
  }
  return resources
}

t.test('fastify.close() without a drain closes normally and removes everything the plugin added', async t => {
  const signalsBefore = signalListeners()
  const resourcesBefore = await settledResources({})
  const app = Fastify()
  const serverBefore = serverListeners(app)
  // Default signals, so the real SIGTERM/SIGINT listeners are installed and must be removed.
  await app.register(gracefulDrain, { exit: false })
  let onCloseRan = false
  app.addHook('onClose', async () => { onCloseRan = true })
  app.get('/', async () => 'ok')

  t.same(signalListeners(), { SIGTERM: signalsBefore.SIGTERM + 1, SIGINT: signalsBefore.SIGINT + 1 }, 'signal listeners installed')
  const serverAfterRegister = serverListeners(app)
  for (const event of ['request', 'connection', 'newListener', 'removeListener']) {
    t.ok((serverAfterRegister[event] ?? 0) > (serverBefore[event] ?? 0), `the plugin listens to the server's '${event}'`)
  }
  // Only while the app itself has one (test/upgrade-unchanged.test.ts): Node answers upgrade requests as usual.
  t.equal(serverAfterRegister.upgrade ?? 0, serverBefore.upgrade ?? 0, "no 'upgrade' listener while the app has none")

  await app.listen({ port: 0, host: '127.0.0.1' })
  // Real traffic over a keep-alive connection, so the tracker has sockets and requests to forget.
  const pool = new Pool(`http://127.0.0.1:${(app.server.address() as AddressInfo).port}`)
  for (let i = 0; i < 3; i++) {
    const res = await pool.request({ path: i === 1 ? '/readyz' : '/', method: 'GET' })
    await res.body.text()
    t.equal(res.statusCode, 200)
  }

  // The keep-alive connection is still open: close() must not wait for its 72 s timeout.
  await app.close()
  await pool.close()
  t.ok(onCloseRan, 'the app’s onClose hooks ran')
  t.equal(app.drain.state, 'closed')
  t.equal(app.drain.signal.aborted, false, 'no drain started')
  t.equal(app.drain.report, undefined, 'no drain, no report')
  // A drain now would only call process.exit(0) behind the app's back: refused, with a code.
  await t.rejects(app.drain.start('too late'), { code: 'FST_GRACEFUL_DRAIN_ALREADY_CLOSED' })
  t.equal(app.drain.state, 'closed', 'the refused start changed nothing')

  t.same(signalListeners(), signalsBefore, 'SIGTERM and SIGINT listeners are back to what they were')
  t.same(serverListeners(app), serverBefore, 'the server listeners the plugin added are removed')
  // Nothing extra keeps the event loop alive: the test process could exit right now.
  t.same(await settledResources(resourcesBefore), resourcesBefore, 'no timer, socket or server left holding the process')
})

t.test('an app registered but never listened closes cleanly too', async t => {
  const signalsBefore = signalListeners()
  const resourcesBefore = await settledResources({})
  const app = Fastify()
  const serverBefore = serverListeners(app)
  await app.register(gracefulDrain, { exit: false })
  await app.ready()
  await app.close()
  t.equal(app.drain.state, 'closed')
  t.same(signalListeners(), signalsBefore)
  t.same(serverListeners(app), serverBefore)
  t.same(await settledResources(resourcesBefore), resourcesBefore)
})

t.test('after a finished drain the plugin leaves nothing behind either', async t => {
  const signalsBefore = signalListeners()
  const resourcesBefore = await settledResources({})
  const app = Fastify()
  const serverBefore = serverListeners(app)
  await app.register(gracefulDrain, { exit: false, drainDelay: 0, quietPeriod: 0 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const report = await app.drain.start('test')
  t.equal(report.exitCode, 0)
  t.same(signalListeners(), signalsBefore, 'signal listeners removed when the drain finishes')
  t.same(serverListeners(app), serverBefore)
  // The drain's one ref'd handle (its deadline timer) is cleared at the end.
  t.same(await settledResources(resourcesBefore), resourcesBefore)
})

t.test('re-registering after a close installs the handlers again, once', async t => {
  const signalsBefore = signalListeners()
  for (let round = 0; round < 3; round++) {
    const app = Fastify()
    await app.register(gracefulDrain, { exit: false })
    t.equal(process.listenerCount('SIGTERM'), signalsBefore.SIGTERM + 1, `round ${round}: one listener`)
    await app.close()
  }
  t.same(signalListeners(), signalsBefore, 'no listener accumulates across registrations')
})

t.test('with every extra on (health port, checks, startup task, preStop, metrics) a close leaves nothing behind', async t => {
  const signalsBefore = signalListeners()
  const resourcesBefore = await settledResources({})
  const { Registry } = await import('prom-client')
  const registry = new Registry()
  const app = Fastify()
  const serverBefore = serverListeners(app)
  await app.register(gracefulDrain, {
    exit: false,
    healthPort: 0,
    healthHost: '127.0.0.1',
    preStop: true,
    readiness: { checks: { db: async () => true } },
    metrics: { registry }
  })
  app.drain.startupTask('warm-up', Promise.resolve())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const healthPort = app.drain.healthPort
  if (healthPort === undefined) return t.fail('the health listener did not start')
  // Probe the health port once, so its server, its readiness cache and a keep-alive socket all exist.
  const health = new Pool(`http://127.0.0.1:${healthPort}`)
  const res = await health.request({ path: '/readyz', method: 'GET' })
  t.same(await res.body.json(), { status: 'ready' })
  t.ok((await registry.metrics()).includes('fastify_graceful_drain_state'), 'metrics registered')

  await app.close()
  await health.close()
  t.equal(app.drain.state, 'closed')
  t.same(signalListeners(), signalsBefore, 'signal listeners removed')
  t.same(serverListeners(app), serverBefore, 'server listeners removed')
  t.notOk((await registry.metrics()).includes('fastify_graceful_drain_state'), 'metrics unregistered')
  t.same(await settledResources(resourcesBefore), resourcesBefore, 'the health listener and every timer are gone')
})
