// A real nginx (Debian's `nginx` package) in front of test servers, configured
// the way ingress-nginx configures its upstreams, and told of endpoint changes
// the way a plain nginx with a generated config is: rewrite the upstream list,
// then reload (SIGHUP to the master we started, by PID).
//
// What differs from HAProxy, and why the config is what it is:
// - nginx keeps its own keep-alive pool per worker to the upstreams
//   (`keepalive 32`, `proxy_http_version 1.1`, `Connection ""`); a response
//   with `Connection: close` takes that connection out of the pool.
// - Open-source nginx has no active health checks: it learns of a removal only
//   through the reload. A reload starts new workers with the new upstream list
//   and tells the old ones to quit gracefully: they stop accepting, finish what
//   they are serving, and close their idle keep-alive connections, to the
//   clients (the client may be writing a request on one at that moment: a
//   reload artefact, no app involved) and to the upstreams.
// - `proxy_next_upstream off` by default, so that every failure towards the
//   app reaches the client as a 502/504; `retries: true` restores nginx's
//   default (`error timeout`: a refused or reset idempotent request is re-sent
//   to another upstream), to show what retries hide.
// - The access log records the load's per-request id with the upstream's
//   address and status, so a failed request can be told apart: nginx logged it
//   (it read the request and the failure is between nginx and the app) or not
//   (the client↔nginx connection failed before nginx read a request).

