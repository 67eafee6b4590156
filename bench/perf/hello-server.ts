/**
 * The hello-world server of bench/overhead.ts, one variant per process:
 * `VARIANT=bare|plugin|http-terminator|terminus|close-with-grace|naive-hooks|bare-again`.
 * It prints `{"port":n}` on stdout once it listens, answers any IPC message
 * with its CPU time so far, and runs until killed.
 * Nothing here logs: a logger would cost more than what is being measured.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import { createHttpTerminator } from 'http-terminator'
import { createTerminus } from '@godaddy/terminus'
import closeWithGrace from 'close-with-grace'

import { helloVariants as variants, isBaseline, loadPlugin, type HelloVariant as Variant } from './variants.js'

/** Each peer set up the way its README says, with its defaults, around the same app. */
async function build (variant: Variant): Promise<FastifyInstance> {
  const app = Fastify({ logger: false })
  if (variant === 'plugin' || isBaseline(variant)) await app.register(await loadPlugin(variant))
  if (variant === 'naive-hooks') {
    // The hand-written in-flight counter most apps start with: two hooks and a closure per request.
    let inFlight = 0
    app.decorate('inFlight', () => inFlight)
    app.addHook('onRequest', async () => { inFlight++ })
    app.addHook('onResponse', async () => { inFlight-- })
  }
  app.get('/', async () => ({ hello: 'world' }))
  await app.ready()
  if (variant === 'http-terminator') createHttpTerminator({ server: app.server })
  if (variant === 'terminus') {
    createTerminus(app.server, { healthChecks: { '/healthz': async () => 'ok' }, onSignal: () => app.close() })
  }
  if (variant === 'close-with-grace') closeWithGrace({ delay: 10_000 }, async () => { await app.close() })
  return app
}

// CPU time is what a shared machine distorts least: the parent reads it around each wrk run.
process.on('message', () => { process.send?.({ cpu: process.cpuUsage() }) })

const variant = process.env.VARIANT as Variant
if (!(variants as readonly string[]).includes(variant) && !isBaseline(variant)) throw new Error(`VARIANT must be one of ${variants.join(', ')} or baseline:<name>; got ${variant}`)
const app = await build(variant)
// Lets `node --cpu-prof` write its profile on Ctrl-C for the variants that own no signal.
if (process.listenerCount('SIGINT') === 0) process.once('SIGINT', () => process.exit(0))
await app.listen({ port: 0, host: '127.0.0.1' })
const address = app.server.address()
process.stdout.write(JSON.stringify({ port: typeof address === 'object' && address !== null ? address.port : 0 }) + '\n')
