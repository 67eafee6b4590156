/**
 * SIGTERM → exit with `drainDelay: 0` (and nothing else set), against the floor
 * and the peers, as a function of idle keep-alive connections and in-flight
 * slow requests.
 *
 *   npm run bench:drain [-- --rounds 3 --idle 100,1000,10000 --inflight 0,50 --slow 500 --cap 3000]
 *
 * Three processes: this one (sends the signal, sees the exit), the server
 * (bench/perf/drain-server.ts, pinned to core 0) and the client that holds the
 * connections with undici (bench/perf/drain-client.ts, pinned to the last core).
 * The floor: with nothing in flight, a process that exits at the signal and
 * lets the kernel close its sockets ('exit', run in the same round); with
 * requests in flight, the start of the last one to arrive plus its duration
 * (same run): no drain can end before that response is due.
 * Every in-flight response must arrive whole, status 200, with `Connection: close`.
 */
import { once } from 'node:events'
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import type { ChildProcess } from 'node:child_process'
import { machine, median, pinning, startNode, stop, table, version, type Started } from './perf/processes.js'
import { drainVariants, isBaseline, withBaseline, type DrainVariant } from './perf/variants.js'

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    idle: { type: 'string', default: '100,1000,10000' },
    inflight: { type: 'string', default: '0,50' },
    slow: { type: 'string', default: '500' },
    cap: { type: 'string', default: '3000' },
    variants: { type: 'string', default: drainVariants.join(',') },
    /** Writes a CPU profile of this variant's drain (SIGTERM → exit) per run, to .tmp/profiles/. */
    profile: { type: 'string' },
    /** Checkouts with a built dist/ (comma-separated) to measure as `baseline:<dir name>` beside this tree's plugin. */
    baseline: { type: 'string' }
  }
})
const rounds = Number(args.rounds)
const idleCounts = args.idle.split(',').map(Number)
const inflightCounts = args.inflight.split(',').map(Number)
const slowMs = Number(args.slow)
const capMs = Number(args.cap)
const chosen = withBaseline(args.variants.split(',') as DrainVariant[], args.baseline)
for (const variant of chosen) if (!(drainVariants as readonly string[]).includes(variant) && !isBaseline(variant)) throw new Error(`unknown variant ${variant}`)

const here = fileURLToPath(new URL('.', import.meta.url))
const profiles = join(here, '..', '.tmp', 'profiles')
if (args.profile !== undefined) mkdirSync(profiles, { recursive: true })
const hr = (): number => Number(process.hrtime.bigint()) / 1e6

// Node raises its soft descriptor limit to the hard one at startup; each of the
// server and the client needs one per connection plus a few dozen of its own.
const hardLimit = Number(/Max open files\s+\S+\s+(\S+)/.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1] ?? 'Infinity')
const needed = Math.max(...idleCounts) + Math.max(...inflightCounts) + 200
if (!(hardLimit >= needed)) {
  console.error(`the hard open-files limit is ${hardLimit}; ${needed} are needed per process: run \`ulimit -Hn ${needed * 2}\` as root first`)
  process.exit(1)
}

/** Sends `message` and resolves with the value under `key` of the first reply that has it. */
function ask<T> (child: ChildProcess, message: unknown, key: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const onMessage = (reply: Record<string, unknown>): void => {
      if (reply.error !== undefined) reject(new Error(String(reply.error)))
      else if (key in reply) resolve(reply[key] as T)
      else return
      child.off('message', onMessage)
    }
    child.on('message', onMessage)
    if (message !== undefined) child.send(message as object)
  })
}

interface ServerResult { code: number, exitHr: number, signalHr?: number, cpuMs: number, rssAtSignal?: number, rssPeakKb: number }
interface SlowOutcome { ok: boolean, endHr?: number, error?: string, connection?: string }
interface Collected { slow: SlowOutcome[], stillOpen: number, lastDisconnectHr: number, disconnectCodes: Record<string, number> }