import { spawn, spawnSync } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { chmod, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises'
import { createConnection, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FailureSample, LoadResult } from './load.js'
import type { SkippableTest } from './haproxy.js'
import type { Balancer } from './rolling.js'

export interface NginxOptions {
  /** upstream ports on 127.0.0.1 at start; default none (nginx answers 502) */
  servers?: number[]
  /** false (default): `proxy_next_upstream off`; true: nginx's default retries (`error timeout`) */
  retries?: boolean
  /** idle keep-alive connections to the upstreams kept per worker; default 32 (as in the issue; ingress-nginx's default is 320) */
  keepalive?: number
  /** default 1: one worker is plenty for 500 req/s, and the machine has 2 cores */
  workerProcesses?: number
  /** how long start() and setServers() wait for nginx to apply a config, ms; default 5000 */
  settleTimeoutMs?: number
}

/** One line of the access log. */
export interface AccessLogEntry {
  /** wall-clock time the request finished, ms since the epoch */
  msec: number
  /** the client's `x-request-id` header ('' when none) */
  id: string
  /** what nginx answered the client */
  status: number
  /** every upstream nginx tried, comma-separated ('' when none) */
  upstreamAddr: string
  /** each upstream's status, comma-separated; 502 for a connection error, 504 for a timeout */
  upstreamStatus: string
  request: string
}

export interface Reload {
  /** performance.now() when SIGHUP was sent */
  at: number
  /** performance.now() when every old worker had stopped taking new requests */
  appliedAt: number
  /** upstream ports after the reload */
  servers: number[]
}

export interface Nginx {
  /** listening port on 127.0.0.1 */
  port: number
  origin: string
  /** PID of the master process (runs in the foreground: `daemon off`) */
  pid: number
  /** the temp prefix: config, logs, pid file, temp paths */
  dir: string
  configPath: string
  /** the config text in force */
  config: () => string
  /** upstream ports in force */
  servers: () => number[]
  /**
   * Rewrite the upstream list and reload. Resolves once the new workers run
   * and every old worker has begun its graceful shutdown, i.e. no new request
   * goes to an upstream that was removed; rejects if nginx refused the config.
   */
  setServers: (ports: number[]) => Promise<Reload>
  reloads: Reload[]
  accessLog: () => Promise<AccessLogEntry[]>
  errorLog: () => Promise<string>
  /** SIGTERM the master (fast shutdown), wait for its exit (SIGKILL after 3 s), remove the temp dir. Idempotent. */
  stop: () => Promise<void>
}

export const REQUEST_ID_HEADER = 'x-request-id'

let cachedBinary: string | null | undefined

function nginxBinary (): string | null {
  if (cachedBinary !== undefined) return cachedBinary
  cachedBinary = null
  // NGINX_BIN, when set, is the only candidate (also handy to test the "missing" path)
  const env = process.env.NGINX_BIN
  const candidates = env != null && env !== '' ? [env] : ['nginx', '/usr/sbin/nginx', '/usr/local/sbin/nginx']
  for (const bin of candidates) {
    const r = spawnSync(bin, ['-v'], { stdio: 'ignore', timeout: 5000 })
    if (r.error == null && r.status === 0) {
      cachedBinary = bin
      break
    }
  }
  return cachedBinary
}

/** Is a usable nginx binary installed (Debian/Ubuntu: `apt-get install nginx`)? */
export function nginxAvailable (): boolean {
  return nginxBinary() !== null
}

/** `nginx -v`'s version, e.g. '1.22.1', or undefined. */
export function nginxVersion (): string | undefined {
  const bin = nginxBinary()
  if (bin === null) return undefined
  const r = spawnSync(bin, ['-v'], { encoding: 'utf8', timeout: 5000 })
  return /nginx\/(\S+)/.exec(`${r.stderr}${r.stdout}`)?.[1]
}

/**
 * True when nginx is installed. Otherwise the test is skipped with the package
 * to install — or failed under CI=true, where a skip would silently drop the proof.
 */
export function requireNginx (t: SkippableTest): boolean {
  if (nginxAvailable()) return true
  const msg = 'nginx binary not found: install the Debian/Ubuntu package `nginx` (apt-get install -y nginx)'
  if (process.env.CI === 'true') t.fail(msg)
  else t.skip(msg, () => {})
  return false
}

/** Generate the nginx config text. Exported for inspection/debugging. */
export function nginxConfig (opts: NginxOptions & { port: number, dir: string }): string {
  const d = opts.dir
  const servers = opts.servers ?? []
  const upstream = servers.length > 0
    ? servers.map(port => `    server 127.0.0.1:${port};`)
    // an upstream needs a server: a placeholder that is never tried (nginx answers 502)
    : ['    server 127.0.0.1:1 down;']
  return [
    'daemon off;',
    'master_process on;',
    `worker_processes ${opts.workerProcesses ?? 1};`,
    `pid ${d}/nginx.pid;`,
    // notice: the master logs the workers it starts, the workers their graceful shutdown (setServers waits on those lines)
    `error_log ${d}/error.log notice;`,
    'events { worker_connections 4096; }',
    'http {',
    `  client_body_temp_path ${d}/client_body;`,
    `  proxy_temp_path ${d}/proxy;`,
    `  fastcgi_temp_path ${d}/fastcgi;`,
    `  uwsgi_temp_path ${d}/uwsgi;`,
    `  scgi_temp_path ${d}/scgi;`,
    '  log_format ids escape=json \'{"msec":$msec,"id":"$http_x_request_id","status":$status,' +
      '"upstreamAddr":"$upstream_addr","upstreamStatus":"$upstream_status","request":"$request"}\';',
    `  access_log ${d}/access.log ids;`,
    '  upstream app {',
    ...upstream,
    `    keepalive ${opts.keepalive ?? 32};`,
    '  }',
    '  server {',
    `    listen 127.0.0.1:${opts.port};`,
    '    location / {',
    '      proxy_pass http://app;',
    // ingress-nginx's upstream keep-alive: HTTP/1.1 and no `Connection: close` passed on
    '      proxy_http_version 1.1;',
    '      proxy_set_header Connection "";',
    `      proxy_next_upstream ${opts.retries === true ? 'error timeout' : 'off'};`,
    '    }',
    '  }',
    '}',
    ''
  ].join('\n')
}

async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer()
    srv.unref()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address()
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0
      srv.close(() => resolve(port))
    })
  })
}

function canConnect (port: number): Promise<boolean> {
  return new Promise(resolve => {
    const sock = createConnection({ port, host: '127.0.0.1' })
    sock.once('connect', () => { sock.destroy(); resolve(true) })
    sock.once('error', () => resolve(false))
  })
}

/** Reads what was appended to a file since `offset` (the error log is small: tens of lines per reload). */
async function readFrom (path: string, offset: number): Promise<{ text: string, end: number }> {
  const handle = await open(path, 'r').catch(() => undefined)
  if (handle === undefined) return { text: '', end: offset }
  try {
    const { size } = await handle.stat()
    if (size <= offset) return { text: '', end: offset }
    const buf = Buffer.alloc(size - offset)
    const { bytesRead } = await handle.read(buf, 0, buf.length, offset)
    return { text: buf.subarray(0, bytesRead).toString('utf8'), end: offset + bytesRead }
  } finally {
    await handle.close()
  }
}

