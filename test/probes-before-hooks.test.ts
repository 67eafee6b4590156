// The probes and the preStop endpoint are answered before the app's hooks: an
// app-wide auth hook, a preHandler, an onSend that adds headers,
// @fastify/rate-limit and @fastify/under-pressure under real pressure cannot
// change what the kubelet reads, on the main port as on the health port, over
// HTTP/1.1 and HTTP/2, with a query string or an absolute-form target; the
// answer is byte for byte what the plugin's Fastify routes send; probes stay
// out of the logs at info.
import t, { type Test } from 'tap'
import http from 'node:http'
import http2 from 'node:http2'
import net from 'node:net'
import { once } from 'node:events'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import { Pool } from 'undici'
import gracefulDrain, { type GracefulDrainOptions } from 'fastify-graceful-drain'
import { call } from './helpers/in-process.js'
import { killChild, startChild, type RunningChild } from './helpers/child.js'

const quiet = { exit: false, signals: [] } satisfies GracefulDrainOptions
const token = 'a-token-of-24-characters'

/** The hooks a real app registers before the plugin, each of which used to answer the probes itself. */
function hostile (app: FastifyInstance): void {
  app.addHook('onRequest', async (request, reply) => {
    if (request.headers.authorization !== 'Bearer let-me-in') return reply.code(401).send({ error: 'Unauthorized' })
  })
  app.addHook('preHandler', async (_request, reply) => reply.code(418).send({ error: 'teapot' }))
  app.addHook('onSend', async (_request, reply) => { reply.header('x-app-hook', 'ran') })
}

/** An app with the hostile hooks, then the plugin, listening on 127.0.0.1. */
async function hostileApp (t: Test, options: GracefulDrainOptions, fastify: FastifyServerOptions = {}): Promise<{ app: FastifyInstance, port: number }> {
  const app = Fastify(fastify)
  hostile(app)
  await app.register(gracefulDrain, { ...quiet, ...options })
  app.get('/work', async () => ({ ok: true }))
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, port: (app.server.address() as net.AddressInfo).port }
}

/**
 * Sends `request` on a new socket and resolves with the response exactly as
 * it came over the wire, its Date header masked. Content-Length framed; a
 * HEAD response ends with its headers.
 */
async function rawExchange (port: number, request: string): Promise<string> {
  const socket = net.connect(port, '127.0.0.1')
  await once(socket, 'connect')
  socket.write(request)
  let data = Buffer.alloc(0)
  const head = request.startsWith('HEAD ')
  try {
    for await (const chunk of socket) {
      data = Buffer.concat([data, chunk as Buffer])
      const end = data.indexOf('\r\n\r\n')
      if (end === -1) continue
      const length = head ? 0 : Number(/content-length: (\d+)/i.exec(data.subarray(0, end).toString('latin1'))?.[1] ?? 0)
      if (data.length >= end + 4 + length) break
    }
  } finally {
    socket.destroy()
  }
  return data.toString('latin1').replace(/\r\nDate: [^\r]+\r\n/, '\r\nDate: <date>\r\n')
}

const get = (path: string, extra = ''): string => `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n${extra}\r\n`

/** What the plugin sent before the probes moved ahead of Fastify's router, captured from its Fastify routes. */
const pinned = {
  ready: 'HTTP/1.1 200 OK\r\ncache-control: no-store\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: 18\r\n' +
    'Date: <date>\r\nConnection: keep-alive\r\nKeep-Alive: timeout=72\r\n\r\n{"status":"ready"}',
  readyHead: 'HTTP/1.1 200 OK\r\ncache-control: no-store\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: 18\r\n' +
    'Date: <date>\r\nConnection: keep-alive\r\nKeep-Alive: timeout=72\r\n\r\n',
  alive: 'HTTP/1.1 200 OK\r\ncache-control: no-store\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: 34\r\n' +
    'Date: <date>\r\nConnection: keep-alive\r\nKeep-Alive: timeout=72\r\n\r\n{"status":"alive","state":"ready"}',
  notReady: 'HTTP/1.1 503 Service Unavailable\r\ncache-control: no-store\r\ncontent-type: application/json; charset=utf-8\r\n' +
    'content-length: 35\r\nDate: <date>\r\nConnection: keep-alive\r\nKeep-Alive: timeout=72\r\n\r\n{"status":"not ready","check":"db"}',
  http10: 'HTTP/1.1 200 OK\r\ncache-control: no-store\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: 18\r\n' +
    'Date: <date>\r\nConnection: close\r\n\r\n{"status":"ready"}',
  draining: 'HTTP/1.1 503 Service Unavailable\r\ncache-control: no-store\r\ncontent-type: application/json; charset=utf-8\r\n' +
    'content-length: 21\r\nDate: <date>\r\nConnection: close\r\n\r\n{"status":"draining"}'
}

