/**
 * Per-request cost of the plugin: hello-world GET on Fastify 5, bare and with
 * each peer that sits in the request path, driven by wrk from another process.
 *
 *   npm run bench:overhead [-- --rounds 5 --duration 3 --connections 50 --pause 1]
 *
 * Every variant runs in its own server process, pinned to core 0; wrk is
 * pinned to the last core. Each round starts new server processes and warms
 * them up (--same-processes keeps the first ones), then runs every variant in a rotated order (reversed every other round, with
 * a pause before each run), first with keep-alive, then with a new connection
 * per request (`Connection: close`). A variant's figure is the
 * median over rounds of its req/s divided by bare's in the same round, so
 * drift on a shared machine hits all variants alike, with a bootstrap 95 %
 * interval for that median; `bare-again`, a second bare server, is the A/A
 * control (what two identical servers measure apart in this run).
 */
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import { machine, median, medianInterval, pinning, pinned, startNode, stop, table, version, type Started } from './perf/processes.js'
import { helloVariants as variants, withBaseline, type HelloVariant as Variant } from './perf/variants.js'

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    duration: { type: 'string', default: '3' },
    warmup: { type: 'string', default: '2' },
    /** Seconds of rest before each run, for the previous server's after-work to settle. */
    pause: { type: 'string', default: '1' },
    connections: { type: 'string', default: '50' },
    /** Keep the same server processes for every round (faster, but each process's own bias stays in). */
    'same-processes': { type: 'boolean', default: false },
    variants: { type: 'string', default: variants.join(',') },
    /** Checkouts with a built dist/ (comma-separated) to measure as `baseline:<dir name>` beside this tree's plugin. */
    baseline: { type: 'string' }
  }
})
const rounds = Number(args.rounds)
const duration = Number(args.duration)
const connections = Number(args.connections)
const chosen = withBaseline(args.variants.split(',') as Variant[], args.baseline)
if (chosen[0] !== 'bare') throw new Error('--variants must start with bare: every ratio is to bare')

const here = fileURLToPath(new URL('.', import.meta.url))
const modes = ['keep-alive', 'new connection'] as const
type Mode = typeof modes[number]

interface Sample { rps: number, p50: number, p99: number, errors: number, cpuUs: number }

if (spawnSync('wrk', ['-v']).error !== undefined) {
  console.error('wrk is not installed: apt-get install -y wrk (Debian/Ubuntu) or brew install wrk')
  process.exit(1)
}

/** The server's CPU time so far, in µs. */
async function cpuTime (server: Started): Promise<number> {
  const reply = once(server.child, 'message')
  server.child.send('cpu')
  const [{ cpu }] = await reply as [{ cpu: NodeJS.CpuUsage }]
  return cpu.user + cpu.system
}