interface Run {
  variant: DrainVariant
  idle: number
  inflight: number
  round: number
  /** SIGTERM → the parent sees the process gone. */
  exitMs: number
  /** SIGTERM → process.exit() ran (its 'exit' event); the rest is the kernel tearing the process down. */
  exitCalledMs: number
  /** SIGTERM → the last in-flight request's start + its duration: the floor with requests in flight. */
  slowestMs: number | undefined
  /** SIGTERM → the client saw its last connection closed. */
  clientClosedMs: number
  capped: boolean
  code: number | null
  cpuMs: number | undefined
  rssAtSignalMb: number | undefined
  rssGrowthPct: number | undefined
  heapBytes: number
  answered: number
  failed: string[]
  codes: Record<string, number>
  stillOpen: number
  report: Record<string, any> | undefined
}

const cores = pinning()
let client: Started | undefined
let server: Started | undefined
process.once('SIGINT', () => {
  Promise.all([server, client].map(s => s === undefined ? undefined : stop(s.child))).finally(() => process.exit(130))
})

async function run (variant: DrainVariant, idle: number, inflight: number, round: number): Promise<Run> {
  const resultFile = join(tmpdir(), `drain-bench-${process.pid}.json`)
  rmSync(resultFile, { force: true })
  server = await startNode(here + 'perf/drain-server.ts', {
    cpus: cores?.server,
    env: {
      VARIANT: variant,
      SLOW_EXPECTED: String(inflight),
      RESULT_FILE: resultFile,
      BASELINE_DIRS: args.baseline ?? '',
      ...(args.profile === variant ? { PROFILE: join(profiles, `drain-${variant}-${idle}-${inflight}-${round}.cpuprofile`) } : {})
    },
    nodeArgs: ['--expose-gc'],
    ipc: true
  })
  const { child, pid } = server
  const running = client as Started
  try {
    const opened = await ask<number>(running.child, { open: { origin: `http://127.0.0.1:${server.hello.port as number}`, idle } }, 'opened')
    if (opened !== idle) throw new Error(`the client opened ${opened} connections, not ${idle}`)
    const heapBytes = await ask<number>(child, { measure: true }, 'heap')
    let lastSlowStartHr = NaN
    if (inflight > 0) {
      const arrived = ask<{ lastStartHr: number }>(child, undefined, 'slowArrived')
      running.child.send({ slow: { count: inflight, ms: slowMs } })
      lastSlowStartHr = (await arrived).lastStartHr
    }
    // Resets the RSS high-water mark, so the one read at exit is the peak during the drain.
    try { writeFileSync(`/proc/${pid}/clear_refs`, '5') } catch { /* not Linux or not permitted: the peak is then lifetime */ }
    let exitHr = 0
    child.once('exit', () => { exitHr = hr() })
    const gone = once(child, 'exit')
    const signalHr = hr()
    process.kill(pid, 'SIGTERM')
    let capTimer: NodeJS.Timeout | undefined
    const capped = await Promise.race([
      gone.then(() => false),
      new Promise<boolean>(resolve => { capTimer = setTimeout(resolve, capMs, true) })
    ])
    clearTimeout(capTimer)
    if (capped) await stop(child)
    const result = capped ? undefined : JSON.parse(readFileSync(resultFile, 'utf8')) as ServerResult
    const collected = await ask<Collected>(running.child, { collect: { timeout: 2_000 } }, 'collected')
    const reportLine = server.lines.map(line => { try { return JSON.parse(line) } catch { return {} } }).find(l => l.drainReport !== undefined)
    return {
      variant,
      idle,
      inflight,
      round,
      exitMs: (capped ? NaN : exitHr) - signalHr,
      exitCalledMs: result === undefined ? NaN : result.exitHr - signalHr,
      slowestMs: inflight > 0 ? lastSlowStartHr + slowMs - signalHr : undefined,
      clientClosedMs: collected.lastDisconnectHr - signalHr,
      capped,
      code: capped ? null : child.exitCode,
      cpuMs: result?.cpuMs,
      rssAtSignalMb: result?.rssAtSignal === undefined ? undefined : result.rssAtSignal / 2 ** 20,
      rssGrowthPct: result?.rssAtSignal === undefined ? undefined : (result.rssPeakKb * 1024 / result.rssAtSignal - 1) * 100,
      heapBytes,
      answered: collected.slow.filter(s => s.ok).length,
      failed: collected.slow.filter(s => !s.ok).map(s => s.error ?? `connection: ${s.connection}`),
      codes: collected.disconnectCodes,
      stillOpen: collected.stillOpen,
      report: reportLine?.drainReport
    }
  } finally {
    await stop(child)
    rmSync(resultFile, { force: true })
  }
}

