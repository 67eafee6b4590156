// A real HAProxy in front of test servers, driven through its runtime API.
//
// `mode: 'tcp'` models kube-proxy: every *connection* is balanced (roundrobin)
// once and stays on its backend until one side closes it.
// `mode: 'http'` models an ingress controller: HAProxy parses requests, keeps
// its own keep-alive connections to the backends and reuses them for any
// client (`http-reuse always`).
//
// Nothing in the generated config hides a failure: `retries 0`, no
// `option redispatch`, no `retry-on`, so a backend that refuses, resets or
// closes shows up at the client as an error (tcp) or a 502/503 (http).
//
// Backend slots s1..sN start in maintenance pointing at 127.0.0.1:1 and are
// pointed at real ports at runtime (`setServer`), and taken out again with
// `maint` (what the endpoints controller does when a pod goes unready or is
// deleted).

import { spawn, spawnSync } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createConnection, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

export type LbMode = 'tcp' | 'http'

export interface HealthCheckOptions {
  /** `option httpchk GET <path>`, e.g. '/readyz' */
  path: string
  /** `check inter <interMs>` */
  interMs: number
  /** consecutive failed checks before the server is marked DOWN */
  fall: number
  /** consecutive successful checks before a DOWN server is marked UP again */
  rise: number
}

export interface HaproxyTimeouts {
  /** default 2000 */
  connectMs?: number
  /** default 30000 */
  clientMs?: number
  /** default 30000 */
  serverMs?: number
  /** health check timeout, default 2000 */
  checkMs?: number
  /** http mode: idle client-side keep-alive, default 30000 */
  httpKeepAliveMs?: number
  /** http mode: time to receive a full request, default 30000 */
  httpRequestMs?: number
  /** time a request may wait for a free server, default 2000 */
  queueMs?: number
}

export interface HaproxyOptions {
  mode: LbMode
  /** number of backend server slots, named s1..sN (1-based everywhere) */
  slots: number
  /** active HTTP health checks; default false (no checks) */
  healthCheck?: HealthCheckOptions | false
  timeouts?: HaproxyTimeouts
  /** how long setServer/maint wait for HAProxy to apply the change, default 5000 */
  settleTimeoutMs?: number
}

export type ServerOpState = 'stopped' | 'starting' | 'running' | 'stopping'

export interface ServerState {
  slot: number
  name: string
  addr: string
  port: number
  opState: ServerOpState
  /** raw srv_admin_state bit field (0x01 forced maint, 0x04 maint from config, 0x08 forced drain, ...) */
  adminState: number
  /** true when HAProxy will not send new traffic to it because of an admin maintenance flag */
  maint: boolean
  /** true when HAProxy will route new connections/requests to it */
  routable: boolean
  /** srv_check_health: health counter (0..rise+fall-1) */
  checkHealth: number
}

export interface Haproxy {
  /** frontend port on 127.0.0.1 */
  port: number
  /** PID of the haproxy process (runs in the foreground, `-db`) */
  pid: number
  mode: LbMode
  /** path of the generated config file */
  configPath: string
  /** the generated config text */
  config: string
  /**
   * Point slot (1-based) at 127.0.0.1:port and make it ready. Resolves once
   * `show servers state` says HAProxy will route to it.
   */
  setServer: (slot: number, port: number) => Promise<void>
  /** Put slot in maintenance: no new traffic (established tcp connections stay). Resolves once applied. */
  maint: (slot: number) => Promise<void>
  /** parsed `show servers state be` */
  state: () => Promise<ServerState[]>
  /** parsed `show stat` rows of the backend (one per server plus BACKEND) */
  stat: () => Promise<Array<Record<string, string>>>
  /** send one raw runtime API command, returns the raw answer */
  command: (cmd: string) => Promise<string>
  /** what haproxy wrote on stdout/stderr so far (state changes, warnings, alerts) */
  logs: () => string
  /** SIGTERM (hard stop), wait for exit (SIGKILL after 3 s), remove the temp dir. Idempotent. */
  stop: () => Promise<void>
}

const BACKEND = 'be'

// srv_admin_state bits (include/haproxy/server-t.h)
const ADMF_FMAINT = 0x01
const ADMF_IMAINT = 0x02
// 0x04 CMAINT only records that the server was `disabled` in the config; it
// stays set after `set server ... state ready` and does not block traffic.
const ADMF_FDRAIN = 0x08
const ADMF_IDRAIN = 0x10
const ADMF_CDRAIN = 0x20
const ADMF_RMAINT = 0x40
const ADMF_HMAINT = 0x80
const ADMF_MAINT = ADMF_FMAINT | ADMF_IMAINT | ADMF_RMAINT | ADMF_HMAINT
const ADMF_DRAIN = ADMF_FDRAIN | ADMF_IDRAIN | ADMF_CDRAIN

