import { now, sleep } from '../deadline.js'
import { routeOf } from './arrivals.js'
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
 * Closes sockets on the drain's schedule until none is left, `budgetMs` runs
 * out or `forced` aborts. Event-driven and linear in connections: one scan ends
 * every idle socket; the next scan runs only when a fresh or lingering socket's
 * grace runs out. Socket closes wake nothing but the last one, and a response
 * that leaves its socket to linger only brings the next scan forward:
 * re-scanning at every close took 19 s (5.7 s of CPU) to drain 10,000 idle
 * keep-alive connections.
 */
export async function closeConnections (tracker: ConnectionTracker, budgetMs: number, forced: AbortSignal): Promise<void> {
  // Ends the wait at the budget, or at once if the drain is forced.
  const budget = new AbortController()
  const onForced = (): void => budget.abort()
  forced.addEventListener('abort', onForced, { once: true })
  // Aborting on expiry ends the loop below: a settled budgetSpent alone would make every
  // Promise.race settle at once, a microtask loop that starves every timer, the deadline's too.
  const budgetSpent = sleep(budgetMs, budget.signal).then(() => budget.abort())
  const empty = tracker.whenEmpty()
  let scanAt = now()
  let timerAt = Infinity
  let timer: Promise<void> | undefined
  const onChange = (): void => { scanAt = Math.min(scanAt, now() + LINGER_MS) }
  // A timer may fire a fraction of a millisecond before scanAt by performance.now(): scan anyway.
  const onTimer = (): void => { scanAt = -Infinity }
  while (tracker.size > 0 && !budget.signal.aborted) {
    if (now() >= scanAt) {
      const recheck = closeIdle(tracker)
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
}

/**
 * Closes the sockets that can be closed without cutting a request, and
 * returns the delay after which it should be called again (fresh sockets,
 * lingering ones), or undefined. By the time it runs the load balancer has
 * stopped sending, so an idle socket is idle for good.
 */
export function closeIdle (tracker: ConnectionTracker): number | undefined {
  tracker.startClosing()
  const at = now()
  let recheck = Infinity
  for (const conn of tracker.connections) {
    if (conn.upgraded || conn.inFlight > 0) continue
    // Unread bytes: a request is arriving (or a slowloris is trickling one); never cut it here.
    if (conn.reader.bytesRead > conn.bytesAtRest) continue
    if (conn.socket.writableEnded) {
      conn.endedAt ??= at
      const lingerFor = conn.endedAt + LINGER_MS - at
      if (lingerFor > 0) recheck = Math.min(recheck, lingerFor)
      else conn.socket.destroy()
      continue
    }
    const freshFor = conn.acceptedAt + FRESH_SOCKET_GRACE_MS - at
    if (conn.served === 0 && freshFor > 0) {
      recheck = Math.min(recheck, freshFor)
      continue
    }
    // Plain HTTP/1 with nothing left to write: close() sends the same FIN that end()
    // would, with no peer FIN to wait for. At 10,000 idle sockets, ending them and
    // lingering for the peers' FINs cost 2.2× the CPU and the client's pace.
    // TLS (close_notify) and HTTP/2 (GOAWAY) sockets are ended and linger.
    if (tracker.plainHttp1 && conn.reader === conn.socket && conn.socket.writableLength === 0) {
      conn.socket.destroy()
      // destroy() has closed the fd (the FIN is out): forget it now rather than at its
      // 'close' event, so the drain goes on without waiting for 10,000 of them to be emitted.
      tracker.forget(conn)
      continue
    }
    endGracefully(conn)
    recheck = Math.min(recheck, LINGER_MS)
  }
  return recheck === Infinity ? undefined : recheck
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

/** The budget is spent: destroys every socket still open; returns what was cut, for the report. */
export function destroyRemaining (tracker: ConnectionTracker): string[] {
  const cut: string[] = []
  for (const conn of tracker.connections) {
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