t.test('byte for byte: the probes answer what they always did, whatever hooks the app has', async t => {
  let db = true
  const { app, port } = await hostileApp(t, { drainDelay: 2_000, quietPeriod: 0, readiness: { checks: { db: () => db }, checkCacheTtl: 0 } })
  t.equal(await rawExchange(port, get('/work')).then(text => text.split('\r\n')[0]), 'HTTP/1.1 401 Unauthorized',
    'the app answers its own routes 401 without credentials')
  t.equal(await rawExchange(port, get('/readyz')), pinned.ready, '/readyz ready')
  t.equal(await rawExchange(port, 'HEAD /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'), pinned.readyHead, 'HEAD /readyz: the headers alone')
  t.equal(await rawExchange(port, get('/livez')), pinned.alive, '/livez alive')
  t.equal(await rawExchange(port, 'GET /readyz HTTP/1.0\r\n\r\n'), pinned.http10, 'HTTP/1.0: Connection: close, as Node decides')
  t.equal(await rawExchange(port, get('/readyz?from=lb')), pinned.ready, 'with a query string')
  t.equal(await rawExchange(port, get(`http://127.0.0.1:${port}/readyz`)), pinned.ready, 'absolute form: GET http://host/readyz')
  t.equal(await rawExchange(port, get(`http://127.0.0.1:${port}/livez?x=1`)), pinned.alive, 'absolute form with a query string')
  db = false
  t.equal(await rawExchange(port, get('/readyz')), pinned.notReady, 'a failing readiness check')
  db = true
  const report = app.drain.start('test')
  t.equal(await rawExchange(port, get('/readyz')), pinned.draining, 'draining: 503, and the connection handed back')
  t.equal(app.drain.state, 'draining', 'all within the delay')
  t.equal((await report).exitCode, 0)
})

t.test('the answers equal what the Fastify routes (inject) send', async t => {
  const hooked = await hostileApp(t, { readiness: { checks: { db: () => false } } })
  const plain = Fastify()
  t.teardown(() => plain.close())
  await plain.register(gracefulDrain, { ...quiet, readiness: { checks: { db: () => false } } })
  await plain.listen({ port: 0, host: '127.0.0.1' })
  for (const path of ['/readyz', '/livez']) {
    const routed = await plain.inject(path)
    const res = await call(`http://127.0.0.1:${hooked.port}${path}`)
    t.same([res.status, res.body], [routed.statusCode, routed.json()], `${path}: status and body`)
    for (const name of ['cache-control', 'content-type', 'content-length']) {
      t.equal(res.headers[name], routed.headers[name], `${path}: ${name}`)
    }
    t.notOk('x-app-hook' in res.headers, `${path}: no onSend hook of the app ran`)
  }
  t.equal((await hooked.app.inject('/readyz')).statusCode, 401, 'inject() still reaches the Fastify route, through the hooks')
})

t.test('other methods and paths are the app\'s: only GET and HEAD of the exact probe paths are answered first', async t => {
  const { port } = await hostileApp(t, {})
  for (const [label, request] of [
    ['POST /readyz', 'POST /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n'],
    ['/readyz/', get('/readyz/')],
    ['/readyzz', get('/readyzz')],
    ['/livez/x', get('/livez/x')]
  ]) {
    t.match(await rawExchange(port, request as string), /^HTTP\/1\.1 401 /, `${label}: the app's hooks answer`)
  }
})

