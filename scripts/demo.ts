/**
 * `npm run demo`: one rolling-deploy drain, on this machine, in a few seconds.
 *
 * Starts examples/postgres.ts (with an embedded PostgreSQL, or the one in
 * DATABASE_URL), drives keep-alive load at it (fast requests and slow ones that
 * hold a database query), probes /readyz the way a load balancer does and stops
 * sending new work once it fails, sends SIGTERM in the middle of the load, and
 * prints what happened, in order. Exits 1 if any request failed or the app did
 * not exit cleanly before its deadline.
 */
import { fork } from 'node:child_process'
import { once } from 'node:events'
import { performance } from 'node:perf_hooks'
import { setTimeout as delay } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { Client } from 'undici'
import { startLoad, type LoadResult } from './support/load.js'

const RATE = 100 // requests per second, open loop, over keep-alive connections
const CONNECTIONS = 16
const SLOW_FRACTION = 0.1 // every 10th request holds a `select pg_sleep(…)`
const SLOW_MS: [number, number] = [300, 2500]
const SIGTERM_AFTER_MS = 2_000 // of load before the "rolling deploy" reaches this pod
const DRAIN_DELAY_MS = 2_000 // shorter than the 5 s default, so the demo takes seconds
// The "load balancer" checks /readyz every 250 ms and takes the pod out after 3
// failures in a row, like HAProxy's `inter 250 fall 3`: traffic keeps coming for a while.
const PROBE_EVERY_MS = 250
const FALL = 3
const MAX_LOAD_MS = 30_000 // upper bound on sending, whatever happens
const WATCHDOG_MS = 90_000 // the demo gives up (and says so) rather than hang

const started = performance.now()
const stamp = (): string => `[${((performance.now() - started) / 1000).toFixed(1).padStart(5)}s]`
const say = (line: string): void => { console.log(`${stamp()} ${line}`) }
const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`

interface LogLine { level: number, msg: string, [key: string]: unknown }
interface Outcome { name: string, outcome: string, durationMs: number, error?: string }
interface Report {
  startedAt: string
  deadlineMs: number
  phases: { closing?: number, resourcesClosing?: number, closed?: number }
  delay: { plannedMs: number, actualMs: number, extendedMs: number }
  requests: { inFlightAtStart: number, servedDuringDrain: number, cut: string[] }
  connections: { openAtStart: number, closedGracefully: number, destroyed: number }
  closers: Outcome[]
  exitCode: number
}

const usingEnv = process.env.DATABASE_URL !== undefined && process.env.DATABASE_URL !== ''
say(`starting examples/postgres.ts with ${usingEnv ? 'the PostgreSQL in DATABASE_URL' : 'an embedded PostgreSQL (first run unpacks it: a few seconds)'}`)
const app = fork(fileURLToPath(new URL('../examples/postgres.ts', import.meta.url)), {
  execArgv: ['--import', 'tsx'],
  env: { ...process.env, PORT: '0', HOST: '127.0.0.1', DRAIN_DELAY_MS: String(DRAIN_DELAY_MS) },
  stdio: ['ignore', 'pipe', 'pipe', 'ipc']
})
// The app logs pino JSON; keep it for the timeline, and the raw tail for a failure.
const logs: LogLine[] = []
const tail: string[] = []
let pending = ''
app.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
  const lines = (pending + chunk).split('\n')
  pending = lines.pop() ?? ''
  for (const line of lines) {
    if (tail.push(line) > 60) tail.shift()
    try { logs.push(JSON.parse(line) as LogLine) } catch { /* not a log line */ }
  }
})
app.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
  for (const line of chunk.split('\n')) if (line !== '' && tail.push(line) > 60) tail.shift()
})
const exited = once(app, 'exit').then(([code, signal]) => ({ code: code as number | null, signal: signal as string | null, at: performance.now() }))

// Interrupted: stop the load and the app, and exit 130 once the app is gone (it stops its PostgreSQL).
// Ctrl-C in a terminal reaches the app too (same process group); ours then makes it exit at once.
let stopLoad = (): void => {}
process.once('SIGINT', () => {
  say('interrupted: stopping the load and the app')
  stopLoad()
  app.kill('SIGINT')
  exited.then(() => process.exit(130), () => process.exit(130))
})
const watchdog = setTimeout(() => {
  say(`FAIL: the demo did not finish within ${WATCHDOG_MS / 1000} s; stopping the app`)
  app.kill('SIGINT') // a second signal makes the app exit at once; its exit handler stops PostgreSQL
  process.exitCode = 1
}, WATCHDOG_MS)

function fail (why: string): never {
  console.log(`\n${why}\nlast lines from the app:\n${tail.join('\n')}`)
  if (app.exitCode === null && app.signalCode === null) app.kill('SIGINT')
  process.exit(1)
}

let listening = false
const ready = await Promise.race([
  once(app, 'message').then(([message]) => message as { port: number, database: { source: string, url: string } }),
  exited.then(({ code }) => listening ? undefined as never : fail(`FAIL: examples/postgres.ts exited with code ${code} before listening`))
])
listening = true
const origin = `http://127.0.0.1:${ready.port}`
const dbUrl = ready.database.url
say(`app listening on ${origin}; PostgreSQL: ${ready.database.source} ${dbUrl}`)

