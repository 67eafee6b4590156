/**
 * The client process of bench/drain.ts: holds the idle keep-alive connections
 * and sends the slow in-flight requests, with undici (as real callers do: an
 * undici client closes its side when the server's FIN arrives). Driven over IPC:
 * - `{ open: { origin, idle } }` → opens `idle` connections, one GET each, in
 *   batches so the server's accept backlog never overflows; replies `{ opened }`;
 * - `{ slow: { count, ms } }` → starts `count` slow requests on connections of their own;
 * - `{ collect: { timeout } }` → once every connection is closed (or the timeout),
 *   replies with each slow response's outcome and end time and how the idle
 *   connections ended, then forgets them all.
 * Times are `process.hrtime` in ms: CLOCK_MONOTONIC, the same clock in every process.
 */
import { Client } from 'undici'

const BATCH = 500

interface SlowOutcome {
  ok: boolean
  status?: number
  connection?: string
  bytes?: number
  error?: string
  endHr?: number
}

const hr = (): number => Number(process.hrtime.bigint()) / 1e6
let clients: Client[] = []
let slow: Array<Promise<SlowOutcome>> = []
let open = 0
let lastDisconnectHr = 0
let disconnectCodes: Record<string, number> = {}
let origin = ''
let onAllClosed: (() => void) | undefined

function track (client: Client): Client {
  client.on('connect', () => { open++ })
  client.on('disconnect', (_origin, _targets, err: Error & { code?: string }) => {
    open--
    lastDisconnectHr = hr()
    const code = err?.code ?? 'none'
    disconnectCodes[code] = (disconnectCodes[code] ?? 0) + 1
    if (open === 0) onAllClosed?.()
  })
  clients.push(client)
  return client
}

function newClient (): Client {
  // A long keep-alive so that only the server ends these connections.
  return track(new Client(origin, { pipelining: 1, keepAliveTimeout: 600_000, keepAliveMaxTimeout: 600_000, connectTimeout: 30_000 }))
}

async function openIdle (count: number): Promise<number> {
  for (let done = 0; done < count; done += BATCH) {
    const batch = Array.from({ length: Math.min(BATCH, count - done) }, async () => {
      const { body } = await newClient().request({ path: '/', method: 'GET' })
      await body.text()
    })
    await Promise.all(batch)
  }
  return open
}

async function startSlow (count: number, ms: number): Promise<void> {
  slow = Array.from({ length: count }, async (): Promise<SlowOutcome> => {
    try {
      const { statusCode, headers, body } = await newClient().request({ path: `/slow?ms=${ms}`, method: 'GET' })
      const text = await body.text()
      const full = Buffer.byteLength(text) === Number(headers['content-length']) && JSON.parse(text).slow === true
      const connection = String(headers.connection)
      return { ok: statusCode === 200 && full && connection === 'close', status: statusCode, connection, bytes: Buffer.byteLength(text), endHr: hr() }
    } catch (error) {
      return { ok: false, error: (error as Error & { code?: string }).code ?? (error as Error).message, endHr: hr() }
    }
  })
}

async function collect (timeout: number): Promise<unknown> {
  const outcomes = await Promise.all(slow)
  // Closing happens on the server's schedule; wait for the last 'disconnect', bounded.
  if (open > 0) {
    await new Promise<void>(resolve => {
      const timer = setTimeout(resolve, timeout)
      onAllClosed = () => { clearTimeout(timer); resolve() }
    })
    onAllClosed = undefined
  }
  const result = { slow: outcomes, stillOpen: open, lastDisconnectHr, disconnectCodes }
  await Promise.all(clients.map(client => client.destroy().catch(() => {})))
  clients = []
  slow = []
  open = 0
  disconnectCodes = {}
  return result
}

process.on('message', (message: Record<string, any>) => {
  const reply = (promise: Promise<unknown>, key: string): void => {
    promise.then(value => process.send?.({ [key]: value }), (error: Error) => process.send?.({ error: error.message }))
  }
  if (message.open !== undefined) {
    origin = message.open.origin
    reply(openIdle(message.open.idle), 'opened')
  }
  if (message.slow !== undefined) startSlow(message.slow.count, message.slow.ms).catch(() => {})
  if (message.collect !== undefined) reply(collect(message.collect.timeout), 'collected')
  if (message.exit !== undefined) process.exit(0)
})
process.stdout.write(JSON.stringify({ ready: true }) + '\n')