const OP_STATES: ServerOpState[] = ['stopped', 'starting', 'running', 'stopping']

let cachedBinary: string | null | undefined

function haproxyBinary (): string | null {
  if (cachedBinary !== undefined) return cachedBinary
  cachedBinary = null
  // HAPROXY_BIN, when set, is the only candidate (also handy to test the "missing" path)
  const env = process.env.HAPROXY_BIN
  const candidates = env != null && env !== '' ? [env] : ['haproxy', '/usr/sbin/haproxy', '/usr/local/sbin/haproxy']
  for (const bin of candidates) {
    const r = spawnSync(bin, ['-v'], { stdio: 'ignore', timeout: 5000 })
    if (r.error == null && r.status === 0) {
      cachedBinary = bin
      break
    }
  }
  return cachedBinary
}

/** Is a usable haproxy binary installed (Debian/Ubuntu: `apt-get install haproxy`)? */
export function haproxyAvailable (): boolean {
  return haproxyBinary() !== null
}

/**
 * What `requireHaproxy` and `requireNginx` need of a tap `Test`, stated
 * structurally so that scripts/support does not depend on tap.
 */
export interface SkippableTest {
  fail (message: string): unknown
  skip (message: string, fn: () => void): unknown
}

/**
 * True when HAProxy is installed. Otherwise the test is skipped with the package
 * to install — or failed under CI=true, where a skip would silently drop the proof.
 */
export function requireHaproxy (t: SkippableTest): boolean {
  if (haproxyAvailable()) return true
  const msg = 'haproxy binary not found: install the Debian/Ubuntu package `haproxy` (apt-get install -y haproxy)'
  if (process.env.CI === 'true') t.fail(msg)
  else t.skip(msg, () => {})
  return false
}

/** Generate the HAProxy config text. Exported for inspection/debugging. */
export function haproxyConfig (opts: HaproxyOptions & { port: number, socketPath: string }): string {
  const t = opts.timeouts ?? {}
  const hc = opts.healthCheck === undefined ? false : opts.healthCheck
  const lines: string[] = [
    'global',
    // no `log` line: HAProxy logs nothing; state changes/alerts still go to stderr
    `  stats socket ${opts.socketPath} mode 600 level admin`,
    '  stats timeout 10s',
    '',
    'defaults',
    `  mode ${opts.mode}`,
    `  timeout connect ${t.connectMs ?? 2000}ms`,
    `  timeout client ${t.clientMs ?? 30000}ms`,
    `  timeout server ${t.serverMs ?? 30000}ms`,
    `  timeout check ${t.checkMs ?? 2000}ms`,
    `  timeout queue ${t.queueMs ?? 2000}ms`
  ]
  if (opts.mode === 'http') {
    lines.push(
      `  timeout http-request ${t.httpRequestMs ?? 30000}ms`,
      `  timeout http-keep-alive ${t.httpKeepAliveMs ?? 30000}ms`
    )
  }
  lines.push(
    // never retry, never redispatch: every backend failure reaches the client
    '  retries 0',
    '  no option redispatch',
    '',
    'frontend fe',
    `  bind 127.0.0.1:${opts.port}`,
    `  default_backend ${BACKEND}`,
    '',
    `backend ${BACKEND}`,
    '  balance roundrobin'
  )
  if (opts.mode === 'http') {
    lines.push(
      '  option http-keep-alive',
      '  http-reuse always'
    )
  }
  let serverSuffix = ''
  if (hc !== false) {
    lines.push(`  option httpchk GET ${hc.path}`)
    serverSuffix = ` check inter ${hc.interMs}ms fall ${hc.fall} rise ${hc.rise}`
  }
  for (let i = 1; i <= opts.slots; i++) {
    lines.push(`  server s${i} 127.0.0.1:1 disabled${serverSuffix}`)
  }
  lines.push('')
  return lines.join('\n')
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

/** One runtime API command per connection (non-interactive mode: HAProxy answers and closes). */
function runtimeCommand (socketPath: string, cmd: string, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    const sock = createConnection(socketPath)
    sock.setTimeout(timeoutMs, () => {
      sock.destroy(new Error(`haproxy runtime API: timeout after ${timeoutMs} ms for '${cmd}'`))
    })
    sock.on('connect', () => { sock.end(cmd + '\n') })
    sock.on('data', (c: Buffer) => { chunks.push(c) })
    sock.on('error', reject)
    sock.on('close', (hadError) => {
      if (!hadError) resolve(Buffer.concat(chunks).toString('utf8'))
    })
  })
}