/** One wrk run against `server`; latency in ms, server CPU per request in µs. */
async function wrk (cpus: string | undefined, server: Started, mode: Mode, seconds: number): Promise<Sample> {
  const port = server.hello.port as number
  const cpuBefore = await cpuTime(server)
  const headers = mode === 'new connection' ? ['-H', 'Connection: close'] : []
  const [command, wrkArgs] = pinned(cpus, 'wrk', ['-t1', `-c${connections}`, `-d${seconds}s`, '-s', here + 'perf/wrk-report.lua',
    ...headers, `http://127.0.0.1:${port}/`])
  const child = spawn(command, wrkArgs, { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { out += chunk })
  await once(child, 'exit')
  const json = /WRK_JSON (.*)/.exec(out)?.[1]
  if (json === undefined) throw new Error(`wrk printed no figures:\n${out}`)
  const r = JSON.parse(json) as Record<string, number>
  const errors = (r.connect ?? 0) + (r.read ?? 0) + (r.write ?? 0) + (r.status ?? 0) + (r.timeout ?? 0)
  const cpuUs = ((await cpuTime(server)) - cpuBefore) / (r.requests as number)
  return { rps: (r.requests as number) / ((r.durationUs as number) / 1e6), p50: (r.p50Us as number) / 1000, p99: (r.p99Us as number) / 1000, errors, cpuUs }
}

const cores = pinning()
const servers = new Map<Variant, Started>()
const stopAll = async (): Promise<void> => { await Promise.all([...servers.values()].map(s => stop(s.child))) }
process.once('SIGINT', () => { stopAll().finally(() => process.exit(130)) })

const header = `${new Date().toISOString()} · ${machine()}\n` +
  `fastify ${version('fastify')}, fastify-graceful-drain ${JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version}, ` +
  `http-terminator ${version('http-terminator')}, @godaddy/terminus ${version('@godaddy/terminus')}, close-with-grace ${version('close-with-grace')}, ` +
  `wrk ${spawnSync('wrk', ['-v']).stdout.toString().split('\n')[0]?.split(' ')[1] ?? '?'}\n` +
  `${rounds} rounds × ${duration} s per variant and mode (${args['same-processes'] ? 'the same server processes throughout' : 'new server processes every round, each warmed up'}; order rotated, reversed every other round, ${args.pause} s pause before each run), ${connections} connections, ` +
  (cores === undefined ? 'NOT pinned (fewer than 2 cores or no taskset): figures are noisier' : `server on core ${cores.server}, wrk on core ${cores.load}`)
console.log(header)

const samples = new Map<string, Sample[]>()
const key = (variant: Variant, mode: Mode): string => `${variant}/${mode}`
const startAll = async (): Promise<void> => {
  for (const variant of chosen) {
    servers.set(variant, await startNode(here + 'perf/hello-server.ts', { cpus: cores?.server, env: { VARIANT: variant, NODE_ENV: 'production', BASELINE_DIRS: args.baseline ?? '' }, ipc: true }))
  }
  // JIT and connection pools warm before anything counts.
  for (const variant of chosen) {
    for (const mode of modes) await wrk(cores?.load, servers.get(variant) as Started, mode, Number(args.warmup))
  }
}
try {
  for (let round = 0; round < rounds; round++) {
    // New processes every round (unless --same-processes): two identical bare servers
    // measured 2–3 % apart over a whole run, with 95 % intervals excluding 1, and the
    // plugin "6 % faster than bare": a process's own luck (memory layout, JIT choices)
    // lasts as long as the process, so only new processes average it out.
    if (round === 0 || !args['same-processes']) {
      await stopAll()
      servers.clear()
      await startAll()
    }
    // Rotated, and reversed every other round: a server keeps working (GC, JIT) for a
    // moment after its load stops, which slows whichever variant runs next; with a plain
    // rotation the plugin, always right after bare, measured 0.85–0.96 of bare in every
    // round, and 0.96–1.05 when listed last.
    const rotated = chosen.map((_, i) => chosen[(i + round) % chosen.length] as Variant)
    const order = round % 2 === 0 ? rotated : rotated.reverse()
    for (const mode of modes) {
      for (const variant of order) {
        await sleep(Number(args.pause) * 1000)
        const sample = await wrk(cores?.load, servers.get(variant) as Started, mode, duration)
        const list = samples.get(key(variant, mode)) ?? []
        list.push(sample)
        samples.set(key(variant, mode), list)
      }
    }
    process.stderr.write(`round ${round + 1}/${rounds} done\n`)
  }
} finally {
  await stopAll()
}

for (const mode of modes) {
  const bare = samples.get(key('bare', mode)) ?? []
  const rows = chosen.map(variant => {
    const list = samples.get(key(variant, mode)) ?? []
    const ratios = list.map((s, i) => s.rps / (bare[i] as Sample).rps)
    const cpuRatios = list.map((s, i) => s.cpuUs / (bare[i] as Sample).cpuUs)
    const errors = list.reduce((sum, s) => sum + s.errors, 0)
    const [low, high] = medianInterval(ratios)
    const p99Ratios = list.map((s, i) => s.p99 / (bare[i] as Sample).p99)
    const [p99Low, p99High] = medianInterval(p99Ratios)
    return [
      variant,
      median(list.map(s => s.rps)).toFixed(0),
      median(ratios).toFixed(3),
      `${low.toFixed(3)}–${high.toFixed(3)}`,
      `${Math.min(...ratios).toFixed(3)}–${Math.max(...ratios).toFixed(3)}`,
      median(list.map(s => s.p50)).toFixed(2),
      median(list.map(s => s.p99)).toFixed(2),
      `${median(p99Ratios).toFixed(2)} (${p99Low.toFixed(2)}–${p99High.toFixed(2)})`,
      median(list.map(s => s.cpuUs)).toFixed(1),
      `${median(cpuRatios).toFixed(3)} (${Math.min(...cpuRatios).toFixed(3)}–${Math.max(...cpuRatios).toFixed(3)})`,
      errors
    ]
  })
  const bareRps = bare.map(s => s.rps)
  const drift = (Math.max(...bareRps) / Math.min(...bareRps) - 1) * 100
  console.log(`\n### ${mode}${mode === 'new connection' ? ' (Connection: close on every request)' : ''}\n`)
  console.log(table(['variant', 'req/s (median)', 'ratio to bare (median)', 'its 95 % interval', 'ratio range over rounds', 'p50 ms', 'p99 ms', 'p99 to bare (95 % interval)', 'server CPU µs/req', 'CPU/req to bare (range)', 'errors'], rows))
  console.log(`\nnoise: bare alone moved ${drift.toFixed(1)} % between rounds (min ${Math.min(...bareRps).toFixed(0)}, max ${Math.max(...bareRps).toFixed(0)} req/s)`)
}
console.log(`\nload average at the end: ${machine().split('load average ')[1]}`)
