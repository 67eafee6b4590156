/**
 * What every benchmark server shares: the same routes, the same timing budget
 * (from the environment, so every library gets the same numbers), and the
 * `{ port }` handshake with bench/rolling.ts.
 */
import Fastify, { type FastifyInstance } from 'fastify'

/** SIGTERM → SIGKILL, the pod's terminationGracePeriodSeconds × 1000. */
export const GRACE_PERIOD = Number(process.env.BENCH_GRACE_PERIOD ?? 10_000)
/** How long to keep serving after SIGTERM, for the libraries that have (or are given) a delay. */
export const DRAIN_DELAY = Number(process.env.BENCH_DRAIN_DELAY ?? 1500)
/** Headroom before the SIGKILL, as the plugin's exitMargin. */
export const EXIT_MARGIN = 1000
/** What is left for in-flight requests once the delay is spent: every library's shutdown timeout. */
export const SHUTDOWN_TIMEOUT = GRACE_PERIOD - DRAIN_DELAY - EXIT_MARGIN

export function createApp (): FastifyInstance {
  // No request logs (they are info): at 500 req/s they would measure the logger, not the drain.
  const app = Fastify({ logger: { level: 'warn' } })
  app.get('/', async () => ({ hello: 'world' }))
  app.get<{ Querystring: { ms?: string } }>('/slow', async request => {
    await new Promise(resolve => setTimeout(resolve, Number(request.query.ms ?? 1000)))
    return { slow: true }
  })
  return app
}

export const sleep = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))

/** Listens on an ephemeral port, tells the parent, and lets go of the IPC channel so it keeps nothing alive. */
export async function listen (app: FastifyInstance): Promise<void> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  process.send?.({ port: typeof address === 'object' && address !== null ? address.port : 0 })
  process.channel?.unref()
}
