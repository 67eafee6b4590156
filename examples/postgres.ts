/**
 * A Fastify app on PostgreSQL through @fastify/postgres. The pool stays open
 * until the last response has been written: the plugin finishes the HTTP drain
 * itself and only then calls fastify.close(), whose onClose hook (registered by
 * @fastify/postgres) ends the pool. `npm run demo` runs this file under load.
 *
 *   DATABASE_URL=postgres://user:pass@host/db node --import tsx examples/postgres.ts
 *   node --import tsx examples/postgres.ts   # no DATABASE_URL: starts an embedded PostgreSQL and stops it on exit
 *
 * Environment: DATABASE_URL, PORT (3000), HOST (127.0.0.1), DRAIN_DELAY_MS
 * (the plugin's default, 5000), GRACE_PERIOD_MS (30000), PGAPPNAME (pg's own:
 * the application_name the backends show in pg_stat_activity).
 */
import { once } from 'node:events'
import Fastify from 'fastify'
import fastifyPostgres from '@fastify/postgres'
import gracefulDrain from 'fastify-graceful-drain'
import { startEmbeddedPostgres } from './support/embedded-postgres.js'

/** How long a connection attempt may take: an unreachable database fails startup, it does not hang it. */
const CONNECT_TIMEOUT_MS = 5_000
const MAX_SLEEP_MS = 10_000

const ms = (name: string): number | undefined => process.env[name] === undefined ? undefined : Number(process.env[name])

/** The URL without its password, fit for a log line. */
function redact (url: string): string {
  try {
    const parsed = new URL(url)
    if (parsed.password !== '') parsed.password = '***'
    return parsed.toString()
  } catch {
    return '(DATABASE_URL is not a URL)'
  }
}

/** net's AggregateError (one error per address tried) has an empty message; say what each attempt got. */
function reason (error: unknown): string {
  if (error instanceof AggregateError && error.message === '') return error.errors.map(reason).join('; ')
  if (error instanceof Error) return error.message || String((error as NodeJS.ErrnoException).code ?? error.name)
  return String(error)
}

const fromEnv = process.env.DATABASE_URL !== undefined && process.env.DATABASE_URL !== ''
const embedded = fromEnv ? undefined : await startEmbeddedPostgres()
const connectionString = (fromEnv ? process.env.DATABASE_URL : embedded?.url) ?? ''
const database = { source: fromEnv ? 'DATABASE_URL' : 'embedded', url: redact(connectionString) }

const app = Fastify({ logger: true })
await app.register(gracefulDrain, { drainDelay: ms('DRAIN_DELAY_MS'), gracePeriod: ms('GRACE_PERIOD_MS') })
// Closers run after the app's onClose hooks, so the server goes only after the pool has ended.
if (embedded !== undefined) app.drain.addCloser('embedded-postgres', () => embedded.stop())
await app.register(fastifyPostgres, { connectionString, connectionTimeoutMillis: CONNECT_TIMEOUT_MS })

// pg's pool.end(), which @fastify/postgres calls in onClose, returns once it has asked every connection to
// close, not once they are closed. Count them, so that the pool is reported closed (and the embedded
// server stopped) only when the last connection has really ended.
const pool = app.pg.pool
let connections = 0
let lastEnded = (): void => {}
const allEnded = new Promise<void>(resolve => { lastEnded = resolve })
pool.on('connect', () => { connections++ })
pool.on('remove', () => { if (--connections === 0 && pool.ending) lastEnded() })
// An idle connection can fail (the database restarts); without a listener pg's pool would crash the process.
pool.on('error', error => { app.log.warn({ err: error }, 'idle PostgreSQL connection failed') })
// Added after 'embedded-postgres', so it runs before it: closers go last added, first run.
app.drain.addCloser('postgres-connections', async signal => {
  if (connections > 0) await Promise.race([allEnded, once(signal, 'abort')])
  app.log.info('PostgreSQL pool closed: every connection has ended')
})

try {
  // Fail now, with the reason, rather than on the first request or never.
  await app.pg.query('select 1')
} catch (error) {
  app.log.fatal({ database }, `cannot use PostgreSQL at ${database.url} (${database.source}): ${reason(error)}`)
  await app.close() // runs the closers too: the embedded server, if any, is stopped
  process.exit(1)
}
app.log.info({ database }, `using PostgreSQL at ${database.url} (${database.source})`)

app.get('/', async () => {
  const { rows } = await app.pg.query<{ now: Date }>('select now()')
  return { now: rows[0]?.now }
})

// A slow request: the query itself takes `ms`, so the pool must outlive it.
app.get<{ Querystring: { ms?: string } }>('/slow', async request => {
  const wait = Math.min(Math.max(Number(request.query.ms ?? 1000) || 0, 0), MAX_SLEEP_MS)
  await app.pg.query('select pg_sleep($1)', [wait / 1000])
  return { slept: wait }
})

await app.listen({ port: Number(process.env.PORT ?? 3000), host: process.env.HOST ?? '127.0.0.1' })
const address = app.server.address()
// When started by a test or the demo (fork with IPC): the port, and which database it uses.
process.send?.({ port: typeof address === 'object' && address !== null ? address.port : undefined, database })
