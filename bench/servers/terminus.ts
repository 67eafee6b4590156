// @godaddy/terminus with a delay: readiness fails at SIGTERM (its health
// checks answer 503 during shutdown), beforeShutdown waits DRAIN_DELAY, then
// stoppable closes the server with SHUTDOWN_TIMEOUT for in-flight requests.
// Exit behaviour is terminus' default: it re-raises the signal.
import { createTerminus } from '@godaddy/terminus'
import { createApp, DRAIN_DELAY, listen, SHUTDOWN_TIMEOUT, sleep } from './common.js'

const app = createApp()
createTerminus(app.server, {
  signals: ['SIGTERM'],
  healthChecks: { '/readyz': async () => {} },
  beforeShutdown: () => sleep(DRAIN_DELAY),
  timeout: SHUTDOWN_TIMEOUT
})
await listen(app)