/** SIGKILL an nginx worker by PID, if that PID is still one (it may have been reused since). */
async function killWorker (pid: number): Promise<void> {
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
  if (!cmdline.startsWith('nginx: worker process')) return
  try { process.kill(pid, 'SIGKILL') } catch {}
}

const STARTED_WORKER = /\[notice\] \d+#\d+: start worker process (\d+)/g
const EMERG = /\[(emerg|alert)\].*/
const liveChildren = new Set<ChildProcess>()
let exitHookInstalled = false

function installExitHook (): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  // Last resort if a test forgets stop() or throws: never leave nginx behind.
  // SIGTERM, not SIGKILL: the master then stops its workers, which a killed
  // master would leave running.
  process.on('exit', () => {
    for (const child of liveChildren) {
      try { child.kill('SIGTERM') } catch {}
    }
  })
}

export async function startNginx (opts: NginxOptions = {}): Promise<Nginx> {
  const bin = nginxBinary()
  if (bin === null) throw new Error('nginx binary not found (install the `nginx` package, e.g. apt-get install -y nginx)')
  const settleTimeoutMs = opts.settleTimeoutMs ?? 5000
  const workerProcesses = opts.workerProcesses ?? 1
  const dir = await mkdtemp(join(tmpdir(), 'nginx-'))
  // Run as root, nginx runs its workers as `nobody`: they must be able to
  // reach the temp paths nginx creates (and chowns to them) inside the prefix.
  if (process.getuid?.() === 0) await chmod(dir, 0o755)
  const configPath = join(dir, 'nginx.conf')
  const errorLogPath = join(dir, 'error.log')
  installExitHook()
  // setpriv --pdeathsig: the kernel signals the master if this node process dies
  // without running its exit hooks (TERM, so that it stops its workers too);
  // setpriv execs nginx, so the PID is the master's.
  const useSetpriv = process.platform === 'linux' && existsSync('/usr/bin/setpriv')

  let lastError = ''
  try {
    for (let attempt = 1; attempt <= 5; attempt++) {
      const port = await freePort()
      let servers = [...(opts.servers ?? [])]
      let config = nginxConfig({ ...opts, servers, port, dir })
      await writeFile(configPath, config)
      // -e: the error log from the first line on, not /var/log/nginx/error.log
      const args = ['-p', dir, '-c', configPath, '-e', errorLogPath]
      const child = useSetpriv
        ? spawn('/usr/bin/setpriv', ['--pdeathsig', 'TERM', bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
        : spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] })
      liveChildren.add(child)
      let output = ''
      const capture = (c: Buffer): void => { output = (output + c.toString('utf8')).slice(-32 * 1024) }
      child.stdout?.on('data', capture)
      child.stderr?.on('data', capture)
      let exited = false
      const exitPromise = new Promise<void>(resolve => {
        const onGone = (): void => { exited = true; liveChildren.delete(child); resolve() }
        child.once('exit', onGone)
        child.once('error', err => { capture(Buffer.from(String(err))); if (child.pid === undefined) onGone() })
      })

      // No event says "nginx is up": poll its error log for the workers it
      // started and its port for a connection, bounded.
      const workers = new Set<number>()
      let logOffset = 0
      let ready = false
      const deadline = performance.now() + settleTimeoutMs
      // `exited` is set by the 'exit' listener while this loop awaits
      while (performance.now() < deadline) {
        if (exited) break
        const { text, end } = await readFrom(errorLogPath, logOffset)
        logOffset = end
        output += text
        for (const m of text.matchAll(STARTED_WORKER)) workers.add(Number(m[1]))
        if (workers.size >= workerProcesses && await canConnect(port)) { ready = true; break }
        if (EMERG.test(text)) break
        await sleep(10)
      }
      if (!ready) {
        if (!exited) child.kill('SIGKILL')
        await exitPromise
        const log = await readFile(errorLogPath, 'utf8').catch(() => '')
        lastError = `${output}\n${log}`.trim()
        if (/Address already in use/.test(lastError) && attempt < 5) continue
        throw new Error(`nginx failed to start (exit ${String(child.exitCode ?? child.signalCode)}):\n${lastError}\n--- config ---\n${config}`)
      }
      if (child.pid === undefined) throw new Error('nginx has no pid')
      const pid = child.pid

      const reloads: Reload[] = []
      let stopping: Promise<void> | undefined
      let reloading: Promise<unknown> = Promise.resolve()
      let current = workers
      const everyWorker = new Set(workers)

      const reload = async (ports: number[]): Promise<Reload> => {
        if (exited) throw new Error(`nginx (pid ${pid}) has exited:\n${output}`)
        const nextConfig = nginxConfig({ ...opts, servers: ports, port, dir })
        await writeFile(configPath, nextConfig)
        const old = current
        const started = new Set<number>()
        const quitting = new Set<number>()
        let { end: offset } = await readFrom(errorLogPath, logOffset)
        logOffset = offset
        const at = performance.now()
        process.kill(pid, 'SIGHUP')
        const until = at + settleTimeoutMs
        let seen = ''
        for (;;) {
          const { text, end } = await readFrom(errorLogPath, offset)
          offset = end
          seen += text
          const emerg = EMERG.exec(text)
          if (emerg !== null) {
            // nginx keeps the old config and workers when it refuses the new one
            await writeFile(configPath, config)
            throw new Error(`nginx refused the new config: ${emerg[0]}\n--- config ---\n${nextConfig}`)
          }
          for (const m of text.matchAll(STARTED_WORKER)) started.add(Number(m[1]))
          for (const w of old) if (new RegExp(`\\] ${w}#\\d+: (gracefully shutting down|exiting|exit)$`, 'm').test(seen)) quitting.add(w)
          if (started.size >= workerProcesses && quitting.size === old.size) break
          if (exited) throw new Error(`nginx (pid ${pid}) exited during a reload:\n${seen}`)
          if (performance.now() > until) {
            throw new Error(`nginx: reload not applied after ${settleTimeoutMs} ms (started ${[...started].join(',')}, quitting ${[...quitting].join(',')} of ${[...old].join(',')}):\n${seen}`)
          }
          await sleep(5)
        }
        logOffset = offset
        current = started
        for (const w of started) everyWorker.add(w)
        config = nextConfig
        servers = [...ports]
        const done = { at, appliedAt: performance.now(), servers: [...ports] }
        reloads.push(done)
        return done
      }

      return {
        port,
        origin: `http://127.0.0.1:${port}`,
        pid,
        dir,
        configPath,
        config: () => config,
        servers: () => [...servers],
        reloads,
        // One reload at a time: a second SIGHUP before the first is applied would mix their log lines.
        setServers (ports) {
          const next = reloading.then(async () => await reload(ports))
          reloading = next.catch(() => {})
          return next
        },
        async accessLog () {
          const text = await readFile(join(dir, 'access.log'), 'utf8').catch(() => '')
          return text.split('\n').filter(line => line !== '').map(line => JSON.parse(line) as AccessLogEntry)
        },
        errorLog: async () => await readFile(errorLogPath, 'utf8').catch(() => ''),
        async stop () {
          stopping ??= (async () => {
            if (!exited) {
              // SIGTERM = fast shutdown: the workers close everything and exit at once.
              child.kill('SIGTERM')
              let killed = false
              const t = setTimeout(() => { if (!exited) { killed = true; child.kill('SIGKILL') } }, 3000)
              await exitPromise
              clearTimeout(t)
              // A killed master cannot stop its workers: end those still there, by PID.
              if (killed) for (const w of everyWorker) await killWorker(w)
            }
            await rm(dir, { recursive: true, force: true })
          })()
          await stopping
        }
      }
    }
    throw new Error(`nginx failed to start after 5 attempts:\n${lastError}`)
  } catch (err) {
    await rm(dir, { recursive: true, force: true })
    throw err
  }
}

