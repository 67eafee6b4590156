/**
 * The smallest useful app: register the plugin first, add routes, listen.
 * On SIGTERM, /readyz fails at once, requests keep being served for
 * `drainDelay`, every response asks keep-alive clients to reconnect elsewhere,
 * in-flight requests finish, and the process exits 0 before the grace period.
 *
 *   node --import tsx examples/basic.ts
 *   curl localhost:3000/ ; curl localhost:3000/readyz ; kill -TERM <pid>
 *
 * Environment: PORT (3000), HOST (127.0.0.1; 0.0.0.0 in a container),
 * DRAIN_DELAY_MS (the plugin's default, 5000), GRACE_PERIOD_MS (30000, the pod's
 * terminationGracePeriodSeconds × 1000).
 */
import Fastify from 'fastify'
import gracefulDrain from 'fastify-graceful-drain'

const ms = (name: string): number | undefined => process.env[name] === undefined ? undefined : Number(process.env[name])

const app = Fastify({ logger: true })
// Options left undefined take the plugin's defaults; bad values fail here, with the option named.
await app.register(gracefulDrain, { drainDelay: ms('DRAIN_DELAY_MS'), gracePeriod: ms('GRACE_PERIOD_MS') })

app.get('/', async () => ({ hello: 'world' }))

await app.listen({ port: Number(process.env.PORT ?? 3000), host: process.env.HOST ?? '127.0.0.1' })
// When started by a test or the demo (fork with IPC): say which port the OS gave us.
const address = app.server.address()
process.send?.({ port: typeof address === 'object' && address !== null ? address.port : undefined })
