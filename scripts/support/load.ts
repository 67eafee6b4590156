// Fixed-rate (open-loop) HTTP load over an undici keep-alive Pool.
//
// Requests are started on a schedule (request i at start + i * 1000 / rate ms),
// whether or not earlier ones have finished, so a stall on the server side
// shows up as latency/timeouts/failures instead of silently lowering the
// offered load. Sending stops by itself after `durationMs` or `maxRequests`,
// whichever comes first.
//
// Failures are never hidden. What undici 7 (checked against 7.30.2,
// lib/dispatcher/client-h1.js + client.js) does on its own:
//
// - Client/Pool/Agent never retry a request by themselves; retrying is opt-in
//   (RetryAgent, RetryHandler, interceptors.retry). We use a plain Pool.
// - BUT with `pipelining > 1` a socket close fails only the *head* of the
//   pipeline; idempotent requests (GET/HEAD) that were already written behind
//   it are put back into the pending queue and re-sent on a new connection
//   (onHttpSocketClose: `client[kPendingIdx] = client[kRunningIdx]`). That is
//   a silent retry, so we force `pipelining: 1` (also the default): at most
//   one request is in flight per connection and the request that was on a
//   closed socket always fails.
// - Requests queued in the Pool but not yet written to any socket are simply
//   dispatched on another/new connection when a socket closes. They were never
//   sent, so that is not a retry.
// - Before reusing an idle keep-alive socket undici yields to the event loop
//   once (setImmediate, "idle socket validation", GHSA-35p6-xmwp-9g52) so an
//   already-received FIN/RST closes the socket before a request is written to
//   it. That narrows, but cannot close, the keep-alive race window; requests
//   that do get written to a dying socket fail with UND_ERR_SOCKET or
//   ECONNRESET and are counted.
// - A response with `Connection: close` marks the socket reset: no further
//   request is written to it. A `Keep-Alive: timeout=N` response header makes
//   undici drop idle sockets `keepAliveTimeoutThreshold` (default 2 s) before
//   the server would (behind HAProxy in http mode the client only sees what
//   HAProxy sends).
// - A connect error (ECONNREFUSED) fails every request queued on that Client
//   (client.js onError) and is counted for each of them.

import { Pool } from 'undici'
import type { Dispatcher } from 'undici'

export interface LoadOptions {
  /** e.g. 'http://127.0.0.1:12345' */
  origin: string
  /** requests per second (open loop) */
  rate: number
  /** stop sending after this many ms */
  durationMs: number
  /** stop sending after this many requests; default ceil(rate * durationMs / 1000) */
  maxRequests?: number
  /**
   * keep-alive connections in the pool; default 32. With `pipelining: 1` each
   * carries one request at a time, so they must cover rate × mean latency
   * (Little's law) with room to spare: otherwise requests queue in the pool,
   * the queue grows for as long as the load runs, and the client, not the
   * server, makes the latency (see `queuedMax`).
   */
  connections?: number
  /** fraction of requests that are slow, spread evenly; default 0.1 (every 10th) */
  slowFraction?: number
  /** slow request duration range in ms; default [200, 2000] */
  slowMs?: [number, number]
  /** path of fast requests; default '/' */
  fastPath?: string
  /** path of slow requests; default (ms) => `/slow?ms=${ms}` */
  slowPath?: (ms: number) => string
  /**
   * per request, from the moment it is due (its slot in the schedule) until the
   * body is fully read, time queued in the pool for a free connection
   * included; default 10000 (counts as 'timeout')
   */
  requestTimeoutMs?: number
  /** how many failures to keep in `samples`; default 20 */
  maxSamples?: number
  /**
   * Names the failure kind of a non-200 response from its status and body,
   * e.g. to tell a load balancer's own 503 from the app's; undefined (or no
   * function) keeps the default `status <code>`.
   */
  classifyResponse?: (statusCode: number, body: string) => string | undefined
  /**
   * Send request i with this header set to `String(i)` (e.g. 'x-request-id'),
   * so that a proxy's access log can say which requests it saw; every failure
   * is then kept, with its id, in `failedRequests`.
   */
  requestIdHeader?: string
}

