// fastify-graceful-drain with the same budget: drainDelay DRAIN_DELAY (the
// minimum; the quiet period may extend it), closeTimeout 2 s (no closers
// here), the rest for in-flight requests. Everything else is the default.
import gracefulDrain from 'fastify-graceful-drain'
import { createApp, DRAIN_DELAY, EXIT_MARGIN, GRACE_PERIOD, listen } from './common.js'

const app = createApp()
await app.register(gracefulDrain, { gracePeriod: GRACE_PERIOD, drainDelay: DRAIN_DELAY, exitMargin: EXIT_MARGIN, closeTimeout: 2000 })
await listen(app)
