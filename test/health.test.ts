// Probes over real sockets: /readyz says starting, ready, then draining from
// the first instant of the drain while /livez stays 200; paths are configurable
// or removable; probes are neither in-flight work nor info-level log lines.

import t from 'tap'
import type { Test } from 'tap'
import { Writable } from 'node:stream'
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import type { FastifyInstance, FastifyServerOptions } from 'fastify'
import { Pool } from 'undici'
import gracefulDrain from 'fastify-graceful-drain'
import type { GracefulDrainOptions } from 'fastify-graceful-drain'

/** Options that install nothing process-wide, so no test leaks a signal handler or exits the runner. */
const quiet = { exit: false, signals: [] } satisfies GracefulDrainOptions

interface Served {
  app: FastifyInstance
  get: (path: string) => Promise<{ status: number, body: unknown, headers: Record<string, unknown> }>
}

/** An app listening on 127.0.0.1 with the plugin, a keep-alive pool to it, and teardown of both. */
async function serve (
  t: Test,
  options: GracefulDrainOptions = {},
  setup: (app: FastifyInstance) => void = () => {},
  fastifyOptions: FastifyServerOptions = {}
): Promise<Served> {
  const app = Fastify(fastifyOptions)
  setup(app)
  await app.register(gracefulDrain, { ...quiet, ...options })
  app.get('/work', async () => ({ ok: true }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  const pool = new Pool(`http://127.0.0.1:${(app.server.address() as AddressInfo).port}`, { connections: 4 })
  t.teardown(async () => {
    await pool.close()
    await app.close()
  })
  return {
    app,
    async get (path) {
      const res = await pool.request({ path, method: 'GET' })
      const text = await res.body.text()
      let body: unknown = text
      try { body = JSON.parse(text) } catch {}
      return { status: res.statusCode, body, headers: res.headers }
    }
  }
}

t.test('/readyz says starting before listen, ready after', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(gracefulDrain, quiet)
  // inject() boots the app without listening: the server is not reachable yet, so not ready.
  const before = await app.inject('/readyz')
  t.equal(before.statusCode, 503)
  t.same(before.json(), { status: 'starting' })
  t.equal(before.headers['cache-control'], 'no-store', 'probes are never cached')
  const live = await app.inject('/livez')
  t.equal(live.statusCode, 200, 'alive while starting')

  await app.listen({ port: 0, host: '127.0.0.1' })
  const pool = new Pool(`http://127.0.0.1:${(app.server.address() as AddressInfo).port}`)
  t.teardown(() => pool.close())
  const res = await pool.request({ path: '/readyz', method: 'GET' })
  t.equal(res.statusCode, 200)
  t.same(await res.body.json(), { status: 'ready' })
  t.equal(res.headers['cache-control'], 'no-store')
})

t.test('from the first instant of the drain /readyz is 503 draining and /livez stays 200', async t => {
  // The delay only has to outlast four local requests; the test awaits the report, so it never waits longer.
  const { app, get } = await serve(t, { drainDelay: 3_000, quietPeriod: 0 })
  t.same((await get('/readyz')).body, { status: 'ready' })

  const report = app.drain.start('test')
  const ready = await get('/readyz')
  t.equal(ready.status, 503)
  t.same(ready.body, { status: 'draining' })
  t.equal(ready.headers.connection, 'close', 'probe responses also hand the connection back')
  const live = await get('/livez')
  t.equal(live.status, 200, 'liveness stays 200 during the drain')
  t.same(live.body, { status: 'alive', state: 'draining' })
  t.equal((await get('/readyz?from=lb')).status, 503, 'a probe with a query string')
  t.equal((await get('/work')).status, 200, 'the app still serves during the delay')
  t.equal(app.drain.state, 'draining', 'all of this happened within the delay')

  const { exitCode, requests } = await report
  t.equal(exitCode, 0)
  t.equal(requests.servedDuringDrain, 1, 'only /work counts as served during the drain, not the probes (query string or not)')
})

t.test('custom probe paths', async t => {
  const { get } = await serve(t, { readiness: { path: '/health/ready' }, liveness: { path: '/health/live' } })
  const ready = await get('/health/ready')
  t.equal(ready.status, 200)
  t.same(ready.body, { status: 'ready' })
  t.equal((await get('/health/live')).status, 200)
  t.equal((await get('/readyz')).status, 404, 'the default readiness path is gone')
  t.equal((await get('/livez')).status, 404, 'the default liveness path is gone')
})

t.test('readiness: false and liveness: false remove the routes', async t => {
  const noReadiness = await serve(t, { readiness: false })
  t.equal((await noReadiness.get('/readyz')).status, 404)
  t.equal((await noReadiness.get('/livez')).status, 200)
  t.notOk(noReadiness.app.hasRoute({ method: 'GET', url: '/readyz' }))

  const noLiveness = await serve(t, { liveness: false })
  t.equal((await noLiveness.get('/livez')).status, 404)
  t.equal((await noLiveness.get('/readyz')).status, 200)
  t.notOk(noLiveness.app.hasRoute({ method: 'GET', url: '/livez' }))
})

t.test('probes are not counted in drain.inFlight', async t => {
  const seen: Record<string, number> = {}
  // The probes are answered before the app's hooks (test/probes-before-hooks.test.ts): their own
  // checks, called while the probe is answered, say what is in flight then.
  const probed: Record<string, number> = {}
  let inFlight = (): number => NaN
  const look = (probe: string) => () => { probed[probe] = inFlight(); return true }
  let release = (): void => {}
  const held = new Promise<void>(resolve => { release = resolve })
  let entered = (): void => {}
  const inHandler = new Promise<void>(resolve => { entered = resolve })
  const { app, get } = await serve(t, {
    readiness: { checks: { look: look('readyz') }, checkCacheTtl: 0 },
    liveness: { checks: { look: look('livez') }, checkCacheTtl: 0 }
  }, app => {
    app.addHook('onRequest', async request => { seen[request.url] = app.drain.inFlight })
    app.get('/held', async () => { entered(); await held; return 'done' })
  })
  inFlight = () => app.drain.inFlight
  await get('/work')
  t.equal(seen['/work'], 1, 'a request is in flight while it is handled')
  await get('/readyz')
  await get('/livez')
  t.equal(probed.readyz, 0, '/readyz is not in flight')
  t.equal(probed.livez, 0, '/livez is not in flight')

  const heldResponse = get('/held')
  await inHandler
  t.equal(app.drain.inFlight, 1, 'the held request is in flight')
  await get('/readyz')
  await get('/livez?verbose=1')
  t.equal(probed.readyz, 1, 'only the held request is in flight during a probe')
  t.equal(probed.livez, 1, 'a probe with a query string is still a probe')
  release()
  t.equal((await heldResponse).body, 'done')
  await get('/work')
  t.equal(seen['/work'], 1, 'after the held request ended, a new request sees only itself')
})

t.test('probe requests are not logged at info; normal requests are', async t => {
  const lines: Array<{ msg?: string, req?: { url?: string }, level?: number }> = []
  const stream = new Writable({
    write (chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line !== '') lines.push(JSON.parse(line))
      done()
    }
  })
  const { get } = await serve(t, {}, () => {}, { logger: { level: 'info', stream } })
  await get('/readyz')
  await get('/livez')
  await get('/work')
  const incoming = lines.filter(line => line.msg === 'incoming request').map(line => line.req?.url)
  t.same(incoming, ['/work'], 'only /work is logged as an incoming request')
  t.notOk(lines.some(line => JSON.stringify(line).includes('/readyz') || JSON.stringify(line).includes('/livez')),
    'no line mentions a probe')
})

t.test('probeLogLevel: info logs the probes like any route', async t => {
  const urls: string[] = []
  const stream = new Writable({
    write (chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) {
        if (line === '') continue
        const entry = JSON.parse(line) as { msg?: string, req?: { url?: string } }
        if (entry.msg === 'incoming request' && entry.req?.url !== undefined) urls.push(entry.req.url)
      }
      done()
    }
  })
  const { get } = await serve(t, { probeLogLevel: 'info' }, () => {}, { logger: { level: 'info', stream } })
  await get('/readyz')
  await get('/livez')
  t.same(urls, ['/readyz', '/livez'])
})
