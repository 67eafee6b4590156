// fastify.close() on SIGTERM via close-with-grace (what fastify-cli does), its
// timer set to the whole grace period less the exit margin.
import closeWithGrace from 'close-with-grace'
import { createApp, EXIT_MARGIN, GRACE_PERIOD, listen } from './common.js'

const app = createApp()
// A static readiness route: once close() runs, Fastify answers it 503 like everything else.
app.get('/readyz', async () => ({ status: 'ready' }))
closeWithGrace({ delay: GRACE_PERIOD - EXIT_MARGIN }, async () => { await app.close() })
await listen(app)