export interface FailureSample {
  /** the request's index in the schedule, sent as `requestIdHeader` when set */
  id: string
  kind: string
  /** ms since load start when the request was sent */
  at: number
  /** ms since load start when it failed */
  failedAt: number
  path: string
  /** error message or response body excerpt */
  detail: string
}

export interface LoadResult {
  sent: number
  ok: number
  failed: number
  /** failures by kind: 'status 503', 'status 502', 'ECONNREFUSED', 'ECONNRESET', 'socket closed', 'socket closed (EPIPE)', 'timeout', other codes */
  failures: Record<string, number>
  /** the first `maxSamples` failures */
  samples: FailureSample[]
  /** every failure, when `requestIdHeader` is set (the samples are too few to match against a proxy's log) */
  failedRequests?: FailureSample[]
  /** of successful requests, ms */
  latency: { p50: number, p99: number, max: number }
  /** wall time from start until the last request settled, ms */
  elapsedMs: number
  /**
   * most requests waiting inside the pool for a free connection at once,
   * sampled each time requests are sent: a queue that stays above 0 means the
   * pool is too small for the rate and every latency includes the wait
   */
  queuedMax: number
}

export interface LoadStats {
  sent: number
  ok: number
  failed: number
}

export interface LoadHandle {
  /** stop sending now, wait for outstanding requests, close the pool */
  stop: () => Promise<LoadResult>
  /** resolves when sending ended by itself (or via stop) and every request settled */
  done: Promise<LoadResult>
  stats: () => LoadStats
}

const TIMEOUT_CODES = new Set([
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_CONNECT_TIMEOUT',
  'LOAD_REQUEST_TIMEOUT'
])

interface ErrorLike { code?: unknown, name?: unknown, message?: unknown, cause?: unknown }

function errCode (err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined
  const code = (err as ErrorLike).code
  return typeof code === 'string' ? code : undefined
}

/** Map an undici/node error to a failure kind. */
export function classifyError (err: unknown): string {
  const code = errCode(err)
  if (code !== undefined && TIMEOUT_CODES.has(code)) return 'timeout'
  if (code === 'UND_ERR_SOCKET') {
    const cause = errCode((err as ErrorLike).cause)
    return cause !== undefined ? `socket closed (${cause})` : 'socket closed'
  }
  if (code !== undefined) return code
  const cause = errCode((err as ErrorLike | undefined)?.cause)
  if (cause !== undefined) return cause
  const name = (err as ErrorLike | undefined)?.name
  return typeof name === 'string' ? name : 'unknown error'
}

function percentile (sorted: number[], p: number): number {
  if (sorted.length === 0) return 0
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[idx] ?? 0
}

const GOLDEN = (Math.sqrt(5) - 1) / 2