t.test('HTTP/2: the probes are answered first on an h2c server too', async t => {
  const { port } = await hostileApp(t, { drainDelay: 2_000, quietPeriod: 0 }, { http2: true } as FastifyServerOptions)
  const session = http2.connect(`http://127.0.0.1:${port}`)
  t.teardown(() => session.close())
  const ask = async (path: string): Promise<{ headers: http2.IncomingHttpHeaders, body: string }> => {
    const stream = session.request({ ':path': path })
    const [headers] = await once(stream, 'response') as [http2.IncomingHttpHeaders]
    let body = ''
    for await (const chunk of stream.setEncoding('utf8')) body += chunk
    return { headers, body }
  }
  const work = await ask('/work')
  t.equal(work.headers[':status'], 401, 'the app answers its own routes 401')
  for (const [path, body] of [['/readyz', '{"status":"ready"}'], ['/livez?x=1', '{"status":"alive","state":"ready"}']]) {
    const res = await ask(path as string)
    t.same([res.headers[':status'], res.headers['cache-control'], res.headers['content-type'], res.headers['content-length'], res.body],
      [200, 'no-store', 'application/json; charset=utf-8', String(body?.length), body], `${path}: the probe's own answer`)
    t.notOk('x-app-hook' in res.headers, `${path}: no onSend hook ran`)
  }
})

t.test('the preStop endpoint is routed before the hooks; its token check stays', async t => {
  const { app, port } = await hostileApp(t, { preStop: { token }, drainDelay: 300, quietPeriod: 0 })
  const origin = `http://127.0.0.1:${port}`
  const refused = await call(`${origin}/prestop`)
  t.same([refused.status, refused.body], [403, { error: 'Forbidden' }], 'no token: the plugin\'s 403, not the app\'s 401')
  t.equal(refused.headers['cache-control'], 'no-store')
  t.equal((await call(`${origin}/prestop?token=${token}&token=${token}`)).status, 403, 'two tokens are no token')
  const head = await rawExchange(port, `HEAD /prestop?token=${token} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`)
  t.match(head, /^HTTP\/1\.1 401 /, 'HEAD is not the endpoint\'s method: the app answers it')
  t.equal(app.drain.state, 'ready', 'nothing started')
  const called = await call(`${origin}/prestop?token=${token}`)
  t.equal(called.status, 200, 'the kubelet\'s call with the token: 200 after the delay')
  t.equal(called.body.status, 'draining')
  t.ok(called.body.waitedMs >= 250, `it waited out the delay (${called.body.waitedMs} ms)`)
  t.equal((await app.drain.start()).reason, 'prestop')
})

t.test('on the health port too: probes and preStop keep their answers, and the main port has none', async t => {
  const { app, port } = await hostileApp(t, { healthPort: 0, healthHost: '127.0.0.1', preStop: true, drainDelay: 1_000, quietPeriod: 0 })
  const health = `http://127.0.0.1:${app.drain.healthPort}`
  t.same((await call(`${health}/readyz`)).body, { status: 'ready' })
  t.same((await call(`${health}/livez?x`)).body, { status: 'alive', state: 'ready' })
  t.equal(await rawExchange(app.drain.healthPort as number, get('/readyz')), pinned.ready, 'byte for byte on the health port')
  t.match(await rawExchange(port, get('/readyz')), /^HTTP\/1\.1 401 /, 'the main port has no probe: the app answers')
  const called = call(`${health}/prestop`)
  // The call and the probes race on separate connections: ask until the drain shows (bounded; each ask is a real probe).
  let ready = await call(`${health}/readyz`)
  for (let i = 0; i < 100 && ready.status === 200; i++) ready = await call(`${health}/readyz`)
  t.same([ready.status, ready.body], [503, { status: 'draining' }], 'readiness fails while the preStop call waits')
  t.same(await called.then(res => [res.status, res.body.status]), [200, 'draining'], 'the preStop call answers after the delay')
  await app.drain.start()
})

