/**
 * The app deployed by deployment.yaml: the plugin with a health port, the
 * preStop endpoint, a readiness check and a startup task.
 *
 *   node --import tsx examples/kubernetes/app.ts
 *   curl localhost:9000/readyz ; curl localhost:3000/ ; curl localhost:9000/prestop
 *
 * Environment: PORT and HEALTH_PORT override the ports (tests pass 0), HOST
 * (0.0.0.0, as in a container).
 */
import Fastify, { type FastifyInstance } from 'fastify'
import { setTimeout as sleep } from 'node:timers/promises'
import { pathToFileURL } from 'node:url'
import gracefulDrain, { type GracefulDrainOptions } from 'fastify-graceful-drain'
import { drainOptions, port } from './options.js'

export async function buildApp (overrides: GracefulDrainOptions = {}, logger = true): Promise<FastifyInstance> {
  const app = Fastify({ logger })
  // The work queue this pod consumes; a stand-in for a local resource the pod cannot serve without.
  const queue = { connected: false }

  await app.register(gracefulDrain, {
    ...drainOptions,
    readiness: {
      ...drainOptions.readiness,
      // Check what this pod needs and other pods do not share: a database that is down for
      // every pod would take every pod out of the Service at once, which helps nobody.
      checks: { queue: () => queue.connected }
    },
    ...overrides
  })

  // Readiness says 'starting' until this resolves: the startup probe waits for it.
  app.drain.startupTask('queue connection', sleep(100).then(() => { queue.connected = true }))

  app.get('/', async () => ({ hello: 'world' }))
  return app
}

// Run directly (not imported by a test): listen, and say which port the OS gave us to a parent with IPC.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const ports = (name: string, fallback: number): number => Number(process.env[name] ?? fallback)
  const app = await buildApp({ healthPort: ports('HEALTH_PORT', drainOptions.healthPort) })
  await app.listen({ port: ports('PORT', port), host: process.env.HOST ?? '0.0.0.0' })
  const address = app.server.address()
  process.send?.({ port: typeof address === 'object' && address !== null ? address.port : undefined, healthPort: app.drain.healthPort })
}
