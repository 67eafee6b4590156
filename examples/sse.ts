/**
 * Server-sent events and a long poll that end cleanly on a drain.
 * `fastify.drain.signal` aborts the moment the drain starts: each stream says
 * goodbye with a `retry:` hint (the browser's EventSource reconnects after it,
 * through the load balancer, to a pod that is not draining) and ends, so the
 * drain never has to cut it. A long poll answers at once with "nothing yet".
 * Anything a handler leaves open is destroyed when the budget is spent.
 *
 *   node --import tsx examples/sse.ts
 *   curl -N localhost:3000/events ; kill -TERM <pid>
 *
 * Environment: PORT (3000), HOST (127.0.0.1), DRAIN_DELAY_MS (5000), GRACE_PERIOD_MS (30000).
 */
import Fastify from 'fastify'
import gracefulDrain from 'fastify-graceful-drain'

const ms = (name: string): number | undefined => process.env[name] === undefined ? undefined : Number(process.env[name])

const app = Fastify({ logger: true })
await app.register(gracefulDrain, { drainDelay: ms('DRAIN_DELAY_MS'), gracePeriod: ms('GRACE_PERIOD_MS') })

app.get('/events', (_request, reply) => {
  reply.hijack()
  const res = reply.raw
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
  let id = 0
  const tick = setInterval(() => { res.write(`id: ${++id}\ndata: ${new Date().toISOString()}\n\n`) }, 1000)
  const goodbye = (): void => {
    clearInterval(tick)
    // Reconnect in 1–3 s: spread out, so the clients do not all land on the next pod at once.
    res.end(`retry: ${1000 + Math.floor(Math.random() * 2000)}\nevent: goodbye\ndata: server draining\n\n`)
  }
  const { signal } = app.drain
  if (signal.aborted) return goodbye()
  signal.addEventListener('abort', goodbye, { once: true })
  // The client went away first: stop ticking and drop the listener.
  res.on('close', () => {
    clearInterval(tick)
    signal.removeEventListener('abort', goodbye)
  })
})

// A long poll: waits up to 25 s for news, and answers at once when the drain starts.
app.get('/poll', async () => {
  const news = await waitForNews(app.drain.signal, 25_000)
  return { events: news }
})

/** Stands in for a queue or a pub/sub subscription: nothing ever arrives, the wait ends on the timeout or the drain. */
function waitForNews (signal: AbortSignal, timeout: number): Promise<string[]> {
  return new Promise(resolve => {
    const done = (): void => {
      clearTimeout(timer)
      signal.removeEventListener('abort', done)
      resolve([])
    }
    const timer = setTimeout(done, timeout)
    if (signal.aborted) done()
    else signal.addEventListener('abort', done, { once: true })
  })
}

await app.listen({ port: Number(process.env.PORT ?? 3000), host: process.env.HOST ?? '127.0.0.1' })
const address = app.server.address()
process.send?.({ port: typeof address === 'object' && address !== null ? address.port : undefined })