t.test('probes are not logged at info, even when the app\'s hooks would have answered them', async t => {
  const lines: string[] = []
  const { port } = await hostileApp(t, { preStop: { token }, drainDelay: 100 },
    { logger: { level: 'info', stream: { write: (line: string) => { lines.push(line) } } } })
  for (const path of ['/readyz', '/livez', '/readyz?x=1', `/prestop?token=${token}x`, '/work']) await call(`http://127.0.0.1:${port}${path}`)
  t.ok(lines.some(line => line.includes('/work')), 'the app\'s own route is logged')
  t.notOk(lines.some(line => /\/(readyz|livez|prestop)/.test(line)), 'no line mentions a probe or the preStop endpoint')
  t.ok(lines.some(line => line.includes('preStop endpoint called without the right token')), 'the refused preStop call is logged, without its path')
  t.notOk(lines.some(line => line.includes(token)), 'nor its token')
})

t.test('a serverFactory that hides Fastify\'s handler: the probes still answer, through the hooks, with a warning', async t => {
  const lines: string[] = []
  const app = Fastify({
    serverFactory: handler => http.createServer((req, res) => { handler(req, res) }),
    logger: { level: 'warn', stream: { write: (line: string) => { lines.push(line) } } }
  })
  t.teardown(() => app.close())
  await app.register(gracefulDrain, quiet)
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.same((await call(`http://127.0.0.1:${(app.server.address() as net.AddressInfo).port}/readyz`)).body, { status: 'ready' })
  t.ok(lines.some(line => line.includes('the probes go through the app\'s hooks')), 'warned that the hooks apply')
})

// --- Real plugins, in a process of their own, drained by a real SIGTERM ---

interface Probed { status: number, body: any, headers: Record<string, unknown> }

async function startProbesApp (t: Test, config: object): Promise<{ running: RunningChild, ask: (path: string) => Promise<Probed> }> {
  const running = await startChild('probes-app.ts', { FIXTURE: JSON.stringify(config) })
  t.teardown(() => killChild(running))
  // A new connection per probe, as the kubelet does; keep-alive would also do, until the drain closes it.
  return {
    running,
    async ask (path) {
      const res = await call(`${running.origin}${path}`)
      return { status: res.status, body: res.body, headers: res.headers }
    }
  }
}

const drainStarted = (line: { msg: string }): boolean => line.msg.startsWith('drain started')
const options = { gracePeriod: 10_000, drainDelay: 2_000, quietPeriod: 0 }

t.test('@fastify/rate-limit: once the limit is hit, the probes keep their answers, through a real drain', async t => {
  const { running, ask } = await startProbesApp(t, { rateLimit: { max: 2 }, options })
  t.equal((await ask('/work')).status, 200)
  t.equal((await ask('/work')).status, 200)
  t.equal((await ask('/work')).status, 429, 'the app\'s routes are rate-limited after two requests')
  for (let i = 0; i < 10; i++) {
    const ready = await ask('/readyz')
    const live = await ask('/livez')
    t.same([ready.status, ready.body, live.status, live.body], [200, { status: 'ready' }, 200, { status: 'alive', state: 'ready' }], `probe pair ${i + 1}`)
    t.notOk('x-ratelimit-limit' in ready.headers || 'x-ratelimit-limit' in live.headers, 'the limiter never saw them')
  }
  running.kill('SIGTERM')
  await running.waitForLog(drainStarted)
  t.same(await ask('/readyz').then(r => [r.status, r.body]), [503, { status: 'draining' }], 'readiness 503 during the drain')
  t.same(await ask('/livez').then(r => [r.status, r.body]), [200, { status: 'alive', state: 'draining' }], 'liveness 200')
  t.equal((await running.exited).code, 0)
  t.notOk(running.logs.some(line => /\/(readyz|livez)/.test(JSON.stringify(line))), 'no log line mentions a probe')
})

