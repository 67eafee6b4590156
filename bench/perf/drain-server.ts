/**
 * The server of bench/drain.ts, one variant per process (VARIANT, see
 * variants.ts). Forked with IPC and `--expose-gc`:
 * - prints `{"port":n}` on stdout once it listens;
 * - `{ measure: true }` → replies `{ heap }` after two full GCs (memory per connection);
 * - tells the parent `{ slowArrived: { count, lastStartHr } }` once SLOW_EXPECTED slow requests are being handled;
 * - on SIGTERM, before the variant's own handler, records CPU time and RSS; on
 *   'exit' writes them, the CPU time at exit and the RSS high-water mark to
 *   RESULT_FILE (synchronously: nothing asynchronous runs after 'exit');
 * - with PROFILE=<file>, writes a CPU profile of the drain alone (SIGTERM → exit)
 *   there, for Chrome DevTools or `bench/perf/profile-top.ts`.
 */
import { readFileSync, writeFileSync } from 'node:fs'
import { Session } from 'node:inspector'
import Fastify, { type FastifyInstance } from 'fastify'
import { createHttpTerminator } from 'http-terminator'
import { createTerminus } from '@godaddy/terminus'
import { drainVariants, isBaseline, loadPlugin, type DrainVariant } from './variants.js'

const variant = process.env.VARIANT as DrainVariant
if (!(drainVariants as readonly string[]).includes(variant) && !isBaseline(variant)) throw new Error(`VARIANT must be one of ${drainVariants.join(', ')}; got ${variant}`)
const slowExpected = Number(process.env.SLOW_EXPECTED ?? 0)
const resultFile = process.env.RESULT_FILE as string
/** Big enough that "answered in full" means something: more than one TCP segment. */
const SLOW_BODY = JSON.stringify({ slow: true, padding: 'x'.repeat(16 * 1024) })

// The plugin logs its start line and report, as it would in production; the peers log nothing.
const plugin = variant === 'plugin' || isBaseline(variant)
const app: FastifyInstance = Fastify({ logger: plugin ? { level: 'info' } : false })
// drainDelay 0 alone: no delay means no delay, the quiet-period extension does not run either.
// A baseline from before the budget rework (0.1.0) needs quietPeriod 0 as well to skip it:
// given to every baseline, it changes nothing for one that needs it not.
if (plugin) await app.register(await loadPlugin(variant), isBaseline(variant) ? { drainDelay: 0, quietPeriod: 0 } : { drainDelay: 0 })

let slowArrived = 0
app.get('/', async () => ({ hello: 'world' }))
app.get<{ Querystring: { ms?: string } }>('/slow', async (request, reply) => {
  // The floor: the last slow request to arrive cannot be answered before its start + ms.
  if (++slowArrived === slowExpected) process.send?.({ slowArrived: { count: slowArrived, lastStartHr: Number(process.hrtime.bigint()) / 1e6 } })
  await new Promise(resolve => setTimeout(resolve, Number(request.query.ms ?? 500)))
  return reply.type('application/json').send(SLOW_BODY)
})
await app.ready()

// Each peer wired as its README shows, with its defaults, exiting when it is done.
if (variant === 'exit') process.on('SIGTERM', () => process.exit(0))
if (variant === 'destroy-all') process.on('SIGTERM', () => { app.server.closeAllConnections(); process.exit(0) })
if (variant === 'fastify.close()') process.on('SIGTERM', () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
if (variant === 'http-terminator') {
  const terminator = createHttpTerminator({ server: app.server })
  process.on('SIGTERM', () => { terminator.terminate().then(() => process.exit(0), () => process.exit(1)) })
}
if (variant === 'terminus') createTerminus(app.server, { signals: ['SIGTERM'], useExit0: true })

function rssHighWaterKb (): number {
  return Number(/VmHWM:\s*(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? NaN)
}

// An in-thread inspector session answers synchronously, so the profile can be taken in 'exit'.
const profiler = process.env.PROFILE === undefined ? undefined : new Session()
profiler?.connect()
profiler?.post('Profiler.enable')
profiler?.post('Profiler.setSamplingInterval', { interval: 100 })

let atSignal: { cpu: NodeJS.CpuUsage, rss: number, hr: number } | undefined
// Prepended after the plugin registered, so it neither sees a foreign listener nor runs after the drain began.
process.prependListener('SIGTERM', () => {
  if (atSignal !== undefined) return
  atSignal = { cpu: process.cpuUsage(), rss: process.memoryUsage.rss(), hr: Number(process.hrtime.bigint()) / 1e6 }
  profiler?.post('Profiler.start')
})
process.on('exit', code => {
  const cpu = process.cpuUsage(atSignal?.cpu)
  profiler?.post('Profiler.stop', (error, result) => {
    if (error === null) writeFileSync(process.env.PROFILE as string, JSON.stringify(result.profile))
  })
  writeFileSync(resultFile, JSON.stringify({
    code,
    exitHr: Number(process.hrtime.bigint()) / 1e6,
    signalHr: atSignal?.hr,
    cpuMs: (cpu.user + cpu.system) / 1000,
    rssAtSignal: atSignal?.rss,
    rssPeakKb: rssHighWaterKb()
  }))
})

process.on('message', (message: { measure?: boolean }) => {
  if (message.measure !== true) return
  const gc = (globalThis as { gc?: () => void }).gc
  gc?.()
  gc?.()
  const memory = process.memoryUsage()
  process.send?.({ heap: memory.heapUsed + memory.external, rss: memory.rss })
})

await app.listen({ port: 0, host: '127.0.0.1' })
const address = app.server.address()
process.stdout.write(JSON.stringify({ port: typeof address === 'object' && address !== null ? address.port : 0 }) + '\n')