/** Failure kinds of a connection that closed under a request (load.ts's classifyError). */
const CONNECTION_LOST = /^(socket closed|ECONNRESET|EPIPE|UND_ERR_CLOSED|UND_ERR_SOCKET)/

export interface NginxFailure extends FailureSample {
  /** what nginx logged for this request, if anything */
  logged?: AccessLogEntry
}

/** A run's failed requests, sorted by who failed them, from the load's ids and nginx's logs. */
export interface NginxVerdict {
  /**
   * Failures of the proxied request: nginx logged the request (a 502/504 with an
   * upstream address is nginx→app; a non-200 from the app itself), or nginx
   * never logged it and it was not a lost connection (e.g. a timeout).
   * What must be zero.
   */
  failures: NginxFailure[]
  /**
   * The client↔nginx keep-alive connection closed under a request that nginx
   * never logged, i.e. never read: no app was involved. A reload closes the old
   * workers' idle client connections, and one the client is writing on at that
   * moment loses its request.
   */
  reloadArtefacts: NginxFailure[]
  /** requests nginx answered 200 after trying more than one upstream: failures that retries hid */
  retried: number
  /** nginx's own account of upstream errors (error log), by kind, retried ones included */
  upstreamErrors: Record<string, number>
  /** reloads and their timing, ms since the load started (to line artefacts up with them) */
  reloads: Array<{ atMs: number, appliedMs: number, servers: number[] }>
}

