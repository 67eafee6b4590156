// http-terminator with a readiness flip and a delay wired by hand: /readyz
// answers 503 from SIGTERM, the server keeps serving for DRAIN_DELAY, then
// http-terminator ends the connections (SHUTDOWN_TIMEOUT for in-flight
// requests), fastify.close() runs the hooks, and the process exits 0.
import { createHttpTerminator } from 'http-terminator'
import { createApp, DRAIN_DELAY, listen, SHUTDOWN_TIMEOUT, sleep } from './common.js'

const app = createApp()
let ready = true
app.get('/readyz', async (_request, reply) => ready ? { status: 'ready' } : reply.code(503).send({ status: 'draining' }))
const terminator = createHttpTerminator({ server: app.server, gracefulTerminationTimeout: SHUTDOWN_TIMEOUT })
process.once('SIGTERM', () => {
  ready = false
  sleep(DRAIN_DELAY)
    .then(() => terminator.terminate())
    .then(() => app.close())
    .then(() => process.exit(0), () => process.exit(1))
})
await listen(app)
