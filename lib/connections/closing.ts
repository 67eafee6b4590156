// Longer than 150 lines because it holds the whole closing policy in one place (docs/design.md,
// "Connections"): the scan loop, and the rules it applies per socket (idle, fresh, linger, unread
// bytes, stalls, destroy at the budget), so that no rule can be read without the others.
import { now, sleep } from '../deadline.js'
import { defaults } from '../options.js'
import { routeOf } from './arrivals.js'
import { closeListener, keepConnectionsOnClose } from './socket-internals.js'
import type { Connection, ConnectionTracker } from './tracker.js'

/**
 * The socket-closing policy once the listener is closed (docs/design.md,
 * "Connections"): end idle sockets, spare fresh and busy ones, let ended ones
 * linger briefly for the peer's FIN, and destroy what is left at the budget.
 * The bookkeeping it reads lives in tracker.ts; every rule lives here.
 */

/**
 * A socket that has not sent a byte yet is not idle in any useful sense: its
 * first request is probably on the wire. It gets this long after it was
 * accepted before the drain closes it (we lost a request exactly so).
 */
export const FRESH_SOCKET_GRACE_MS = 1_000

/**
 * Once a socket has no request and its write side is closed, no request can be
 * served on it any more; we only wait this long for the peer's FIN before
 * destroying it, so a peer that never closes its half cannot hold the drain.
 */
export const LINGER_MS = 1_000

/**
 * Stops accepting on every server the app listens on (the main one, and those
 * Fastify opened beside it for `localhost`), leaving every open socket to
 * closeConnections(). The secondary servers' own close() is made to do the
 * same first: Fastify calls it as soon as the main server has no connection left.
 */
export function closeListeners (tracker: ConnectionTracker): void {
  const [main, ...secondary] = tracker.servers
  for (const server of secondary) keepConnectionsOnClose(server)
  if (main !== undefined) closeListener(main)
  for (const server of secondary) closeListener(server)
}

/**
 * Closes sockets on the drain's schedule until none is left, `budgetMs` runs
 * out or `forced` aborts. Event-driven and linear in connections: one scan ends
 * every idle socket; the next scan runs only when a fresh or lingering socket's
 * grace runs out, or when a stall could next be due. Socket closes wake nothing
 * but the last one, and a response that leaves its socket to linger only brings
 * the next scan forward: re-scanning at every close took 19 s (5.7 s of CPU) to
 * drain 10,000 idle keep-alive connections.
 *
 * Resolves with what it destroyed as stalled (`stallTimeout`, see closeIdle) that
 * nobody has reported yet: the drain puts it in the report's `requests.cut`.
 */
export async function closeConnections (tracker: ConnectionTracker, budgetMs: number, forced: AbortSignal,
  stallTimeout: number = defaults.stallTimeout): Promise<string[]> {
  // Ends the wait at the budget, or at once if the drain is forced.
  const budget = new AbortController()
  const onForced = (): void => budget.abort()
  forced.addEventListener('abort', onForced, { once: true })
  // Aborting on expiry ends the loop below: a settled budgetSpent alone would make every
  // Promise.race settle at once, a microtask loop that starves every timer, the deadline's too.
  const budgetSpent = sleep(budgetMs, budget.signal).then(() => budget.abort())
  // The first scan before whenEmpty(): it is what puts the sockets left open in the tracker's Set.
  const first = closeIdle(tracker, stallTimeout)
  let scanAt = first === undefined ? Infinity : now() + first
  const empty = tracker.whenEmpty()
  let timerAt = Infinity
  let timer: Promise<void> | undefined
  const onChange = (): void => { scanAt = Math.min(scanAt, now() + LINGER_MS) }
  // A timer may fire a fraction of a millisecond before scanAt by performance.now(): scan anyway.
  const onTimer = (): void => { scanAt = -Infinity }
  while (tracker.size > 0 && !budget.signal.aborted) {
    if (now() >= scanAt) {
      const recheck = closeIdle(tracker, stallTimeout)
      scanAt = recheck === undefined ? Infinity : now() + recheck
    }
    // One timer per scan time, not per wake-up.
    if (scanAt !== timerAt) {
      timerAt = scanAt
      timer = scanAt === Infinity ? undefined : sleep(scanAt - now(), budget.signal).then(onTimer)
    }
    const waits = [tracker.nextChange().then(onChange), empty, budgetSpent]
    if (timer !== undefined) waits.push(timer)
    await Promise.race(waits)
  }
  forced.removeEventListener('abort', onForced)
  budget.abort()
  return tracker.takeEarlyCuts()
}