export function startLoad (opts: LoadOptions): LoadHandle {
  const rate = opts.rate
  if (!(rate > 0)) throw new Error('rate must be > 0')
  if (!(opts.durationMs >= 0)) throw new Error('durationMs must be >= 0')
  const maxRequests = opts.maxRequests ?? Math.ceil((rate * opts.durationMs) / 1000)
  const connections = opts.connections ?? 32
  const slowFraction = opts.slowFraction ?? 0.1
  const [slowMin, slowMax] = opts.slowMs ?? [200, 2000]
  const fastPath = opts.fastPath ?? '/'
  const slowPath = opts.slowPath ?? ((ms: number) => `/slow?ms=${ms}`)
  const requestTimeoutMs = opts.requestTimeoutMs ?? 10_000
  const maxSamples = opts.maxSamples ?? 20
  const idHeader = opts.requestIdHeader

  const pool = new Pool(opts.origin, {
    connections,
    pipelining: 1, // see the header comment: >1 would silently re-send idempotent requests
    headersTimeout: requestTimeoutMs,
    bodyTimeout: requestTimeoutMs,
    connectTimeout: Math.min(requestTimeoutMs, 5000)
  })

  const start = performance.now()
  const now = (): number => performance.now() - start
  let sent = 0
  let ok = 0
  let failed = 0
  let slowCount = 0
  const failures: Record<string, number> = {}
  const samples: FailureSample[] = []
  const failedRequests: FailureSample[] = []
  const latencies: number[] = []
  let queuedMax = 0
  const inflight = new Set<Promise<void>>()
  let sending = true
  let timer: NodeJS.Timeout | undefined
  let endSending: () => void = () => {}
  const sendingEnded = new Promise<void>((resolve) => { endSending = resolve })

  const fail = (i: number, kind: string, at: number, path: string, detail: string): void => {
    failed++
    failures[kind] = (failures[kind] ?? 0) + 1
    const sample = { id: String(i), kind, at: Math.round(at), failedAt: Math.round(now()), path, detail }
    if (samples.length < maxSamples) samples.push(sample)
    if (idHeader !== undefined) failedRequests.push(sample)
  }

  // Deterministic mix: request i is slow when it crosses a multiple of
  // 1/slowFraction (every 10th for 0.1); slow durations follow a golden-ratio
  // low-discrepancy sequence over [slowMin, slowMax].
  const pathFor = (i: number): string => {
    if (slowFraction > 0 && Math.floor((i + 1) * slowFraction) > Math.floor(i * slowFraction)) {
      const u = (slowCount++ * GOLDEN) % 1
      return slowPath(Math.round(slowMin + u * (slowMax - slowMin)))
    }
    return fastPath
  }

  const fire = (i: number): void => {
    const path = pathFor(i)
    const at = now()
    const ac = new AbortController()
    const deadline = setTimeout(() => {
      const err = new Error(`request timed out after ${requestTimeoutMs} ms`) as Error & { code: string }
      err.code = 'LOAD_REQUEST_TIMEOUT'
      ac.abort(err)
    }, requestTimeoutMs)
    const p = (async () => {
      let res: Dispatcher.ResponseData | undefined
      try {
        res = await pool.request({ path, method: 'GET', signal: ac.signal, headers: idHeader === undefined ? undefined : { [idHeader]: String(i) } })
        const body = await res.body.text() // read the whole body
        if (res.statusCode === 200) {
          ok++
          latencies.push(now() - at)
        } else {
          fail(i, opts.classifyResponse?.(res.statusCode, body) ?? `status ${res.statusCode}`, at, path, body.slice(0, 200))
        }
      } catch (err) {
        const kind = ac.signal.aborted ? 'timeout' : classifyError(err)
        const msg = err instanceof Error ? err.message : String(err)
        fail(i, kind, at, path, res !== undefined ? `while reading the ${res.statusCode} body: ${msg}` : msg)
      } finally {
        clearTimeout(deadline)
      }
    })()
    inflight.add(p)
    p.finally(() => inflight.delete(p)).catch(() => {})
  }

  const stopSending = (): void => {
    if (!sending) return
    sending = false
    if (timer !== undefined) clearTimeout(timer)
    endSending()
  }

  const intervalMs = 1000 / rate
  const tick = (): void => {
    timer = undefined
    if (!sending) return
    const t = now()
    // Catch up on every request whose slot has passed (open loop).
    while (sent < maxRequests && t < opts.durationMs && sent * intervalMs <= t) {
      fire(sent++)
    }
    queuedMax = Math.max(queuedMax, pool.stats.queued)
    if (sent >= maxRequests || t >= opts.durationMs) {
      stopSending()
      return
    }
    const next = Math.min(sent * intervalMs, opts.durationMs)
    timer = setTimeout(tick, Math.max(0, next - now()))
  }

  let result: Promise<LoadResult> | undefined
  const finish = (): Promise<LoadResult> => {
    result ??= (async () => {
      await sendingEnded
      while (inflight.size > 0) await Promise.allSettled([...inflight])
      const elapsedMs = Math.round(now())
      await pool.close().catch(() => pool.destroy())
      const sorted = latencies.sort((a, b) => a - b)
      return {
        sent,
        ok,
        failed,
        failures: { ...failures },
        samples: [...samples],
        ...(idHeader === undefined ? {} : { failedRequests: [...failedRequests] }),
        latency: {
          p50: Math.round(percentile(sorted, 50)),
          p99: Math.round(percentile(sorted, 99)),
          max: Math.round(sorted[sorted.length - 1] ?? 0)
        },
        elapsedMs,
        queuedMax
      }
    })()
    return result
  }

  if (maxRequests <= 0) stopSending()
  else tick()
  const done = finish()

  return {
    done,
    async stop () {
      stopSending()
      return await done
    },
    stats: () => ({ sent, ok, failed })
  }
}
