// Rolling restarts through a real HAProxy, for this plugin and the libraries
// users would pick instead, at equal timing budgets (bench/servers/common.ts).
// The scenario is test/rolling.test.ts's (test/helpers/rolling.ts): load over
// 128 keep-alive connections, 10 % slow requests (0.2–2 s), rollovers A→B→C,
// endpoint removal shortly after SIGTERM, health checks on /readyz, SIGKILL at
// the grace period. Prints one markdown table.
//
//   npm run bench:rolling                 full matrix, two rollovers per run (~11 min on 2 cores)
//   npm run bench:rolling -- --quick      one rollover per run (~6 min)
//   npm run bench:rolling -- --servers=plugin,terminus --scenarios=tcp-150,http-late

import { fork, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { haproxyAvailable } from '../test/helpers/haproxy.js'
import type { HealthCheckOptions, LbMode } from '../test/helpers/haproxy.js'
import { FAILURE_COLUMNS, failureColumn, runRolling } from '../test/helpers/rolling.js'
import type { FailureColumn, Instance, RollingResult } from '../test/helpers/rolling.js'

const GRACE_PERIOD = 10_000

const SERVERS: Record<string, string> = {
  none: 'no handling',
  'close-with-grace': '`fastify.close()` via close-with-grace',
  'graceful-shutdown': 'fastify-graceful-shutdown',
  terminus: 'terminus + delay',
  lightship: 'lightship 7',
  'http-terminator': 'http-terminator + readiness flip + delay',
  plugin: '**fastify-graceful-drain**'
}

interface Scenario {
  key: string
  title: string
  mode: LbMode
  rate: number
  drainDelay: number
  maintAfterMs: number
  healthCheck: HealthCheckOptions
}

const SCENARIOS: Scenario[] = []
for (const mode of ['tcp', 'http'] as LbMode[]) {
  for (const rate of [150, 500]) {
    SCENARIOS.push({
      key: `${mode}-${rate}`,
      title: `${mode} mode, ${rate} req/s`,
      mode,
      rate,
      drainDelay: 1500,
      maintAfterMs: 300,
      healthCheck: { path: '/readyz', interMs: 500, fall: 2, rise: 2 }
    })
  }
}
for (const mode of ['tcp', 'http'] as LbMode[]) {
  SCENARIOS.push({
    key: `${mode}-late`,
    title: `${mode} mode, late load balancer`,
    mode,
    rate: 150,
    drainDelay: 1000,
    maintAfterMs: 3000,
    healthCheck: { path: '/readyz', interMs: 2000, fall: 2, rise: 2 }
  })
}

function arg (name: string): string | undefined {
  const prefix = `--${name}=`
  return process.argv.find(a => a.startsWith(prefix))?.slice(prefix.length)
}
const quick = process.argv.includes('--quick')
const serverKeys = arg('servers')?.split(',') ?? Object.keys(SERVERS)
const scenarioKeys = arg('scenarios')?.split(',') ?? SCENARIOS.map(s => s.key)
for (const key of serverKeys) if (SERVERS[key] === undefined) throw new Error(`unknown server ${key}: ${Object.keys(SERVERS).join(', ')}`)
for (const key of scenarioKeys) if (!SCENARIOS.some(s => s.key === key)) throw new Error(`unknown scenario ${key}: ${SCENARIOS.map(s => s.key).join(', ')}`)

// Ctrl-C must not leave servers behind: they let go of their IPC channel, so
// nothing else would end them (HAProxy dies with us through its pdeathsig).
const children = new Set<ChildProcess>()
process.on('exit', () => { for (const child of children) child.kill('SIGKILL') })
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130))

