import type { Socket } from 'node:net'
import { Server as Http1Server, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { now } from '../deadline.js'
import { closeAfterResponse, parentSocket } from './socket-internals.js'

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

const kConnection = Symbol('fastify-graceful-drain.connection')

interface Connection {
  readonly socket: Socket
  /** The socket the HTTP parser reads: the TLS socket once the handshake is done, else the TCP one. */
  reader: Socket
  readonly acceptedAt: number
  inFlight: number
  served: number
  /** `reader.bytesRead` when its last response ended: more than that means a request is arriving. */
  bytesAtRest: number
  /** The response being written, to mark it `Connection: close` and to name its route if it is cut. */
  response: ServerResponse | undefined
  upgraded: boolean
  /** Destroyed by the drain at the budget, as opposed to closed gracefully. */
  cut: boolean
  /** Monotonic time the drain saw this socket's write side ended with no request left on it. */
  endedAt: number | undefined
  /** HTTP/2 only: the streams in flight on the session, so each is named if it is cut. */
  streams: Set<ServerResponse> | undefined
}

type TrackedSocket = Socket & { [kConnection]?: Connection }
/** Marks a response to a path in `quietPeriodIgnore`: in flight, but not traffic for the quiet period. */
const kBackground = Symbol('fastify-graceful-drain.background')
/** Only HTTP/2 responses carry their connection: once a stream has closed, its `req.socket` proxy no longer reaches the session's socket. */
type TrackedResponse = ServerResponse & { [kConnection]?: Connection, [kBackground]?: true }

/** Requests to one route that arrived while the drain was recording them. */
export interface Arrivals {
  route: string
  count: number
  firstAt: number
  lastAt: number
}

/** Routes recorded at most: paths with ids in them must not grow the map without bound. */
const MAX_ROUTES = 20

export interface ConnectionCounts {
  open: number
  inFlight: number
  servedDuringDrain: number
  closedGracefully: number
  destroyed: number
  upgraded: number
}

/**
 * Tracks sockets and the requests on them for one server, and closes them on
 * the drain's schedule. Everything per request is a counter and a shared
 * listener: no closures, timers or objects per request.
 */
export class ConnectionTracker {
  readonly #server: Server
  /** An http.Server (not https, not http2): its idle sockets can be closed without a TLS or HTTP/2 goodbye. */
  readonly #plainHttp1: boolean
  readonly #isProbe: (url: string | undefined) => boolean
  readonly #isBackground: (url: string | undefined) => boolean
  readonly #connections = new Set<Connection>()
  readonly #emptyWaiters: Array<() => void> = []
  readonly #changeWaiters: Array<() => void> = []
  #inFlight = 0
  /** In flight and not background: what the quiet period waits for. */
  #trafficInFlight = 0
  #arrivals: Map<string, Arrivals> | undefined
  #draining = false
  #closing = false
  #lastRequestAt = -Infinity
  #lastActivityAt = -Infinity
  #servedDuringDrain = 0
  #closedGracefully = 0
  #destroyed = 0

  // Plain functions, created once per tracker, because Node calls them with the
  // socket or response as `this`; private fields stay reachable through `tracker`.
  readonly #onSocketClose: (this: TrackedSocket) => void
  readonly #onResponseClose: (this: ServerResponse) => void

  constructor (server: Server, isProbe: (url: string | undefined) => boolean,
    isBackground: (url: string | undefined) => boolean = () => false) {
    this.#server = server
    this.#plainHttp1 = server instanceof Http1Server
    this.#isProbe = isProbe
    this.#isBackground = isBackground
    const tracker = this
    this.#onSocketClose = function () { tracker.#forget(this) }
    this.#onResponseClose = function () { tracker.#responseEnded(this) }
    server.on('connection', this.#onConnection)
    server.on('secureConnection', this.#onSecureConnection)
    // Prepended so the drain marks the response before Fastify starts writing it.
    server.prependListener('request', this.#onRequest)
    server.on('upgrade', this.#onUpgrade)
  }

  detach (): void {
    this.#server.removeListener('connection', this.#onConnection)
    this.#server.removeListener('secureConnection', this.#onSecureConnection)
    this.#server.removeListener('request', this.#onRequest)
    this.#server.removeListener('upgrade', this.#onUpgrade)
  }

  get inFlight (): number {
    return this.#inFlight
  }

  /** Requests in flight that count as traffic (not probes, not `quietPeriodIgnore` paths). */
  get trafficInFlight (): number {
    return this.#trafficInFlight
  }

  get size (): number {
    return this.#connections.size
  }

  /**
   * From now on, count the traffic that arrives per route (method and path),
   * so that a quiet period that never came can name what kept it busy.
   * Runs only during the drain's extension: nothing per request before it.
   */
  recordArrivals (): void {
    this.#arrivals ??= new Map()
  }

  /** The routes recorded since recordArrivals(), busiest first. */
  arrivals (): Arrivals[] {
    return [...(this.#arrivals?.values() ?? [])].sort((a, b) => b.count - a.count)
  }

  /** Monotonic time of the last non-probe request since the drain started. */
  get lastRequestAt (): number {
    return this.#lastRequestAt
  }

  /**
   * Monotonic time a traffic request (not a probe, not a `quietPeriodIgnore`
   * path) last arrived or ended since the drain started: the quiet period
   * counts from here (see Drain#keepServing).
   */
  get lastActivityAt (): number {
    return this.#lastActivityAt
  }

  counts (): ConnectionCounts {
    let upgraded = 0
    for (const conn of this.#connections) if (conn.upgraded) upgraded++
    return {
      open: this.#connections.size,
      inFlight: this.#inFlight,
      servedDuringDrain: this.#servedDuringDrain,
      closedGracefully: this.#closedGracefully,
      destroyed: this.#destroyed,
      upgraded
    }
  }

  /** From now on every response says `Connection: close`, the ones already being handled included. */
  startDraining (): void {
    this.#draining = true
    for (const conn of this.#connections) {
      if (conn.response !== undefined) closeAfterResponse(conn.response)
    }
  }

  /**
   * Closes the sockets that can be closed without cutting a request, and
   * returns the delay after which it should be called again (fresh sockets,
   * lingering ones), or undefined. Called once the listener is closed, and
   * again when that delay is up: by then the load balancer has stopped sending,
   * so an idle socket is idle for good.
   */
  closeIdle (): number | undefined {
    this.#closing = true
    const at = now()
    let recheck = Infinity
    for (const conn of this.#connections) {
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
      if (this.#plainHttp1 && conn.reader === conn.socket && conn.socket.writableLength === 0) {
        conn.socket.destroy()
        // destroy() has closed the fd (the FIN is out): forget it now rather than at its
        // 'close' event, so the drain goes on without waiting for 10,000 of them to be emitted.
        this.#forget(conn.socket)
        continue
      }
      this.#endGracefully(conn)
      recheck = Math.min(recheck, LINGER_MS)
    }
    return recheck === Infinity ? undefined : recheck
  }

  /**
   * Resolves when the drain ended a socket because its last response ended (its
   * linger starts). Socket closes do not count: they leave closeIdle() nothing to
   * do, and waking a scan of every socket at each close is quadratic.
   */
  nextChange (): Promise<void> {
    return new Promise(resolve => { this.#changeWaiters.push(resolve) })
  }

  /** Destroys everything still open; returns what was cut, for the report. */
  destroyAll (): string[] {
    const cut: string[] = []
    for (const conn of this.#connections) {
      if (conn.streams !== undefined && conn.streams.size > 0) for (const res of conn.streams) cut.push(describe(res.req))
      else if (conn.response !== undefined) cut.push(describe(conn.response.req))
      else if (conn.upgraded) cut.push('(upgraded connection)')
      // Unread bytes with nothing in flight: a request was arriving. (Not on an HTTP/2
      // session: it always has unread control frames.)
      else if (conn.inFlight === 0 && conn.reader.bytesRead > conn.bytesAtRest) cut.push('(incomplete request)')
      // Pipelined HTTP/1.1 requests beside the one named above: only the latest is kept, per socket.
      const named = conn.streams?.size ?? (conn.response === undefined ? 0 : 1)
      for (let i = named; i < conn.inFlight; i++) cut.push('(pipelined request)')
      // A socket we already ended with nothing on it is lingering, not cut.
      const lingering = conn.endedAt !== undefined && conn.inFlight === 0 && !conn.upgraded
      if (!lingering) {
        this.#destroyed++
        conn.cut = true
      }
      conn.socket.destroy()
    }
    return cut
  }

  /** The response being written on each socket (on HTTP/2, the latest stream), for the report's event-stream counts. */
  * responses (): Generator<ServerResponse> {
    for (const conn of this.#connections) if (conn.response !== undefined) yield conn.response
  }

  /** Sockets upgraded away from HTTP (WebSocket): Node's own bookkeeping no longer sees them. */
  * upgradedSockets (): Generator<Socket> {
    for (const conn of this.#connections) if (conn.upgraded) yield conn.socket
  }

  /** Resolves when no tracked socket is left open. */
  whenEmpty (): Promise<void> {
    if (this.#connections.size === 0) return Promise.resolve()
    return new Promise(resolve => { this.#emptyWaiters.push(resolve) })
  }

  /** Returns whether it had to end the socket (a response with `Connection: close` has Node end it). */
  #endGracefully (conn: Connection): boolean {
    conn.endedAt ??= now()
    if (conn.socket.writableEnded) return false
    // end(), not destroy(): a FIN never resets a socket that has unread bytes.
    conn.socket.end()
    return true
  }

  #changed (): void {
    if (this.#changeWaiters.length > 0) for (const resolve of this.#changeWaiters.splice(0)) resolve()
  }

  readonly #onConnection = (socket: TrackedSocket): void => {
    const conn: Connection = {
      socket,
      reader: socket,
      acceptedAt: now(),
      inFlight: 0,
      served: 0,
      bytesAtRest: 0,
      response: undefined,
      upgraded: false,
      cut: false,
      endedAt: undefined,
      streams: undefined
    }
    socket[kConnection] = conn
    this.#connections.add(conn)
    socket.on('close', this.#onSocketClose)
  }

  readonly #onSecureConnection = (tlsSocket: TrackedSocket): void => {
    const conn = (parentSocket(tlsSocket) as TrackedSocket | undefined)?.[kConnection]
    if (conn === undefined) return
    tlsSocket[kConnection] = conn
    conn.reader = tlsSocket
  }

  #forget (socket: TrackedSocket): void {
    const conn = socket[kConnection]
    if (conn === undefined || !this.#connections.delete(conn)) return
    if (this.#draining && !conn.cut) this.#closedGracefully++
    if (this.#connections.size === 0) {
      for (const resolve of this.#emptyWaiters.splice(0)) resolve()
    }
  }

  #responseEnded (res: ServerResponse): void {
    const conn = (res as TrackedResponse)[kConnection] ?? (res.req.socket as TrackedSocket)[kConnection]
    this.#inFlight--
    const background = (res as TrackedResponse)[kBackground] === true
    if (!background) this.#trafficInFlight--
    if (conn === undefined) return
    conn.inFlight--
    if (conn.response === res) conn.response = undefined
    conn.streams?.delete(res)
    conn.bytesAtRest = conn.reader.bytesRead
    if (this.#draining && !background) this.#lastActivityAt = now()
    // A response whose headers went out before the drain promised keep-alive;
    // once the listener is closed nobody should reuse the socket, so end it now.
    if (this.#closing && conn.inFlight === 0 && !conn.upgraded && this.#endGracefully(conn)) this.#changed()
  }

  readonly #onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    if (this.#draining) closeAfterResponse(res)
    if (this.#isProbe(req.url)) return
    const conn = (req.socket as TrackedSocket)[kConnection]
    if (conn === undefined) return
    conn.inFlight++
    conn.served++
    conn.response = res
    if (req.httpVersionMajor === 2) {
      (res as TrackedResponse)[kConnection] = conn
      ;(conn.streams ??= new Set()).add(res)
    }
    this.#inFlight++
    res.on('close', this.#onResponseClose)
    if (this.#isBackground(req.url)) {
      (res as TrackedResponse)[kBackground] = true
      if (this.#draining) this.#servedDuringDrain++
      return
    }
    this.#trafficInFlight++
    if (this.#draining) {
      this.#servedDuringDrain++
      this.#lastRequestAt = this.#lastActivityAt = now()
      if (this.#arrivals !== undefined) this.#recordArrival(req, this.#arrivals)
    }
  }

  #recordArrival (req: IncomingMessage, arrivals: Map<string, Arrivals>): void {
    const route = describe(req)
    const entry = arrivals.get(route)
    if (entry !== undefined) {
      entry.count++
      entry.lastAt = this.#lastRequestAt
    } else if (arrivals.size < MAX_ROUTES) {
      arrivals.set(route, { route, count: 1, firstAt: this.#lastRequestAt, lastAt: this.#lastRequestAt })
    }
  }

  readonly #onUpgrade = (req: IncomingMessage): void => {
    const conn = (req.socket as TrackedSocket)[kConnection]
    if (conn !== undefined) conn.upgraded = true
  }
}

function describe (req: IncomingMessage): string {
  const url = req.url ?? ''
  const query = url.indexOf('?')
  return `${req.method ?? 'GET'} ${query === -1 ? url : url.slice(0, query)}`
}
