// No handling: SIGTERM's default action kills the process at once.
import { createApp, listen } from './common.js'

const app = createApp()
app.get('/readyz', async () => ({ status: 'ready' }))
await listen(app)
