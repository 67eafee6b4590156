// The health port: probes on a listener of their own that outlives the main
// listener through the drain; the main port serves no probe routes; a port
// equal to the main one or in use rejects listen() with a coded error.
import t from 'tap'
import { createServer } from 'node:net'
import { once } from 'node:events'
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { buildApp, call } from './helpers/in-process.js'
import { startChild, killChild } from './helpers/child.js'

/** Resolves when the drain reaches `phase` (published on diagnostics_channel). */
function phaseReached (phase: string): Promise<void> {
  return new Promise(resolve => {
    const onMessage = (message: unknown): void => {
      if ((message as { phase: string }).phase !== phase) return
      unsubscribe('fastify-graceful-drain:phase', onMessage)
      resolve()
    }
    subscribe('fastify-graceful-drain:phase', onMessage)
  })
}

async function refused (url: string): Promise<string> {
  try {
    await call(url)
    return 'answered'
  } catch (error) {
    return (error as { code?: string, cause?: { code?: string } }).cause?.code ?? (error as { code?: string }).code ?? 'unknown'
  }
}

t.test('probes are served on the health port only', async t => {
  const { app, origin } = await buildApp(t, { healthPort: 0, healthHost: '127.0.0.1' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const health = `http://127.0.0.1:${app.drain.healthPort}`
  t.ok(app.drain.healthPort !== undefined && app.drain.healthPort > 0, 'the bound port is exposed')
  t.same((await call(`${health}/readyz`)).body, { status: 'ready' })
  t.same((await call(`${health}/livez`)).body, { status: 'alive', state: 'ready' })
  t.equal((await call(`${origin()}/readyz`)).status, 404, 'no readiness route on the main port')
  t.equal((await call(`${origin()}/livez`)).status, 404, 'no liveness route on the main port')
})

t.test('the health port answers through the drain after the main listener closed, and closes after the report', async t => {
  const { app, origin, waitForLog } = await buildApp(t, { healthPort: 0, healthHost: '127.0.0.1', drainDelay: 0, quietPeriod: 0 })
  let release: () => void = () => {}
  app.get('/slow', () => new Promise(resolve => { release = () => resolve({ done: true }) }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  const health = `http://127.0.0.1:${app.drain.healthPort}`
  const main = origin()
  const slow = call(`${main}/slow`)
  await waitForRequest(app)
  const closing = phaseReached('closing')
  const report = app.drain.start()
  await closing
  t.equal(await refused(`${main}/`), 'ECONNREFUSED', 'the main listener is closed')
  const ready = await call(`${health}/readyz`)
  t.same([ready.status, ready.body], [503, { status: 'closing' }], 'the kubelet reads closing, not a refused connection')
  t.same((await call(`${health}/livez`)).status, 200, 'liveness stays 200 during the drain')
  release()
  t.equal((await slow).status, 200, 'the in-flight request finished')
  t.equal((await report).exitCode, 0)
  await waitForLog(line => line.msg === 'health listener closed')
  t.equal(await refused(`${health}/livez`), 'ECONNREFUSED', 'closed once the drain is over')
})

t.test('a real SIGTERM: the kubelet reads draining on the health port while the app still serves, until the exit', async t => {
  const app = await startChild('kubernetes-app.ts', {
    FIXTURE: JSON.stringify({ options: { healthPort: 0, healthHost: '127.0.0.1', drainDelay: 1_000, quietPeriod: 0 } })
  })
  t.teardown(() => killChild(app))
  const message = app.messages.find(m => (m as { healthPort?: unknown }).healthPort !== undefined) ??
    (await once(app.child, 'message'))[0]
  const health = `http://127.0.0.1:${(message as { healthPort: number }).healthPort}`
  t.same((await call(`${health}/readyz`)).body, { status: 'ready' })
  app.kill('SIGTERM')
  // The signal is asynchronous: ask until the drain shows (bounded; each ask is a real probe).
  let ready = await call(`${health}/readyz`)
  for (let i = 0; i < 100 && ready.status === 200; i++) ready = await call(`${health}/readyz`)
  t.same([ready.status, ready.body], [503, { status: 'draining' }])
  t.equal((await call(`${app.origin}/`)).status, 200, 'the app port still serves during the delay')
  t.equal((await app.exited).code, 0)
  t.equal(await refused(`${health}/livez`), 'ECONNREFUSED', 'gone with the process')
})

t.test('app.close() without a drain closes the health port too', async t => {
  const { app, waitForLog } = await buildApp(t, { healthPort: 0, healthHost: '127.0.0.1' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const health = `http://127.0.0.1:${app.drain.healthPort}`
  await app.close()
  await waitForLog(line => line.msg === 'health listener closed')
  t.equal(await refused(`${health}/livez`), 'ECONNREFUSED')
})

t.test('a healthPort equal to the main port rejects listen() with a coded error', async t => {
  const port = await freePort()
  const { app } = await buildApp(t, { healthPort: port, healthHost: '127.0.0.1' })
  await t.rejects(app.listen({ port, host: '127.0.0.1' }), {
    code: 'FST_GRACEFUL_DRAIN_HEALTH_PORT_CONFLICT',
    message: new RegExp(`\`healthPort\` \\(${port}\\) is the port the app itself listens on`)
  })
  t.equal(app.server.listening, false)
  t.equal(await refused(`http://127.0.0.1:${port}/livez`), 'ECONNREFUSED', 'nothing was left listening')
})

t.test('a healthPort already in use rejects listen() with a coded error, and the main port is not bound', async t => {
  const blocker = createServer()
  blocker.listen(0, '127.0.0.1')
  await once(blocker, 'listening')
  t.teardown(() => { blocker.close() })
  const taken = (blocker.address() as { port: number }).port
  const { app } = await buildApp(t, { healthPort: taken, healthHost: '127.0.0.1' })
  await t.rejects(app.listen({ port: 0, host: '127.0.0.1' }), {
    code: 'FST_GRACEFUL_DRAIN_HEALTH_PORT_IN_USE',
    message: new RegExp(`127\\.0\\.0\\.1:${taken} \\(\`healthPort\`\\): EADDRINUSE`)
  })
  t.equal(app.server.listening, false)
})

t.test('when the main port cannot be bound, the health listener does not stay open', async t => {
  const blocker = createServer()
  blocker.listen(0, '127.0.0.1')
  await once(blocker, 'listening')
  t.teardown(() => { blocker.close() })
  const taken = (blocker.address() as { port: number }).port
  const { app, waitForLog } = await buildApp(t, { healthPort: 0, healthHost: '127.0.0.1' })
  await t.rejects(app.listen({ port: taken, host: '127.0.0.1' }), { code: 'EADDRINUSE' })
  const closed = await waitForLog(line => line.msg === 'health listener closed')
  t.equal(await refused(`http://127.0.0.1:${closed.healthPort as number}/livez`), 'ECONNREFUSED')
})

async function freePort (): Promise<number> {
  const probe = createServer()
  probe.listen(0, '127.0.0.1')
  await once(probe, 'listening')
  const { port } = probe.address() as { port: number }
  probe.close()
  await once(probe, 'close')
  return port
}

/** Resolves once the app has a request in flight (a request, not a sleep, tells us). */
async function waitForRequest (app: { server: import('node:http').Server, drain: { inFlight: number } }): Promise<void> {
  while (app.drain.inFlight === 0) await once(app.server, 'request')
}