/** Requests that each busy-wait 300 ms, one after the other, on a keep-alive pool: under-pressure measures a real event-loop delay. */
function blockLoop (running: RunningChild): { stop: () => Promise<void> } {
  const pool = new Pool(running.origin, { connections: 1 })
  const state = { stopped: false }
  const loop = (async () => {
    while (!state.stopped) {
      try {
        const res = await pool.request({ method: 'GET', path: '/block?ms=300' })
        await res.body.dump()
      } catch {
        // The drain closes the listener: the load is over.
        return
      }
    }
  })()
  return { stop: async () => { state.stopped = true; await loop; await pool.destroy() } }
}

t.test('@fastify/under-pressure under a really blocked event loop: /readyz and /livez keep their answers, through a real drain', async t => {
  // under-pressure's figure is the mean delay over each second (sampleInterval): with the loop blocked nearly all the
  // time it stays far above 50 ms, while a probe waits at most one block for its answer.
  const { running, ask } = await startProbesApp(t, { underPressure: { maxEventLoopDelay: 50, sampleInterval: 1_000 }, options })
  const load = blockLoop(running)
  const underPressure = (answer: Probed): boolean => answer.status === 503 && answer.body.code === 'FST_UNDER_PRESSURE'
  const probes: Array<[number, unknown]> = []
  // Until a pair of probes is bracketed by two of the app's requests that under-pressure turned away (the bound,
  // in rounds of four requests that each wait for the loop, is for a loaded machine; two or three rounds do).
  let bracketed = false
  for (let i = 0; i < 30 && !bracketed; i++) {
    const before = await ask('/work')
    const live = await ask('/livez')
    const ready = await ask('/readyz')
    probes.push([live.status, live.body], [ready.status, ready.body])
    bracketed = underPressure(before) && underPressure(await ask('/work'))
  }
  t.ok(bracketed, 'under pressure: the app\'s route answered 503 FST_UNDER_PRESSURE just before and just after a pair of probes')
  t.same(probes.filter((_answer, i) => i % 2 === 0), probes.filter((_answer, i) => i % 2 === 0).map(() => [200, { status: 'alive', state: 'ready' }]),
    'every liveness probe: 200 alive, since a busy process is not a broken one')
  t.same(probes.filter((_answer, i) => i % 2 === 1), probes.filter((_answer, i) => i % 2 === 1).map(() => [200, { status: 'ready' }]),
    'every readiness probe: the plugin\'s own 200 (no pressure check configured)')

  running.kill('SIGTERM')
  await running.waitForLog(drainStarted)
  t.same(await ask('/readyz').then(r => [r.status, r.body]), [503, { status: 'draining' }], 'readiness 503 during the drain, under pressure')
  t.same(await ask('/livez').then(r => [r.status, r.body]), [200, { status: 'alive', state: 'draining' }], 'liveness 200 during the drain')
  await load.stop()
  t.equal((await running.exited).code, 0)
  t.notOk(running.logs.some(line => /\/(readyz|livez)/.test(JSON.stringify(line))), 'no log line mentions a probe')
})

t.test('the README\'s pressure readiness check: under pressure the pod is not ready, never not alive', async t => {
  // Every process uses more than one byte of heap: under pressure from the first sample on, really measured.
  const { running, ask } = await startProbesApp(t, { underPressure: { maxHeapUsedBytes: 1, sampleInterval: 50 }, pressureReadiness: true, options })
  let work = await ask('/work')
  for (let i = 0; i < 100 && work.status === 200; i++) work = await ask('/work')
  t.same([work.status, work.body.code], [503, 'FST_UNDER_PRESSURE'], 'under pressure')
  const ready = await ask('/readyz')
  t.same([ready.status, ready.body], [503, { status: 'not ready', check: 'pressure' }], 'readiness names the pressure check')
  const live = await ask('/livez')
  t.same([live.status, live.body], [200, { status: 'alive', state: 'ready' }], 'liveness 200')
  running.kill('SIGTERM')
  await running.waitForLog(drainStarted)
  t.same(await ask('/readyz').then(r => r.body), { status: 'draining' }, 'the drain state wins over the check')
  t.equal((await running.exited).code, 0)
})