console.log(`${new Date().toISOString()} · ${machine()}\n` +
  `fastify ${version('fastify')}, fastify-graceful-drain ${JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version}, ` +
  `http-terminator ${version('http-terminator')}, @godaddy/terminus ${version('@godaddy/terminus')}, undici ${version('undici')} (client)\n` +
  `${rounds} rounds, in-flight requests of ${slowMs} ms, cap ${capMs} ms after SIGTERM, ` +
  (cores === undefined ? 'NOT pinned (fewer than 2 cores or no taskset)' : `server on core ${cores.server}, client on core ${cores.load}`))

const runs: Run[] = []
/** The floor of each (idle, round) with nothing in flight: the just-exit process. */
const floors = new Map<string, number>()
try {
  client = await startNode(here + 'perf/drain-client.ts', { cpus: cores?.load, ipc: true })
  for (const inflight of inflightCounts) {
    for (const idle of idleCounts) {
      // The two floors would cut the in-flight requests: they are floors only with none.
      const variants = chosen.filter(v => inflight === 0 || (v !== 'exit' && v !== 'destroy-all'))
      for (let round = 0; round < rounds; round++) {
        for (let i = 0; i < variants.length; i++) {
          const variant = variants[(i + round) % variants.length] as DrainVariant
          const result = await run(variant, idle, inflight, round)
          if (variant === 'exit') floors.set(`${idle}/${round}`, result.exitMs)
          runs.push(result)
          process.stderr.write(`${idle} idle + ${inflight} in flight, round ${round + 1}: ${variant} ${result.capped ? 'capped' : `${result.exitMs.toFixed(1)} ms (exit() at ${result.exitCalledMs.toFixed(1)})`}` +
            `${result.report === undefined ? '' : ' ' + JSON.stringify(result.report.phases)}\n`)
        }
      }
    }
  }
} finally {
  if (server !== undefined) await stop(server.child)
  if (client !== undefined) await stop(client.child)
}

const fmt = (value: number | undefined, digits = 1): string => value === undefined || Number.isNaN(value) ? '–' : value.toFixed(digits)
const overFloor = (r: Run): number | undefined => {
  if (r.capped) return undefined
  if (r.inflight > 0) return r.exitMs - (r.slowestMs as number)
  if (r.variant === 'exit') return undefined
  const floor = floors.get(`${r.idle}/${r.round}`)
  return floor === undefined ? undefined : r.exitMs - floor
}

