// Rolling restarts through a real HAProxy and a real nginx, for this plugin
// and the libraries users would pick instead, at equal timing budgets
// (bench/servers/common.ts). The scenarios are test/rolling.test.ts's and
// test/rolling-nginx.test.ts's (scripts/support/rolling.ts): load over 128
// keep-alive connections, 10 % slow requests (0.2–2 s), rollovers A→B→C,
// endpoint removal shortly after SIGTERM (HAProxy: `maint`, plus health
// checks on /readyz; nginx: a reload), SIGKILL at the grace period. Prints one
// markdown table per scenario.
//
//   npm run bench:rolling                 HAProxy matrix, two rollovers per run (~11 min on 2 cores)
//   npm run bench:rolling -- --lb=nginx   nginx matrix (~16 min); --lb=haproxy,nginx for both
//   npm run bench:rolling -- --quick      one rollover per run
//   npm run bench:rolling -- --servers=plugin,terminus --scenarios=tcp-150,http-late,nginx-late

import { fork, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { haproxyAvailable } from '../scripts/support/haproxy.js'
import type { HealthCheckOptions, LbMode } from '../scripts/support/haproxy.js'
import { nginxAvailable, nginxBalancer, nginxVersion } from '../scripts/support/nginx.js'
import type { NginxVerdict } from '../scripts/support/nginx.js'
import { FAILURE_COLUMNS, failureColumn, runRolling } from '../scripts/support/rolling.js'
import type { FailureColumn, Instance, RollingResult } from '../scripts/support/rolling.js'

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

type Scenario = {
  key: string
  title: string
  rate: number
  drainDelay: number
  maintAfterMs: number
} & ({ lb: 'haproxy', mode: LbMode, healthCheck: HealthCheckOptions } | { lb: 'nginx', retries: boolean })

const SCENARIOS: Scenario[] = []
for (const mode of ['tcp', 'http'] as LbMode[]) {
  for (const rate of [150, 500]) {
    SCENARIOS.push({
      key: `${mode}-${rate}`,
      title: `${mode} mode, ${rate} req/s`,
      lb: 'haproxy',
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
    lb: 'haproxy',
    mode,
    rate: 150,
    drainDelay: 1000,
    maintAfterMs: 3000,
    healthCheck: { path: '/readyz', interMs: 2000, fall: 2, rise: 2 }
  })
}
// nginx: no health checks, the removal is a reload; retries off (every failure
// counts) and nginx's default `proxy_next_upstream error timeout` (what retries hide).
for (const retries of [false, true]) {
  const prefix = retries ? 'nginx-retries' : 'nginx'
  const label = retries ? 'nginx, default retries' : 'nginx, retries off'
  for (const rate of [150, 500]) {
    SCENARIOS.push({ key: `${prefix}-${rate}`, title: `${label}, ${rate} req/s`, lb: 'nginx', retries, rate, drainDelay: 1500, maintAfterMs: 300 })
  }
  SCENARIOS.push({ key: `${prefix}-late`, title: `${label}, late reload`, lb: 'nginx', retries, rate: 150, drainDelay: 1000, maintAfterMs: 3000 })
}

function arg (name: string): string | undefined {
  const prefix = `--${name}=`
  return process.argv.find(a => a.startsWith(prefix))?.slice(prefix.length)
}
const quick = process.argv.includes('--quick')
// HAProxy alone by default, as before nginx was added (bench/README.md's command for its tables)
const lbs = arg('lb')?.split(',') ?? ['haproxy']
const serverKeys = arg('servers')?.split(',') ?? Object.keys(SERVERS)
const scenarioKeys = arg('scenarios')?.split(',') ?? SCENARIOS.filter(s => lbs.includes(s.lb)).map(s => s.key)
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

interface Row { server: string, result: RollingResult<NginxVerdict | undefined> }

function exitText (exit: RollingResult['exits'][number]): string {
  if (exit.killed) return 'SIGKILL'
  return exit.code !== null ? String(exit.code) : String(exit.signal)
}

function exitColumns (result: Row['result']): string {
  return `${result.exits.map(exitText).join(', ')} | ${result.exits.map(e => `${(e.ms / 1000).toFixed(1)} s`).join(', ')}`
}

/**
 * nginx's table sorts each failure by its access log (scripts/support/nginx.ts):
 * what it answered for a request it read, or a reload artefact for a request
 * it never read on a client connection that closed under it.
 */
function nginxTable (rows: Row[]): string {
  const lines = [
    '| server | requests | failed | 503 from the app | 502⁴ | 504 | other⁵ | nginx\'s upstream errors⁶ | reload artefacts⁷ | retried⁸ | exit | SIGTERM→exit |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | --- |'
  ]
  const cell = (n: number): string => n === 0 ? '' : String(n)
  for (const { server, result } of rows) {
    const verdict = result.balancer
    if (verdict === undefined) throw new Error('nginx made no report')
    const by = { 503: 0, 502: 0, 504: 0, other: 0 }
    for (const f of verdict.failures) {
      const status = f.logged?.status
      if (status === 503 || status === 502 || status === 504) by[status]++
      else by.other++
    }
    const failed = verdict.failures.length === 0 ? '**0**' : String(verdict.failures.length)
    const errors = Object.entries(verdict.upstreamErrors).map(([kind, n]) => `${kind} ${n}`).join(', ')
    lines.push(`| ${SERVERS[server]} | ${result.load.sent} | ${failed} | ${cell(by[503])} | ${cell(by[502])} | ${cell(by[504])} | ${cell(by.other)} | ` +
      `${errors} | ${cell(verdict.reloadArtefacts.length)} | ${cell(verdict.retried)} | ${exitColumns(result)} |`)
  }
  return lines.join('\n')
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
    lines.push(`| ${SERVERS[server]} | ${result.load.sent} | ${failed} | ${FAILURE_COLUMNS.map(c => by[c] === 0 ? '' : String(by[c])).join(' | ')} | ${exitColumns(result)} |`)
  }
  return lines.join('\n')
}

const selected = SCENARIOS.filter(s => scenarioKeys.includes(s.key))
if (selected.some(s => s.lb === 'haproxy') && !haproxyAvailable()) {
  console.error('haproxy binary not found: install the Debian/Ubuntu package `haproxy` (apt-get install -y haproxy)')
  process.exit(1)
}
if (selected.some(s => s.lb === 'nginx') && !nginxAvailable()) {
  console.error('nginx binary not found: install the Debian/Ubuntu package `nginx` (apt-get install -y nginx)')
  process.exit(1)
}

const rollovers = quick ? 1 : 2
const balancers = [...new Set(selected.map(s => s.lb === 'nginx' ? `nginx ${nginxVersion() ?? ''}`.trim() : 'HAProxy'))].join(' and ')
console.log(`# Rolling restarts through ${balancers} — ${new Date().toISOString()}, Node ${process.version}, ${rollovers} rollover(s) per run, grace period ${GRACE_PERIOD / 1000} s\n`)
for (const scenario of selected) {
  const rows: Row[] = []
  for (const server of serverKeys) {
    process.stderr.write(`${scenario.key} ${server} … `)
    const result: Row['result'] = await runRolling<NginxVerdict | undefined>({
      rate: scenario.rate,
      maintAfterMs: scenario.maintAfterMs,
      gracePeriod: GRACE_PERIOD,
      rollovers,
      start: () => startServer(server, scenario.drainDelay),
      ...(scenario.lb === 'haproxy'
        ? { mode: scenario.mode, healthCheck: scenario.healthCheck }
        : { balancer: async () => await nginxBalancer({ retries: scenario.retries }) })
    })
    const artefacts = result.balancer === undefined ? '' : `, ${result.balancer.reloadArtefacts.length} reload artefacts, ${result.balancer.retried} retried`
    process.stderr.write(`${result.load.failed} failed ${JSON.stringify(result.load.failures)}${artefacts}\n`)
    rows.push({ server, result })
  }
  if (scenario.lb === 'haproxy') {
    const hc = scenario.healthCheck
    console.log(`## ${scenario.title}\n\nendpoint removal ${scenario.maintAfterMs} ms after SIGTERM, health checks every ${hc.interMs} ms (fall ${hc.fall}), ` +
      `delay ${scenario.drainDelay} ms\n\n${table(rows)}\n`)
  } else {
    console.log(`## ${scenario.title}\n\nreload without the old instance ${scenario.maintAfterMs} ms after SIGTERM, ` +
      `\`proxy_next_upstream ${scenario.retries ? 'error timeout' : 'off'}\`, delay ${scenario.drainDelay} ms\n\n${nginxTable(rows)}\n`)
  }
}
const notes = []
if (selected.some(s => s.lb === 'haproxy')) {
  notes.push(
    '¹ In http mode HAProxy (`retries 0`) answers its own 503 when the backend refuses the connection; those are counted here, not as the app\'s 503.',
    '² The client\'s connection closed without a response: an in-flight request cut, a keep-alive socket closed under a request (the idle-socket race),',
    '  or, in tcp mode, HAProxy closing the client connection because the backend refused it.',
    '³ No response within 10 s.'
  )
}
if (selected.some(s => s.lb === 'nginx')) {
  notes.push(
    '⁴ nginx\'s own 502: the app refused the connection, reset it or closed it without a response (with retries, after the last try).',
    '⁵ Not answered by nginx: a timeout (10 s), or a lost connection that nginx did log.',
    '⁶ What nginx\'s error log says went wrong towards the app (retried attempts included): refused, reset, closed (prematurely), timeout.',
    '⁷ Not failures: the client↔nginx keep-alive connection closed under a request that nginx never read (no access-log line for its id);',
    '  a reload closes the old workers\' idle client connections. No app is involved; counted apart from "failed".',
    '⁸ Answered 200 after nginx tried more than one upstream: a failure that retries hid.'
  )
}
notes.push('exit: the exit code, the signal that ended the process, or SIGKILL when the grace period ran out; one entry per rollover.')
console.log(notes.join('\n'))