/** Forks bench/servers/<name>.ts and waits for its `{ port }`. */
async function startServer (name: string, drainDelay: number): Promise<Instance> {
  const child = fork(fileURLToPath(new URL(`./servers/${name}.ts`, import.meta.url)), {
    execArgv: ['--import', 'tsx'],
    env: { ...process.env, BENCH_GRACE_PERIOD: String(GRACE_PERIOD), BENCH_DRAIN_DELAY: String(drainDelay) },
    stdio: ['ignore', 'ignore', 'inherit', 'ipc']
  })
  children.add(child)
  child.once('exit', () => children.delete(child))
  let killedAt: number | undefined
  const exited = once(child, 'exit').then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
    ms: killedAt === undefined ? NaN : performance.now() - killedAt
  }))
  const port = await new Promise<number>((resolve, reject) => {
    child.once('message', (m: { port?: unknown }) => typeof m.port === 'number' ? resolve(m.port) : reject(new Error(`bad handshake from ${name}`)))
    exited.then(({ code }) => reject(new Error(`${name} exited with ${code} before listening`)), reject)
  })
  return {
    port,
    exited,
    kill (signal) {
      killedAt ??= performance.now()
      child.kill(signal)
    }
  }
}

interface Row { server: string, result: RollingResult }

function exitText (exit: RollingResult['exits'][number]): string {
  if (exit.killed) return 'SIGKILL'
  return exit.code !== null ? String(exit.code) : String(exit.signal)
}

function table (rows: Row[]): string {
  const lines = [
    '| server | requests | failed | 503 from the app | refused¹ | reset | closed² | 502 | timeout³ | other | exit | SIGTERM→exit |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |'
  ]
  for (const { server, result } of rows) {
    const by: Record<FailureColumn, number> = { 503: 0, refused: 0, reset: 0, closed: 0, 502: 0, timeout: 0, other: 0 }
    for (const [kind, count] of Object.entries(result.load.failures)) by[failureColumn(kind)] += count
    const failed = result.load.failed === 0 ? '**0**' : String(result.load.failed)
    const exits = result.exits.map(exitText).join(', ')
    const times = result.exits.map(e => `${(e.ms / 1000).toFixed(1)} s`).join(', ')
    lines.push(`| ${SERVERS[server]} | ${result.load.sent} | ${failed} | ${FAILURE_COLUMNS.map(c => by[c] === 0 ? '' : String(by[c])).join(' | ')} | ${exits} | ${times} |`)
  }
  return lines.join('\n')
}

if (!haproxyAvailable()) {
  console.error('haproxy binary not found: install the Debian/Ubuntu package `haproxy` (apt-get install -y haproxy)')
  process.exit(1)
}

const rollovers = quick ? 1 : 2
console.log(`# Rolling restarts through HAProxy — ${new Date().toISOString()}, Node ${process.version}, ${rollovers} rollover(s) per run, grace period ${GRACE_PERIOD / 1000} s\n`)
for (const scenario of SCENARIOS.filter(s => scenarioKeys.includes(s.key))) {
  const rows: Row[] = []
  for (const server of serverKeys) {
    process.stderr.write(`${scenario.key} ${server} … `)
    const result = await runRolling({
      mode: scenario.mode,
      rate: scenario.rate,
      maintAfterMs: scenario.maintAfterMs,
      healthCheck: scenario.healthCheck,
      gracePeriod: GRACE_PERIOD,
      rollovers,
      start: () => startServer(server, scenario.drainDelay)
    })
    process.stderr.write(`${result.load.failed} failed ${JSON.stringify(result.load.failures)}\n`)
    rows.push({ server, result })
  }
  const hc = scenario.healthCheck
  console.log(`## ${scenario.title}\n\nendpoint removal ${scenario.maintAfterMs} ms after SIGTERM, health checks every ${hc.interMs} ms (fall ${hc.fall}), ` +
    `delay ${scenario.drainDelay} ms\n\n${table(rows)}\n`)
}
console.log([
  '¹ In http mode HAProxy (`retries 0`) answers its own 503 when the backend refuses the connection; those are counted here, not as the app\'s 503.',
  '² The client\'s connection closed without a response: an in-flight request cut, a keep-alive socket closed under a request (the idle-socket race),',
  '  or, in tcp mode, HAProxy closing the client connection because the backend refused it.',
  '³ No response within 10 s.',
  'exit: the exit code, the signal that ended the process, or SIGKILL when the grace period ran out; one entry per rollover.'
].join('\n'))