const UPSTREAM_ERRORS: Array<[string, RegExp]> = [
  ['refused', /connect\(\) failed \(111: Connection refused\)/],
  ['reset', /\(104: Connection reset by peer\)/],
  ['closed', /upstream prematurely closed connection/],
  ['timeout', /upstream timed out/]
]

/** Sorts a load's failures by nginx's access log; `loadStartedAt` is the load's performance.now() origin. */
export async function nginxVerdict (nginx: Nginx, load: LoadResult, loadStartedAt: number): Promise<NginxVerdict> {
  if (load.failedRequests === undefined) throw new Error(`the load must send ${REQUEST_ID_HEADER} (requestIdHeader)`)
  const entries = await nginx.accessLog()
  const byId = new Map<string, AccessLogEntry>()
  let retried = 0
  for (const entry of entries) {
    if (entry.id !== '') byId.set(entry.id, entry)
    if (entry.status === 200 && entry.upstreamStatus.includes(',')) retried++
  }
  const failures: NginxFailure[] = []
  const reloadArtefacts: NginxFailure[] = []
  for (const failure of load.failedRequests) {
    const logged = byId.get(failure.id)
    if (logged === undefined && CONNECTION_LOST.test(failure.kind)) reloadArtefacts.push(failure)
    else failures.push({ ...failure, logged })
  }
  const upstreamErrors: Record<string, number> = {}
  for (const line of (await nginx.errorLog()).split('\n')) {
    // `[error] pid#tid: *conn <what> while <doing> upstream, client: ..., upstream: "..."`:
    // the message before `, client:` says whether the upstream side failed
    const message = /\[(error|crit)\] [^:]*: (.*?)(, client:|$)/.exec(line)?.[2]
    if (message === undefined || !message.includes('upstream')) continue
    const kind = UPSTREAM_ERRORS.find(([, re]) => re.test(line))?.[0] ?? 'other'
    upstreamErrors[kind] = (upstreamErrors[kind] ?? 0) + 1
  }
  return {
    failures,
    reloadArtefacts,
    retried,
    upstreamErrors,
    reloads: nginx.reloads.map(r => ({ atMs: Math.round(r.at - loadStartedAt), appliedMs: Math.round(r.appliedAt - loadStartedAt), servers: r.servers }))
  }
}

/**
 * nginx as scripts/support/rolling.ts drives it: each endpoint change is a new
 * upstream list and a reload; the load sends request ids; the report sorts the
 * failures with nginx's logs.
 */
export async function nginxBalancer (opts: Omit<NginxOptions, 'servers'> = {}): Promise<Balancer<NginxVerdict>> {
  const nginx = await startNginx(opts)
  return {
    origin: nginx.origin,
    load: { requestIdHeader: REQUEST_ID_HEADER },
    async add (port) { await nginx.setServers([...nginx.servers(), port]) },
    async remove (port) { await nginx.setServers(nginx.servers().filter(p => p !== port)) },
    report: async (load, loadStartedAt) => await nginxVerdict(nginx, load, loadStartedAt),
    stop: async () => await nginx.stop()
  }
}