function parseServersState (text: string): ServerState[] {
  const out: ServerState[] = []
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#') || !line.includes(' ')) continue
    // be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight
    // srv_iweight srv_time_since_last_change srv_check_status srv_check_result
    // srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id
    // srv_fqdn srv_port ...
    const f = line.split(' ')
    if (f[1] !== BACKEND) continue
    const name = f[3] ?? ''
    const opState = OP_STATES[Number(f[5])] ?? 'stopped'
    const adminState = Number(f[6])
    const maint = (adminState & ADMF_MAINT) !== 0
    out.push({
      slot: Number(name.slice(1)),
      name,
      addr: f[4] ?? '',
      port: Number(f[18]),
      opState,
      adminState,
      maint,
      routable: !maint && (adminState & ADMF_DRAIN) === 0 && opState === 'running',
      checkHealth: Number(f[12])
    })
  }
  return out
}

function parseCsv (text: string): Array<Record<string, string>> {
  const lines = text.split('\n').filter((l) => l !== '')
  const header = (lines.shift() ?? '').replace(/^# /, '').split(',')
  return lines.map((line) => {
    const cells = line.split(',')
    const row: Record<string, string> = {}
    header.forEach((h, i) => { if (h !== '') row[h] = cells[i] ?? '' })
    return row
  })
}

const liveChildren = new Set<ChildProcess>()
let exitHookInstalled = false

function installExitHook (): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  // Last resort if a test forgets stop() or throws: never leave haproxy behind.
  process.on('exit', () => {
    for (const child of liveChildren) {
      try { child.kill('SIGKILL') } catch {}
    }
  })
}

const BIND_ERROR = /cannot bind socket|Address already in use/i

export async function startHaproxy (opts: HaproxyOptions): Promise<Haproxy> {
  const bin = haproxyBinary()
  if (bin === null) throw new Error('haproxy binary not found (install the `haproxy` package, e.g. apt-get install -y haproxy)')
  if (!Number.isInteger(opts.slots) || opts.slots < 1) throw new Error('slots must be a positive integer')
  const settleTimeoutMs = opts.settleTimeoutMs ?? 5000

  const dir = await mkdtemp(join(tmpdir(), 'hap-'))
  const socketPath = join(dir, 'admin.sock')
  const configPath = join(dir, 'haproxy.cfg')
  installExitHook()

  // setpriv --pdeathsig: the kernel kills haproxy if this node process dies
  // without running its exit hooks (e.g. SIGKILL by the test runner). setpriv
  // execs haproxy, so the PID is haproxy's.
  const useSetpriv = process.platform === 'linux' && existsSync('/usr/bin/setpriv')

  let lastError = ''
  try {
    for (let attempt = 1; attempt <= 5; attempt++) {
      const port = await freePort()
      const config = haproxyConfig({ ...opts, port, socketPath })
      await writeFile(configPath, config)
      await rm(socketPath, { force: true })

      const args = ['-db', '-f', configPath]
      const child = useSetpriv
        ? spawn('/usr/bin/setpriv', ['--pdeathsig', 'KILL', bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
        : spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] })
      liveChildren.add(child)
      let output = ''
      const capture = (c: Buffer): void => {
        output += c.toString('utf8')
        if (output.length > 64 * 1024) output = output.slice(-32 * 1024)
      }
      child.stdout?.on('data', capture)
      child.stderr?.on('data', capture)
      let exited = false
      const exitPromise = new Promise<void>((resolve) => {
        const onGone = (): void => {
          exited = true
          liveChildren.delete(child)
          resolve()
        }
        child.once('exit', onGone)
        // spawn failure: 'exit' may never come
        child.once('error', (err) => {
          capture(Buffer.from(String(err)))
          if (child.pid === undefined) onGone()
        })
      })

      // Ready when the runtime API answers; failed when the process exits.
      const deadline = Date.now() + 5000
      let ready = false
      while (Date.now() < deadline) {
        if (exited) break
        try {
          const info = await runtimeCommand(socketPath, 'show info', 1000)
          if (info.includes('Pid:')) { ready = true; break }
        } catch {}
        await sleep(20)
      }
      if (!ready) {
        if (!exited) child.kill('SIGKILL')
        await exitPromise
        lastError = output.trim()
        if (BIND_ERROR.test(output) && attempt < 5) continue
        throw new Error(`haproxy failed to start (exit ${String(child.exitCode ?? child.signalCode)}):\n${lastError}\n--- config ---\n${config}`)
      }
      if (child.pid === undefined) throw new Error('haproxy has no pid')

      return makeHandle({ child, exitPromise, port, config, configPath, dir, socketPath, opts, settleTimeoutMs, output: () => output, exited: () => exited })
    }
    throw new Error(`haproxy failed to start after 5 attempts:\n${lastError}`)
  } catch (err) {
    await rm(dir, { recursive: true, force: true })
    throw err
  }
}

