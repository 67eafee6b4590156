// The examples are part of the product: type-checked with the project (tsconfig
// includes examples/), started here as real processes, drained by a real
// SIGTERM, and expected to exit 0. examples/postgres.ts also has to refuse a
// bad DATABASE_URL at startup, clearly and within seconds.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { createServer, connect, type AddressInfo, type Socket } from 'node:net'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import pg from 'pg'
import { request } from 'undici'
import { startEmbeddedPostgres } from '../examples/support/embedded-postgres.js'
import { startChild, killChild, type RunningChild } from './helpers/child.js'
import { waitForLog } from './helpers/wait.js'

// startChild forks test/fixtures/<name>; the examples live two levels up from there.
const example = (name: string): string => `../../examples/${name}`
const examplePath = (name: string): string => fileURLToPath(new URL(`../examples/${name}`, import.meta.url))

async function get (running: RunningChild, path: string): Promise<{ status: number, body: any }> {
  const res = await request(`${running.origin}${path}`, { headers: { connection: 'close' } })
  return { status: res.statusCode, body: await res.body.json() }
}

const refused = (port: number): Promise<string> => new Promise(resolve => {
  const socket = connect(port, '127.0.0.1')
  socket.once('connect', () => { socket.destroy(); resolve('connected') })
  socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? String(error)))
})

/** Runs examples/postgres.ts to its exit, for the runs that must fail at startup. */
async function runToExit (t: Test, env: Record<string, string>): Promise<{ code: number | null, ms: number, output: string }> {
  const startedAt = performance.now()
  const child = spawn(process.execPath, ['--import', 'tsx', examplePath('postgres.ts')], {
    env: { ...process.env, PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  let output = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { output += chunk })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { output += chunk })
  const [code] = await once(child, 'exit') as [number | null]
  return { code, ms: performance.now() - startedAt, output }
}

t.test('the examples are type-checked with the project', async t => {
  const { include } = JSON.parse(readFileSync(new URL('../tsconfig.json', import.meta.url), 'utf8')) as { include: string[] }
  t.ok(include.includes('examples'), 'tsconfig.json (npm run typecheck) includes examples/')
  t.ok(include.includes('scripts'), 'and scripts/ (the demo)')
})

t.test('examples/basic.ts serves, drains on SIGTERM and exits 0', async t => {
  const running = await startChild(example('basic.ts'), { PORT: '0', DRAIN_DELAY_MS: '0' })
  t.teardown(() => killChild(running))
  t.same(await get(running, '/'), { status: 200, body: { hello: 'world' } })
  t.same(await get(running, '/readyz'), { status: 200, body: { status: 'ready' } })
  running.kill('SIGTERM')
  const { code, signal } = await running.exited
  t.equal(code, 0, 'exit code 0')
  t.equal(signal, null)
  t.equal(running.report()?.exitCode, 0, 'the drain report says the same')
})

t.test('examples/postgres.ts with its embedded PostgreSQL: serves queries, exits 0, stops the server', async t => {
  // An empty DATABASE_URL means "not set", whatever the environment running the tests has.
  const running = await startChild(example('postgres.ts'), { PORT: '0', DRAIN_DELAY_MS: '0', DATABASE_URL: '' })
  t.teardown(() => killChild(running))
  const database = (await waitForLog(running, line => typeof line.database === 'object')).database as { source: string, url: string }
  t.equal(database.source, 'embedded', 'it says which PostgreSQL it uses')
  t.notMatch(database.url, /:app@/, 'without the password')
  const port = Number(new URL(database.url).port)

  t.equal((await get(running, '/')).status, 200, 'a query')
  t.same(await get(running, '/slow?ms=50'), { status: 200, body: { slept: 50 } }, 'a slow query')
  running.kill('SIGTERM')
  const { code } = await running.exited
  t.equal(code, 0, 'exit code 0')
  t.same(running.report()?.closers.map((c: { name: string, outcome: string }) => `${c.name}:${c.outcome}`),
    ['fastify.close:ok', 'postgres-connections:ok', 'embedded-postgres:ok'],
    'the pool ends (onClose), its connections are gone, then the embedded server stops')
  t.equal(await refused(port), 'ECONNREFUSED', 'the embedded PostgreSQL is stopped')
})

t.test('examples/postgres.ts with DATABASE_URL', async t => {
  const db = await startEmbeddedPostgres()
  t.teardown(() => db.stop())

  t.test('uses it, exits 0 and leaves the database running', async t => {
    const running = await startChild(example('postgres.ts'), { PORT: '0', DRAIN_DELAY_MS: '0', DATABASE_URL: db.url })
    t.teardown(() => killChild(running))
    const database = (await waitForLog(running, line => typeof line.database === 'object')).database as { source: string }
    t.equal(database.source, 'DATABASE_URL')
    t.same(await get(running, '/slow?ms=20'), { status: 200, body: { slept: 20 } })
    running.kill('SIGTERM')
    t.equal((await running.exited).code, 0, 'exit code 0')
    t.same(running.report()?.closers.map((c: { name: string }) => c.name), ['fastify.close', 'postgres-connections'],
      'no embedded server to stop')
    const client = new pg.Client({ connectionString: db.url })
    await client.connect()
    await client.end()
    t.pass('the database given in DATABASE_URL is still up')
  })

  t.test('wrong credentials: a clear error at startup, exit 1', async t => {
    const wrong = new URL(db.url)
    wrong.password = 'not-the-password'
    const { code, ms, output } = await runToExit(t, { DATABASE_URL: wrong.toString() })
    t.equal(code, 1)
    t.match(output, /cannot use PostgreSQL at postgres:\/\/app:\*\*\*@127\.0\.0\.1:\d+\/app \(DATABASE_URL\): password authentication failed/)
    t.notMatch(output, /not-the-password/, 'the password is not logged')
    t.ok(ms < 20_000, `within seconds (${Math.round(ms)} ms; generous for a loaded machine)`)
  })
})

t.test('examples/postgres.ts: an unreachable DATABASE_URL fails at startup, it does not hang', async t => {
  t.test('nothing listens on the port', async t => {
    const server = createServer()
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const { port } = server.address() as AddressInfo
    server.close() // a port that was free a moment ago: connections are refused
    const { code, ms, output } = await runToExit(t, { DATABASE_URL: `postgres://app:secret@127.0.0.1:${port}/app` })
    t.equal(code, 1)
    t.match(output, /cannot use PostgreSQL at postgres:\/\/app:\*\*\*@127\.0\.0\.1:\d+\/app \(DATABASE_URL\): connect ECONNREFUSED/)
    t.notMatch(output, /secret/, 'the password is not logged')
    t.ok(ms < 20_000, `within seconds (${Math.round(ms)} ms)`)
  })

  t.test('something accepts the connection and never answers', async t => {
    const sockets = new Set<Socket>()
    const server = createServer(socket => { sockets.add(socket) }) // a black hole
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    t.teardown(() => { for (const socket of sockets) socket.destroy(); server.close() })
    const { port } = server.address() as AddressInfo
    const { code, ms, output } = await runToExit(t, { DATABASE_URL: `postgres://app:secret@127.0.0.1:${port}/app` })
    t.equal(code, 1)
    t.match(output, /cannot use PostgreSQL at .*\(DATABASE_URL\): .*timeout/i, 'the connect timeout (5 s) names the problem')
    t.ok(ms < 25_000, `within seconds, not a hang (${Math.round(ms)} ms)`)
  })
})