/**
 * Closes the sockets that can be closed without cutting a request, destroys
 * the ones stalled in the middle of a request, and returns the delay after
 * which it should be called again (fresh sockets, lingering ones, a stall that
 * could be due), or undefined. By the time it runs the load balancer has
 * stopped sending, so an idle socket is idle for good.
 *
 * Stalls: a socket whose client owes us bytes (part of a request head, or of a
 * body being read) and has sent none for `stallTimeout` is destroyed and named
 * `(stalled request)` in the report. Without this, one packet (a TLS ClientHello
 * cut short, half a request line) held the drain to its budget, and Node's own
 * `headersTimeout` (60 s) is longer than any budget. Progress is sampled only at
 * scans, so no timer or listener is set per socket: a byte count that moved
 * since the last scan restarts the clock at this scan, so a stall is cut no
 * sooner than `stallTimeout` after the client's last byte (and at most twice
 * that), and a slow upload that keeps sending is never cut before the budget.
 */
export function closeIdle (tracker: ConnectionTracker, stallTimeout: number = defaults.stallTimeout): number | undefined {
  tracker.startClosing()
  const at = now()
  let recheck = Infinity
  // The first scan reads Node's own list of sockets (tracker.ts, deferred tracking); only those it keeps join the tracker's Set.
  for (const conn of tracker.open()) {
    const next = visit(tracker, conn, at, stallTimeout)
    if (next === CLOSED) continue
    tracker.keep(conn)
    if (next < recheck) recheck = next
  }
  return recheck === Infinity ? undefined : recheck
}

/** visit() closed the socket and the tracker has forgotten it. */
const CLOSED = -1

/**
 * One socket, one scan: closes it (CLOSED), or keeps it and returns when it
 * should be looked at again (ms; Infinity: only when something changes).
 */
function visit (tracker: ConnectionTracker, conn: Connection, at: number, stallTimeout: number): number {
  // Read once: on a live socket it is a call into the handle.
  const read = conn.reader.bytesRead
  let recheck = Infinity
  if (waitingOnClient(tracker, conn, read)) {
    if (read !== conn.stallBytes) {
      conn.stallBytes = read
      conn.stallSince = at
    }
    const dueIn = conn.stallSince + stallTimeout - at
    if (dueIn <= 0) {
      cutStalled(tracker, conn)
      return CLOSED
    }
    recheck = dueIn
  } else {
    // Not waiting now (answered, paused by us): the clock starts afresh if it waits again.
    conn.stallBytes = -1
  }
  if (conn.upgraded || conn.inFlight > 0) return recheck
  // Unread bytes: a request is arriving (or a slowloris is trickling one); never cut it here.
  if (read > conn.bytesAtRest) return recheck
  if (conn.socket.writableEnded) {
    conn.endedAt ??= at
    const lingerFor = conn.endedAt + LINGER_MS - at
    // Destroyed after its linger: forgotten at its 'close', like any socket that closes.
    if (lingerFor <= 0) conn.socket.destroy()
    return lingerFor > 0 ? Math.min(recheck, lingerFor) : recheck
  }
  const freshFor = conn.acceptedAt + FRESH_SOCKET_GRACE_MS - at
  if (conn.served === 0 && freshFor > 0) return Math.min(recheck, freshFor)
  // Plain HTTP/1 with nothing left to write: close() sends the same FIN that end()
  // would, with no peer FIN to wait for. At 10,000 idle sockets, ending them and
  // lingering for the peers' FINs cost 2.2× the CPU and the client's pace.
  // TLS (close_notify) and HTTP/2 (GOAWAY) sockets are ended and linger.
  if (tracker.plainHttp1 && conn.reader === conn.socket && conn.socket.writableLength === 0) {
    conn.socket.destroy()
    // destroy() has closed the fd (the FIN is out): forget it now rather than at its
    // 'close' event, so the drain goes on without waiting for 10,000 of them to be emitted.
    tracker.forget(conn)
    return CLOSED
  }
  endGracefully(conn)
  return Math.min(recheck, LINGER_MS)
}