interface HandleInit {
  child: ChildProcess
  exitPromise: Promise<void>
  port: number
  config: string
  configPath: string
  dir: string
  socketPath: string
  opts: HaproxyOptions
  settleTimeoutMs: number
  output: () => string
  exited: () => boolean
}

function makeHandle (h: HandleInit): Haproxy {
  const { child, socketPath, opts, settleTimeoutMs } = h
  const hasChecks = opts.healthCheck !== undefined && opts.healthCheck !== false
  let stopping: Promise<void> | null = null

  const command = async (cmd: string): Promise<string> => {
    if (h.exited()) throw new Error(`haproxy (pid ${String(child.pid)}) has exited:\n${h.output()}`)
    return await runtimeCommand(socketPath, cmd)
  }

  // Every answer that is not an error is either empty or informational.
  const checked = async (cmd: string): Promise<string> => {
    const answer = await command(cmd)
    if (/no such|unknown|require|invalid|error|can't|cannot|not allowed|failed/i.test(answer)) {
      throw new Error(`haproxy runtime API '${cmd}' failed: ${answer.trim()}`)
    }
    return answer
  }

  const state = async (): Promise<ServerState[]> => parseServersState(await command(`show servers state ${BACKEND}`))

  const slotName = (slot: number): string => {
    if (!Number.isInteger(slot) || slot < 1 || slot > opts.slots) {
      throw new Error(`slot ${slot} out of range 1..${opts.slots}`)
    }
    return `${BACKEND}/s${slot}`
  }

  const waitFor = async (slot: number, what: string, ok: (s: ServerState) => boolean): Promise<void> => {
    const deadline = Date.now() + settleTimeoutMs
    let last: ServerState | undefined
    while (true) {
      last = (await state()).find((s) => s.slot === slot)
      if (last !== undefined && ok(last)) return
      if (Date.now() > deadline) {
        throw new Error(`haproxy: s${slot} not ${what} after ${settleTimeoutMs} ms: ${JSON.stringify(last)}\n${h.output().slice(-2000)}`)
      }
      await sleep(10)
    }
  }

  return {
    port: h.port,
    pid: child.pid as number,
    mode: opts.mode,
    configPath: h.configPath,
    config: h.config,
    command,
    logs: h.output,
    state,

    async stat () {
      return parseCsv(await command('show stat')).filter((r) => r.pxname === BACKEND)
    },

    async setServer (slot, port) {
      const name = slotName(slot)
      if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`bad port ${port}`)
      // Take it out first so that re-pointing a live slot never sends traffic
      // to a half-updated server (no-op for a slot already in maintenance).
      await checked(`set server ${name} state maint`)
      await checked(`set server ${name} addr 127.0.0.1 port ${port}`)
      // A slot that failed its checks before (the previous pod behind it
      // drained) would otherwise stay DOWN for `rise` checks after leaving
      // maintenance. Kubernetes only adds ready endpoints, so start it UP;
      // the checks keep running and take it DOWN if it really is not ready.
      if (hasChecks) await checked(`set server ${name} health up`)
      await checked(`set server ${name} state ready`)
      await waitFor(slot, `routable on 127.0.0.1:${port}`, (s) => s.routable && s.port === port)
    },

    async maint (slot) {
      const name = slotName(slot)
      await checked(`set server ${name} state maint`)
      await waitFor(slot, 'in maintenance', (s) => s.maint)
    },

    async stop () {
      stopping ??= (async () => {
        if (!h.exited()) {
          // SIGTERM = hard stop: close everything now (SIGUSR1 would be a soft stop).
          child.kill('SIGTERM')
          const t = setTimeout(() => { if (!h.exited()) child.kill('SIGKILL') }, 3000)
          await h.exitPromise
          clearTimeout(t)
        }
        await rm(h.dir, { recursive: true, force: true })
      })()
      await stopping
    }
  }
}
