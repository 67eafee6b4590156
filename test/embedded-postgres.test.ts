import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { connect } from 'node:net'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import pg from 'pg'
import { startEmbeddedPostgres } from '../examples/support/embedded-postgres.js'

const refused = (port: number): Promise<string> => new Promise((resolve) => {
  const socket = connect(port, '127.0.0.1')
  socket.once('connect', () => { socket.destroy(); resolve('connected') })
  socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? String(err)))
})

t.test('importing the helper leaves signal handling to the app', async (t) => {
  // tap has its own SIGTERM/beforeExit listeners, so ask async-exit-hook (embedded-postgres' copy) directly
  const exitHook = createRequire(import.meta.resolve('embedded-postgres'))('async-exit-hook') as { hookedEvents (): string[] }
  t.same(exitHook.hookedEvents(), [], 'async-exit-hook no longer calls process.exit on SIGTERM/SIGINT/beforeExit')
})

t.test('starts a real postgres on 127.0.0.1 and stops it cleanly', async (t) => {
  const lines: string[] = []
  const startedAt = performance.now()
  const db = await startEmbeddedPostgres({ log: (line) => lines.push(line) })
  t.comment(`startup ${Math.round(performance.now() - startedAt)} ms`)
  t.teardown(() => db.stop())
  t.ok(lines.length > 0, 'log lines are forwarded')

  const url = new URL(db.url)
  t.equal(url.hostname, '127.0.0.1')
  t.equal(Number(url.port), db.port)

  const client = new pg.Client({ connectionString: db.url })
  await client.connect()
  const one = await client.query<{ one: number }>('select 1 as one')
  t.equal(one.rows[0]?.one, 1)
  const listen = await client.query<{ v: string }>("select current_setting('listen_addresses') as v")
  t.equal(listen.rows[0]?.v, '127.0.0.1')
  const dir = await client.query<{ v: string }>("select current_setting('data_directory') as v")
  const dataDir = dir.rows[0]?.v ?? ''
  t.ok(existsSync(dataDir), 'data directory exists while running')
  await client.end()

  const stoppedAt = performance.now()
  await db.stop()
  t.comment(`stop ${Math.round(performance.now() - stoppedAt)} ms`)
  await db.stop() // idempotent
  t.equal(await refused(db.port), 'ECONNREFUSED', 'port is closed after stop')
  t.notOk(existsSync(dataDir), 'data directory removed')
})

t.test('two instances can run side by side', async (t) => {
  const [a, b] = await Promise.all([startEmbeddedPostgres(), startEmbeddedPostgres()])
  t.not(a.port, b.port)
  await Promise.all([a.stop(), b.stop()])
})

t.test('postgres goes away when the owning process exits without stop()', async (t) => {
  for (const ending of ['', "throw new Error('boom')"]) {
    const script = `
      import pg from 'pg'
      import { startEmbeddedPostgres } from './examples/support/embedded-postgres.ts'
      const db = await startEmbeddedPostgres()
      const client = new pg.Client({ connectionString: db.url })
      await client.connect()
      const { rows } = await client.query("select current_setting('data_directory') as dir")
      await client.end()
      console.log(JSON.stringify({ port: db.port, dir: rows[0].dir }))
      ${ending}`
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      stdio: ['ignore', 'pipe', 'ignore']
    })
    let out = ''
    child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
    const [code] = await once(child, 'exit') as [number | null]
    t.equal(code, ending === '' ? 0 : 1, ending === '' ? 'exits on its own: postgres does not hold the loop' : 'crashes')
    const { port, dir } = JSON.parse(out) as { port: number, dir: string }
    // No polling: the exit handler waits for postgres to be down before it removes the directory
    // (removing it while postgres still unlinks its own files left it behind on Node 24).
    t.equal(await refused(port), 'ECONNREFUSED', 'postgres was down by the time its owner had exited')
    t.notOk(existsSync(dir), 'data directory removed')
  }
})