/** How undici reports each way a connection ended. */
const clientSaw: Record<string, string> = {
  UND_ERR_SOCKET: 'FIN',
  UND_ERR_INFO: 'closed after Connection: close',
  ECONNRESET: 'RST'
}
const rows: Array<Array<string | number>> = []
for (const inflight of inflightCounts) {
  for (const idle of idleCounts) {
    for (const variant of chosen) {
      const list = runs.filter(r => r.variant === variant && r.idle === idle && r.inflight === inflight)
      if (list.length === 0) continue
      const over = list.map(overFloor).filter((v): v is number => v !== undefined)
      const exits = list.filter(r => !r.capped).map(r => r.exitMs)
      const floor = inflight > 0
        ? median(list.map(r => r.slowestMs as number))
        : median(list.map(r => floors.get(`${idle}/${r.round}`) ?? NaN))
      const codes: Record<string, number> = {}
      for (const r of list) for (const [code, n] of Object.entries(r.codes)) codes[code] = (codes[code] ?? 0) + n
      const answered = list.reduce((sum, r) => sum + r.answered, 0)
      rows.push([
        idle,
        inflight,
        variant,
        list.some(r => r.capped) ? `capped ${list.filter(r => r.capped).length}/${list.length} (> ${capMs})` : fmt(median(exits)),
        fmt(floor),
        over.length === 0 ? '–' : `${fmt(median(over))} (${fmt(Math.min(...over))}…${fmt(Math.max(...over))})`,
        fmt(median(list.filter(r => !r.capped).map(r => r.exitCalledMs))),
        [...new Set(list.map(r => r.code ?? 'killed'))].join(','),
        fmt(median(list.map(r => r.clientClosedMs))),
        fmt(median(list.map(r => r.cpuMs ?? NaN)), 0),
        fmt(median(list.map(r => r.rssAtSignalMb ?? NaN)), 0),
        fmt(median(list.map(r => r.rssGrowthPct ?? NaN))),
        inflight === 0 ? '–' : `${answered}/${inflight * list.length}`,
        Object.entries(codes).map(([code, n]) => `${clientSaw[code] ?? code} ${Math.round(n / list.length)}`).join(', ')
      ])
    }
  }
}
console.log('\n### SIGTERM → exit (median of rounds; over floor: median (min…max))\n')
console.log(table(['idle', 'in flight', 'variant', 'SIGTERM→exit ms', 'floor ms', 'over floor ms', 'exit() at ms', 'exit code', 'client saw last close ms', 'drain CPU ms',
  'RSS at signal MB', 'peak RSS growth %', 'answered whole + close', 'client saw (per run)'], rows))

// One line per variant and scenario whose in-flight responses were not all whole, 200 and `Connection: close`.
const failures = new Map<string, { runs: number, failed: number, of: number, why: Set<string> }>()
for (const r of runs.filter(r => r.failed.length > 0)) {
  const key = `${r.variant} at ${r.idle} idle + ${r.inflight} in flight`
  const entry = failures.get(key) ?? { runs: 0, failed: 0, of: 0, why: new Set<string>() }
  entry.runs++
  entry.failed += r.failed.length
  entry.of += r.inflight
  for (const why of r.failed) entry.why.add(why)
  failures.set(key, entry)
}
for (const [key, f] of failures) {
  console.log(`! ${key}: ${f.failed} of ${f.of} in-flight responses over ${f.runs} runs not whole with Connection: close (${[...f.why].join(', ')})`)
}
const plugin = runs.filter(r => r.variant === 'plugin' && r.report !== undefined)
const forced = plugin.filter(r => r.report?.forced === true || r.report?.connections?.destroyed > 0)
console.log(`\nplugin drain reports: ${plugin.length} runs, ${forced.length} forced or with destroyed connections`)

// Memory per connection: the slope of heap over idle connections, per variant; the plugin's minus the floor's is what tracking costs.
if (idleCounts.length >= 2 && chosen.includes('exit') && chosen.includes('plugin') && inflightCounts.includes(0)) {
  const lo = Math.min(...idleCounts)
  const hi = Math.max(...idleCounts)
  const slope = (variant: DrainVariant): number => {
    const at = (idle: number): number => median(runs.filter(r => r.variant === variant && r.idle === idle && r.inflight === 0).map(r => r.heapBytes))
    return (at(hi) - at(lo)) / (hi - lo)
  }
  const memRows = chosen.map(variant => [variant, fmt(slope(variant), 0), fmt(slope(variant) - slope('exit'), 0)])
  console.log(`\n### Heap per idle connection (JS heap + external after full GC, ${lo} → ${hi} connections)\n`)
  console.log(table(['variant', 'bytes per connection', 'over bare Fastify (tracking cost)'], memRows))
}
console.log(`\nload average at the end: ${machine().split('load average ')[1]}`)