// The "load balancer": probes /readyz; after FALL failures in a row it sends no new work to this pod.
async function probeUntilRemoved (): Promise<{ firstFailedAt: number, removedAt: number }> {
  const probe = new Client(origin)
  let firstFailedAt = NaN
  let failures = 0
  try {
    for (let i = 0; i * PROBE_EVERY_MS < MAX_LOAD_MS; i++) {
      const ok = await probe.request({ path: '/readyz', method: 'GET' })
        .then(async res => { await res.body.dump(); return res.statusCode === 200 },
          () => false) // refused or reset also counts as a failure
      failures = ok ? 0 : failures + 1
      if (failures === 1) firstFailedAt = performance.now()
      if (failures === FALL) return { firstFailedAt, removedAt: performance.now() }
      await delay(PROBE_EVERY_MS)
    }
    return { firstFailedAt, removedAt: NaN }
  } finally {
    await probe.close().catch(() => {})
  }
}

say(`load: ${RATE} req/s over ${CONNECTIONS} keep-alive connections, ${SLOW_FRACTION * 100} % slow (${SLOW_MS[0]}–${SLOW_MS[1]} ms in PostgreSQL)`)
const loadStarted = performance.now()
const load = startLoad({
  origin,
  rate: RATE,
  durationMs: MAX_LOAD_MS,
  connections: CONNECTIONS,
  slowFraction: SLOW_FRACTION,
  slowMs: SLOW_MS,
  requestTimeoutMs: 10_000
})
stopLoad = () => { load.stop().catch(() => {}) }
const removed = probeUntilRemoved()
const progress = setInterval(() => {
  const { sent, ok, failed } = load.stats()
  say(`  ${sent} sent, ${ok} ok, ${failed} failed`)
}, 1_000)

await delay(SIGTERM_AFTER_MS)
const beforeSignal = load.stats()
const signalAt = performance.now()
app.kill('SIGTERM')
say(`SIGTERM sent (${beforeSignal.ok} requests answered so far, ${beforeSignal.sent - beforeSignal.ok - beforeSignal.failed} awaiting an answer)`)

const { firstFailedAt, removedAt } = await removed
say(`/readyz failed ${FALL} probes in a row: the load balancer stops sending new work to this pod`)
const result: LoadResult = await load.stop()
clearInterval(progress)
const lastResponseAt = loadStarted + result.elapsedMs
say(`all ${result.sent} requests settled: ${result.ok} ok, ${result.failed} failed`)
const exit = await exited
clearTimeout(watchdog)
say(`app exited with code ${exit.code}${exit.signal === null ? '' : ` (signal ${exit.signal})`}`)

