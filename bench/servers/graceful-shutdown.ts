// fastify-graceful-shutdown: fastify.close() on SIGTERM with its own timer,
// set to the whole grace period less the exit margin.
import gracefulShutdown from 'fastify-graceful-shutdown'
import { createApp, EXIT_MARGIN, GRACE_PERIOD, listen } from './common.js'

const app = createApp()
await app.register(gracefulShutdown, { timeout: GRACE_PERIOD - EXIT_MARGIN })
app.get('/readyz', async () => ({ status: 'ready' }))
await listen(app)
