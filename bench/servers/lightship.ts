// lightship 7 (v9 needs Node 22): shutdownDelay DRAIN_DELAY, then its shutdown
// handler runs fastify.close() within SHUTDOWN_TIMEOUT. The 7.3.0 tarball ships
// its TypeScript source without dist/, so it is imported from src/ (tsx compiles it).
import { createLightship } from '../../node_modules/lightship/src/index.js'
import { createApp, DRAIN_DELAY, listen, SHUTDOWN_TIMEOUT } from './common.js'

const lightship = await createLightship({
  detectKubernetes: false, // otherwise, outside a cluster, it installs no signal handler at all
  port: 0, // its own probe server; several instances run side by side
  shutdownDelay: DRAIN_DELAY,
  gracefulShutdownTimeout: SHUTDOWN_TIMEOUT,
  shutdownHandlerTimeout: SHUTDOWN_TIMEOUT,
  signals: ['SIGTERM']
})
const app = createApp()
// HAProxy checks the app's port; this answers exactly what lightship's own /ready answers.
app.get('/readyz', async (_request, reply) => lightship.isServerReady()
  ? { status: 'ready' }
  : reply.code(503).send({ status: 'not ready' }))
lightship.registerShutdownHandler(async () => { await app.close() })
await listen(app)
lightship.signalReady()