const report = logs.find(line => line.drainReport !== undefined)?.drainReport as Report | undefined
if (report === undefined) fail('FAIL: the app logged no drain report')

const sinceSignal = (at: number): number => Math.round(at - signalAt)
const exitMs = sinceSignal(exit.at)
const resourcesAt = report.phases.resourcesClosing ?? NaN
// Times from the app's report are taken from its own signal handler, a fraction of a ms after ours.
const events: Array<[number, string]> = [
  [0, `SIGTERM: readiness fails from now on; ${report.requests.inFlightAtStart} requests in flight, ${report.connections.openAtStart} connections open`],
  [sinceSignal(firstFailedAt), 'readiness flipped: the load balancer\'s next probe sees /readyz 503, the app still serves everything'],
  [sinceSignal(removedAt), `the load balancer takes the pod out (${FALL} failed probes, ${PROBE_EVERY_MS} ms apart): no new requests`],
  [report.phases.closing ?? NaN, `listener closed: drainDelay ${report.delay.plannedMs} ms, extended ${report.delay.extendedMs} ms by the quiet period; idle connections closed`],
  [sinceSignal(lastResponseAt), 'last response received by the client'],
  [resourcesAt, 'no request left: fastify.close() runs the app\'s onClose hooks; @fastify/postgres ends its pool']
]
// The closers run one after another, so each ends at the sum of the durations before it.
let closerAt = resourcesAt
for (const closer of report.closers) {
  closerAt += closer.durationMs
  const what = {
    'fastify.close': 'onClose hooks done',
    'postgres-connections': 'pool closed: every PostgreSQL connection has ended (closer "postgres-connections")',
    'embedded-postgres': 'embedded PostgreSQL stopped (closer "embedded-postgres")'
  }[closer.name] ?? `closer "${closer.name}"`
  events.push([closerAt, `${what}: ${closer.outcome} in ${closer.durationMs} ms`])
}
events.push([exitMs, `exit code ${exit.code}; deadline +${report.deadlineMs} ms (gracePeriod − exitMargin): ${report.deadlineMs - exitMs} ms to spare`])
events.sort(([a], [b]) => a - b)

console.log(`
Timeline (ms after SIGTERM)
${events.map(([at, what]) => `  ${`+${at} ms`.padStart(10)}  ${what}`).join('\n')}

Requests:    ${result.sent} sent, ${result.ok} ok, ${result.failed} failed; ${report.requests.servedDuringDrain} served during the drain, ${report.requests.cut.length} cut
Connections: ${report.connections.closedGracefully} closed gracefully, ${report.connections.destroyed} destroyed
Latency:     p50 ${result.latency.p50} ms, p99 ${result.latency.p99} ms, max ${result.latency.max} ms
PostgreSQL:  ${ready.database.source === 'embedded' ? `embedded, started and stopped by examples/postgres.ts (${dbUrl})` : `from DATABASE_URL (${dbUrl})`}`)

const problems = [
  result.failed > 0 ? `${plural(result.failed, 'request')} failed: ${JSON.stringify(result.failures)}` : '',
  exit.code !== 0 ? `the app exited with code ${exit.code}, not 0` : '',
  exitMs > report.deadlineMs ? `the app exited after its deadline (${exitMs} > ${report.deadlineMs} ms)` : ''
].filter(problem => problem !== '')
if (problems.length > 0) {
  for (const sample of result.samples) console.log(`  failed: ${sample.kind} ${sample.path} at +${sample.at} ms: ${sample.detail}`)
  fail(`FAIL: ${problems.join('; ')}`)
}
console.log(`\nPASS: 0 failed requests, exit code 0, ${report.deadlineMs - exitMs} ms before the deadline`)