/**
 * Ends a socket with nothing left on it; returns whether it had to (a response
 * with `Connection: close` has Node end it). The tracker calls it too, when a
 * response ends after the listener closed: nobody should reuse that socket.
 */
export function endGracefully (conn: Connection): boolean {
  conn.endedAt ??= now()
  if (conn.socket.writableEnded) return false
  // end(), not destroy(): a FIN never resets a socket that has unread bytes.
  conn.socket.end()
  return true
}

/**
 * Whether `conn`'s client owes the server bytes: part of a request head with
 * nothing in flight (bytes beyond the last response's rest mark), or the body of
 * the request being handled. Not when the server itself stopped reading (a paused
 * socket: a handler not consuming its body, or responses backing up), and never
 * on an upgraded socket or an HTTP/2 session (its control frames are always
 * "unread", and Node bounds sessions itself), except while a TLS handshake is
 * still under way: a ClientHello cut short is a stall on any TLS server.
 */
function waitingOnClient (tracker: ConnectionTracker, conn: Connection, read: number): boolean {
  if (conn.upgraded) return false
  if (!tracker.http1 && !(tracker.secure && conn.reader === conn.socket)) return false
  if (conn.inFlight === 0 && read <= conn.bytesAtRest) return false
  if (conn.reader.isPaused()) return false
  if (conn.inFlight === 0) return true
  const req = conn.response?.req
  return req !== undefined && !req.complete
}

/** Destroys a stalled socket at once, counted as forced and named in the report: `(stalled request)`, with the route if its body stalled. */
function cutStalled (tracker: ConnectionTracker, conn: Connection): void {
  const routes = conn.inFlight === 0 || conn.response === undefined
    ? ['(stalled request)']
    : [`(stalled request) ${routeOf(conn.response.req)}`]
  for (let i = 1; i < conn.inFlight; i++) routes.push('(pipelined request)')
  tracker.cutEarly(conn, routes)
  conn.socket.destroy()
  tracker.forget(conn)
}

/**
 * The budget is spent: destroys every socket still open; returns what was cut,
 * for the report, with what was cut as stalled before and not reported yet.
 */
export function destroyRemaining (tracker: ConnectionTracker): string[] {
  const cut: string[] = tracker.takeEarlyCuts()
  for (const conn of tracker.open()) {
    // In the Set until its 'close', like every socket the drain did not close itself.
    tracker.keep(conn)
    if (conn.streams !== undefined && conn.streams.size > 0) for (const res of conn.streams) cut.push(routeOf(res.req))
    else if (conn.response !== undefined) cut.push(routeOf(conn.response.req))
    else if (conn.upgraded) cut.push('(upgraded connection)')
    // Unread bytes with nothing in flight: a request was arriving. (Not on an HTTP/2
    // session: it always has unread control frames.)
    else if (conn.inFlight === 0 && conn.reader.bytesRead > conn.bytesAtRest) cut.push('(incomplete request)')
    // Pipelined HTTP/1.1 requests beside the one named above: only the latest is kept, per socket.
    const named = conn.streams?.size ?? (conn.response === undefined ? 0 : 1)
    for (let i = named; i < conn.inFlight; i++) cut.push('(pipelined request)')
    // A socket we already ended with nothing on it is lingering, not cut.
    const lingering = conn.endedAt !== undefined && conn.inFlight === 0 && !conn.upgraded
    if (!lingering) tracker.markCut(conn)
    conn.socket.destroy()
  }
  return cut
}
