// Longer than 150 lines because it is one class on purpose: the per-request path
// (#onRequest, #responseEnded) reaches private counters through two listeners
// created once, with no closure or object per request (docs/design.md, "Connections").
import type { Socket } from 'node:net'
import { Server as Http1Server, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { Server as HttpsServer } from 'node:https'
import { Server as TlsServer } from 'node:tls'
import { now } from '../deadline.js'
import { attachedResponse, closeAfterResponse, keepAliveAfterAll, parentSocket, secondaryServers } from './socket-internals.js'
import { recordArrival, type Arrivals } from './arrivals.js'
import { endGracefully } from './closing.js'

export type { Arrivals } from './arrivals.js'

const kConnection = Symbol('fastify-graceful-drain.connection')

/** One client socket, as the closing policy (closing.ts) sees it. */
export interface Connection {
  readonly socket: Socket
  /** The socket the HTTP parser reads: the TLS socket once the handshake is done, else the TCP one. */
  reader: Socket
  readonly acceptedAt: number
  /** Requests on this socket not yet answered, probes included: a socket is idle only at 0. */
  inFlight: number
  /** Of `inFlight`, the probes and the `quietPeriodIgnore` requests: what the global counters left out. */
  probesInFlight: number
  backgroundInFlight: number
  /** Requests seen on this socket, probes included: a socket that has sent one is no longer fresh. */
  served: number
  /**
   * `reader.bytesRead` when its last response ended, whoever sent it (a route, a probe, the
   * preStop endpoint): more than that means bytes of a new request have come in.
   */
  bytesAtRest: number
  /** The response being written, to mark it `Connection: close` and to name its route if it is cut. */
  response: ServerResponse | undefined
  /** HTTP/1 during the drain: the response this drain told to say `Connection: close`, the last one on the socket so far. */
  marked: ServerResponse | undefined
  upgraded: boolean
  /** Destroyed by the drain at the budget, as opposed to closed gracefully. */
  cut: boolean
  /** `reader.bytesRead` when the closing policy last saw it change while waiting on the client (-1: not waiting). */
  stallBytes: number
  /** Monotonic time of that sighting: no byte since then means no progress since then (closing.ts, stalls). */
  stallSince: number
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

export interface ConnectionCounts {
  open: number
  inFlight: number
  servedDuringDrain: number
  closedGracefully: number
  destroyed: number
  upgraded: number
}

/**
 * Tracks sockets and the requests on them for one server: counters, waiters
 * and the connections the closing policy (closing.ts) walks. Everything per
 * request is a counter and a shared listener: no closures, timers or objects per request.
 */
export class ConnectionTracker {
  readonly #server: Server
  /** Every server the app listens on: `#server` first, then the ones Fastify opened beside it (addServer). */
  readonly #servers: Server[]
  /** An http.Server (not https, not http2): its idle sockets can be closed without a TLS or HTTP/2 goodbye. */
  readonly #plainHttp1: boolean
  readonly #http1: boolean
  readonly #secure: boolean
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
  /** What the closing policy destroyed before the budget (stalled requests), not yet handed to the report. */
  #earlyCuts: string[] = []

  // Plain functions, created once per tracker, because Node calls them with the
  // socket or response as `this`; private fields stay reachable through `tracker`.
  readonly #onSocketClose: (this: TrackedSocket) => void
  readonly #onResponseClose: (this: ServerResponse) => void
  /** The same for a probe's response: it ends a request on its socket, but it was never work or traffic. */
  readonly #onProbeClose: (this: ServerResponse) => void

  constructor (server: Server, isProbe: (url: string | undefined) => boolean,
    isBackground: (url: string | undefined) => boolean = () => false) {
    this.#server = server
    this.#servers = [server]
    this.#plainHttp1 = server instanceof Http1Server
    this.#http1 = this.#plainHttp1 || server instanceof HttpsServer
    this.#secure = server instanceof TlsServer
    this.#isProbe = isProbe
    this.#isBackground = isBackground
    const tracker = this
    this.#onSocketClose = function () { tracker.#socketClosed(this[kConnection]) }
    this.#onResponseClose = function () { tracker.#responseEnded(this, false) }
    this.#onProbeClose = function () { tracker.#responseEnded(this, true) }
    this.#listen(server)
    // Upgrades are tracked only while the app itself listens for them: see #onListenerAdded.
    server.on('newListener', this.#onListenerAdded)
    server.on('removeListener', this.#onListenerRemoved)
    if (server.listenerCount('upgrade') > 0) this.#watchUpgrades(true)
  }

  #listen (server: Server): void {
    server.on('connection', this.#onConnection)
    server.on('secureConnection', this.#onSecureConnection)
    // Prepended so the drain marks the response before Fastify starts writing it.
    server.prependListener('request', this.#onRequest)
  }

  /**
   * Tracks a server Fastify opened beside the main one (socket-internals.ts,
   * secondaryServers): its sockets join the same books, so they get the same
   * Connection: close, idle closing, in-flight wait and report. No 'upgrade'
   * listener: Fastify forwards a secondary server's upgrades to the main one's.
   */
  addServer (server: Server): void {
    if (this.#servers.includes(server)) return
    this.#servers.push(server)
    this.#listen(server)
  }

  /** Every server the app listens on, the main one first: the drain closes each listener (closing.ts, closeListeners). */
  get servers (): readonly Server[] {
    return this.#servers
  }

  detach (): void {
    for (const server of this.#servers) {
      server.removeListener('connection', this.#onConnection)
      server.removeListener('secureConnection', this.#onSecureConnection)
      server.removeListener('request', this.#onRequest)
    }
    this.#server.removeListener('newListener', this.#onListenerAdded)
    this.#server.removeListener('removeListener', this.#onListenerRemoved)
    this.#watchUpgrades(false)
  }

  #watchingUpgrades = false

  #watchUpgrades (on: boolean): void {
    if (on === this.#watchingUpgrades) return
    this.#watchingUpgrades = on
    if (on) this.#server.on('upgrade', this.#onUpgrade)
    else this.#server.removeListener('upgrade', this.#onUpgrade)
  }

  /**
   * The tracker listens for 'upgrade' only while someone else does (@fastify/websocket, the
   * app). Node hands a request with an `Upgrade` header to the 'upgrade' listeners whenever
   * there is one, and answers it as a normal request when there is none
   * (`server.listenerCount('upgrade') > 0` in _http_server.js, parserOnIncoming). A listener
   * of ours alone made every such request (curl --http2's `Upgrade: h2c`, `Upgrade: websocket`
   * to any route) vanish unanswered into it, and its socket outside Node's request timeouts.
   * 'newListener' is emitted before the app's listener is added, so ours comes first.
   */
  readonly #onListenerAdded = (event: string | symbol, listener: unknown): void => {
    if (event === 'upgrade' && listener !== this.#onUpgrade) this.#watchUpgrades(true)
  }

  /** 'removeListener' comes after the removal: once only ours is left, ours goes too. */
  readonly #onListenerRemoved = (event: string | symbol, listener: unknown): void => {
    if (event !== 'upgrade') return
    if (listener === this.#onUpgrade) this.#watchingUpgrades = false
    else if (this.#watchingUpgrades && this.#server.listenerCount('upgrade') === 1) this.#watchUpgrades(false)
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

  /** The open connections, for the closing policy (closing.ts). */
  get connections (): ReadonlySet<Connection> {
    return this.#connections
  }

  /** An http.Server (not https, not http2): its idle sockets can be closed without a TLS or HTTP/2 goodbye. */
  get plainHttp1 (): boolean {
    return this.#plainHttp1
  }

  /** An HTTP/1 server, plain or TLS (not HTTP/2): its requests arrive as bytes the parser waits on. */
  get http1 (): boolean {
    return this.#http1
  }

  /** A TLS server (HTTPS, or HTTP/2 over TLS): a socket is in its handshake until 'secureConnection'. */
  get secure (): boolean {
    return this.#secure
  }

  /** The closing policy destroyed `conn` before the budget (closing.ts, stalls): counted as forced, and `routes` named in the report. */
  cutEarly (conn: Connection, routes: readonly string[]): void {
    this.markCut(conn)
    this.#earlyCuts.push(...routes)
  }

  /** The routes cut before the budget that no one has reported yet; each is handed out once. */
  takeEarlyCuts (): string[] {
    return this.#earlyCuts.splice(0)
  }

  /** The listener is closed: from now on a response that ends also ends its socket (see #responseEnded). */
  startClosing (): void {
    this.#closing = true
  }

  /** Counts `conn` as destroyed at the budget, as opposed to closed gracefully. */
  markCut (conn: Connection): void {
    if (conn.cut) return
    this.#destroyed++
    conn.cut = true
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
   * counts from here (delay.ts).
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

  /**
   * From now on the last response on every socket says `Connection: close`, the ones already
   * being handled included (unless their headers are out: those sockets are ended once the
   * listener closes, see #responseEnded).
   */
  startDraining (): void {
    this.#draining = true
    for (const conn of this.#connections) {
      if (conn.response !== undefined && conn.streams === undefined) this.#markLast(conn, conn.response)
    }
  }

  /**
   * During the drain, `res` is the last response on its HTTP/1 socket so far: it says
   * `Connection: close`, and the one marked before it (a pipelined request came in behind
   * it) no longer does while its headers are unwritten. Marking any response but the last
   * would make Node drop the pipelined responses behind it, whose requests the app has
   * already handled (socket-internals.ts, closeAfterResponse). If the earlier one's
   * `Connection: close` is already written, the client was told to stop there and to retry
   * what it pipelined after it (RFC 9112 §9.3.2): nothing on the server can change that.
   */
  #markLast (conn: Connection, res: ServerResponse): void {
    if (conn.marked !== undefined && conn.marked !== res) keepAliveAfterAll(conn.marked)
    conn.marked = closeAfterResponse(res) ? res : undefined
  }

  /**
   * Resolves when the drain ended a socket because its last response ended (its
   * linger starts). Socket closes do not count: they leave closeIdle() nothing to
   * do, and waking a scan of every socket at each close is quadratic.
   */
  nextChange (): Promise<void> {
    return new Promise(resolve => { this.#changeWaiters.push(resolve) })
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

  #changed (): void {
    if (this.#changeWaiters.length > 0) for (const resolve of this.#changeWaiters.splice(0)) resolve()
  }

  readonly #onConnection = (socket: TrackedSocket): void => {
    const conn: Connection = {
      socket,
      reader: socket,
      acceptedAt: now(),
      inFlight: 0,
      probesInFlight: 0,
      backgroundInFlight: 0,
      served: 0,
      bytesAtRest: 0,
      response: undefined,
      marked: undefined,
      upgraded: false,
      cut: false,
      stallBytes: -1,
      stallSince: 0,
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

  /**
   * A socket closed. Pipelined HTTP/1.1 responses still queued behind the one being written
   * never emit 'close' (Node only closes the response attached to the socket), so the
   * requests they answer are settled here, or the in-flight counts, and the quiet period
   * that waits on them, would never come back to 0.
   */
  #socketClosed (conn: Connection | undefined): void {
    if (conn !== undefined && conn.inFlight > 1 && conn.streams === undefined) {
      const attached = attachedResponse(conn.reader)
      const closing = attached === undefined ? 0 : 1
      const probes = conn.probesInFlight - (closing === 1 && this.#isProbe(attached?.req.url) ? 1 : 0)
      const background = conn.backgroundInFlight - (closing === 1 && (attached as TrackedResponse)[kBackground] === true ? 1 : 0)
      const queued = conn.inFlight - closing
      this.#inFlight -= queued - probes
      this.#trafficInFlight -= queued - probes - background
      conn.inFlight -= queued
      conn.probesInFlight -= probes
      conn.backgroundInFlight -= background
      if (this.#draining && queued > probes + background) this.#lastActivityAt = now()
    }
    this.forget(conn)
  }

  /** Stops tracking `conn`: at its socket's 'close', or as soon as the closing policy destroyed it. */
  forget (conn: Connection | undefined): void {
    if (conn === undefined || !this.#connections.delete(conn)) return
    if (this.#draining && !conn.cut) this.#closedGracefully++
    if (this.#connections.size === 0) {
      for (const resolve of this.#emptyWaiters.splice(0)) resolve()
    }
  }

  #responseEnded (res: ServerResponse, probe: boolean): void {
    const conn = (res as TrackedResponse)[kConnection] ?? (res.req.socket as TrackedSocket)[kConnection]
    const background = (res as TrackedResponse)[kBackground] === true
    if (!probe) {
      this.#inFlight--
      if (!background) this.#trafficInFlight--
    }
    if (conn === undefined) return
    conn.inFlight--
    if (probe) conn.probesInFlight--
    else if (background) conn.backgroundInFlight--
    if (conn.response === res) conn.response = undefined
    if (conn.marked === res) conn.marked = undefined
    conn.streams?.delete(res)
    // Every finished response moves the mark, a probe's too: a socket whose last request was
    // a probe is as idle as any other, not one with a request arriving (issue 16).
    conn.bytesAtRest = conn.reader.bytesRead
    if (this.#draining && !probe && !background) this.#lastActivityAt = now()
    // A response whose headers went out before the drain promised keep-alive;
    // once the listener is closed nobody should reuse the socket, so end it now.
    if (this.#closing && conn.inFlight === 0 && !conn.upgraded && endGracefully(conn)) this.#changed()
  }

  /**
   * Prepended, so the drain marks the response before anyone writes it. Probes and the
   * preStop endpoint are requests on their socket like any other (its idle mark moves when
   * they end), but neither in-flight work nor traffic. Nothing here allocates for a
   * request that is not a probe: counters, and one listener created once.
   */
  readonly #onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const conn = (req.socket as TrackedSocket)[kConnection]
    if (conn === undefined) {
      if (this.#draining) closeAfterResponse(res)
      return
    }
    // HTTP/2 never says Connection: close (the header is forbidden there): its sessions get GOAWAY.
    if (this.#draining && req.httpVersionMajor === 1) this.#markLast(conn, res)
    conn.inFlight++
    conn.served++
    conn.response = res
    if (req.httpVersionMajor === 2) {
      (res as TrackedResponse)[kConnection] = conn
      ;(conn.streams ??= new Set()).add(res)
    }
    if (this.#isProbe(req.url)) {
      conn.probesInFlight++
      res.on('close', this.#onProbeClose)
      return
    }
    this.#inFlight++
    res.on('close', this.#onResponseClose)
    if (this.#isBackground(req.url)) {
      (res as TrackedResponse)[kBackground] = true
      conn.backgroundInFlight++
      if (this.#draining) this.#servedDuringDrain++
      return
    }
    this.#trafficInFlight++
    if (this.#draining) {
      this.#servedDuringDrain++
      this.#lastRequestAt = this.#lastActivityAt = now()
      if (this.#arrivals !== undefined) recordArrival(this.#arrivals, req, this.#lastRequestAt)
    }
  }

  readonly #onUpgrade = (req: IncomingMessage): void => {
    const conn = (req.socket as TrackedSocket)[kConnection]
    if (conn !== undefined) conn.upgraded = true
  }
}

/**
 * Tracks every server the app listens on, not only `app.server`: `listen({ host:
 * 'localhost' })` makes Fastify open a second server for ::1 (or 127.0.0.1),
 * which it creates inside listen() and records just before the onListen hooks
 * run. This hook adds them to `tracker` then, before any connection to them can
 * have been accepted: Fastify binds them and runs the onListen hooks in the same
 * turn of the event loop.
 */
export function trackEveryListener (app: { addHook (name: 'onListen', hook: () => Promise<void>): unknown }, tracker: ConnectionTracker): void {
  app.addHook('onListen', async () => {
    for (const server of secondaryServers(app)) tracker.addServer(server as Server)
  })
}
