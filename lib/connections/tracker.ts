// Longer than 150 lines because it is one class on purpose: the per-request path
// (#onRequest, #responseEnded) reaches private counters through two listeners
// created once, with no closure or object per request, and deferred tracking
// (#endDeferral) must see the same counters (docs/design.md, "Connections").
// The record and the in-flight list are in record.ts, upgrades in takeovers.ts.
import type { Socket } from 'node:net'
import { Server as Http1Server, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { Server as HttpsServer } from 'node:https'
import { Server as TlsServer } from 'node:tls'
import { now } from '../deadline.js'
import { closeAfterResponse, hasConnectionsList, keepAliveAfterAll, listedSockets, openCount, parentSocket, secondaryServers } from './socket-internals.js'
import { recordArrival, type Arrivals } from './arrivals.js'
import { endGracefully } from './closing.js'
import { InFlightList, newRecord, type Connection } from './record.js'
import { TakeoverWatch } from './takeovers.js'

export type { Arrivals } from './arrivals.js'
export type { Connection } from './record.js'

const kConnection = Symbol('fastify-graceful-drain.connection')
/** Deferred tracking: when the socket was accepted, all it carries until its first request. */
const kAcceptedAt = Symbol('fastify-graceful-drain.acceptedAt')

type TrackedSocket = Socket & { [kConnection]?: Connection, [kAcceptedAt]?: number }
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
  readonly #takeovers: TakeoverWatch
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
  /** Probes being answered: with #inFlight, whether any response at all is being written. */
  #probesInFlight = 0
  /** In flight and not background: what the quiet period waits for. */
  #trafficInFlight = 0
  #arrivals: Map<string, Arrivals> | undefined
  #draining = false
  /**
   * Deferred tracking (plain HTTP/1, until the listener closes): a socket costs a time stamp,
   * and a record at its first request, but no Set entry and no 'close' listener. Node's own
   * list of each server's connections (socket-internals.ts, listedSockets) is read instead,
   * at the first closing scan (open()); the sockets that scan leaves open join the Set
   * (keep()), and every socket accepted after it is tracked in full. A new connection per
   * request costs that much less, and the 10,000 idle sockets a drain closes at once never
   * enter the Set at all (bench/README.md). TLS and HTTP/2 servers are tracked in full from
   * the start: a socket in its TLS handshake is not in Node's list, and HTTP/2 sessions are
   * few and long-lived.
   */
  #deferred: boolean
  /** The servers whose connection lists deferred tracking has found: one lookup per server, not per socket. */
  readonly #listed: Server[] = []
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
    this.#deferred = this.#plainHttp1
    this.#isProbe = isProbe
    this.#isBackground = isBackground
    const tracker = this
    this.#onSocketClose = function () { tracker.#socketClosed(this[kConnection]) }
    this.#onResponseClose = function () { tracker.#responseEnded(this, false) }
    this.#onProbeClose = function () { tracker.#responseEnded(this, true) }
    this.#listen(server)
    // Upgrades (and CONNECT tunnels) are tracked only while the app itself listens for them (takeovers.ts).
    this.#takeovers = new TakeoverWatch(server, this.#onUpgrade)
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
    this.#takeovers.detach()
  }

  get inFlight (): number {
    return this.#inFlight
  }

  /** Requests in flight that count as traffic (not probes, not `quietPeriodIgnore` paths). */
  get trafficInFlight (): number {
    return this.#trafficInFlight
  }

  /** Open sockets. While tracking is deferred, Node's own count (upgraded sockets, the only ones in the Set then, included). */
  get size (): number {
    return this.#deferred ? this.#openInServers() : this.#connections.size
  }

  #openInServers (): number {
    let open = 0
    for (const server of this.#servers) open += openCount(server)
    return open
  }

  /**
   * Every open connection, for a closing scan (closing.ts). The first call ends deferred
   * tracking: the sockets Node lists are handed out without joining the Set, the closing
   * policy keep()s those it leaves open, and from then on every new socket is tracked in full.
   */
  open (): Iterable<Connection> {
    if (!this.#deferred) return this.#connections
    return [...this.#connections, ...this.#endDeferral()]
  }

  /** While tracking is deferred during a drain: what the report's closedGracefully is worked out from (#endDeferral). */
  #openAtStart = 0
  #acceptedInDelay = 0

  /**
   * Ends deferred tracking; returns the records of the sockets Node lists now (every
   * socket the tracker saw accepted). Those that closed since the drain started had no
   * 'close' listener to count them, so the report's closedGracefully counts them here:
   * open at the start, plus accepted since, less open now (Node's counts). The drain
   * destroys nothing before this point, and forget() counts nothing until it.
   */
  #endDeferral (): Connection[] {
    this.#deferred = false
    const records: Connection[] = []
    for (const server of this.#servers) {
      for (const socket of listedSockets(server) ?? []) {
        const conn = this.#recordOf(socket as TrackedSocket)
        if (conn !== undefined) records.push(conn)
      }
    }
    if (this.#draining) this.#closedGracefully += this.#openAtStart + this.#acceptedInDelay - this.#openInServers()
    return records
  }

  /** The closing policy leaves `conn` open for now: it joins the Set, and its 'close' reaches the tracker. */
  keep (conn: Connection): void {
    this.#track(conn)
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
      open: this.size,
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
    if (this.#deferred) this.#openAtStart = this.#openInServers()
    this.#draining = true
    if (this.#inFlight + this.#probesInFlight === 0) return
    for (const conn of this.#withRequests()) {
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
  responses (): ServerResponse[] {
    const responses: ServerResponse[] = []
    // Probes are never event streams: with no other response in flight, no walk of every socket.
    if (this.#inFlight === 0) return responses
    for (const conn of this.#withRequests()) if (conn.response !== undefined) responses.push(conn.response)
    return responses
  }

  /** Sockets upgraded away from HTTP (WebSocket): Node's own bookkeeping no longer sees them. */
  * upgradedSockets (): Generator<Socket> {
    for (const conn of this.#connections) if (conn.upgraded) yield conn.socket
  }

  /** Resolves when no tracked socket is left open. Call it after the first open(): before, the Set does not hold them all. */
  whenEmpty (): Promise<void> {
    this.#trackAll()
    if (this.#connections.size === 0) return Promise.resolve()
    return new Promise(resolve => { this.#emptyWaiters.push(resolve) })
  }

  #changed (): void {
    if (this.#changeWaiters.length > 0) for (const resolve of this.#changeWaiters.splice(0)) resolve()
  }

  /**
   * Ends deferred tracking with every socket Node lists in the Set, each with its 'close'
   * listener, as if tracked from the start: when a server without Node's list turns up, or
   * when someone waits for the Set to empty before any closing scan. Sockets accepted before
   * the plugin was registered carry no time stamp and stay untracked, as they would have been.
   */
  #trackAll (): void {
    if (!this.#deferred) return
    for (const conn of this.#endDeferral()) this.#track(conn)
  }

  /** The connections with a request in flight: walked at the drain's start instead of every socket. */
  readonly #busy = new InFlightList()

  #withRequests (): Connection[] {
    return this.#busy.all()
  }

  /** The socket's record, created at its first request (deferred) or found; undefined for a socket the tracker never saw accepted. */
  #recordOf (socket: TrackedSocket): Connection | undefined {
    const conn = socket[kConnection]
    if (conn !== undefined) return conn
    const acceptedAt = socket[kAcceptedAt]
    return acceptedAt === undefined ? undefined : this.#adopt(socket, acceptedAt)
  }

  #track (conn: Connection): void {
    this.#watch(conn)
    this.#connections.add(conn)
  }

  #watch (conn: Connection): void {
    if (conn.watched) return
    conn.watched = true
    conn.socket.on('close', this.#onSocketClose)
  }

  readonly #onConnection = (socket: TrackedSocket): void => {
    if (this.#deferred) {
      if (this.#listsSocketsOf((socket as Socket & { server?: Server }).server)) {
        socket[kAcceptedAt] = now()
        if (this.#draining) this.#acceptedInDelay++
        return
      }
      // A server (or a Node) without the list: every socket is tracked in full from here on.
      if (this.#draining) this.#acceptedInDelay++
      this.#trackAll()
    }
    this.#track(this.#adopt(socket, now()))
  }

  #adopt (socket: TrackedSocket, acceptedAt: number): Connection {
    const conn = newRecord(socket, acceptedAt)
    socket[kConnection] = conn
    return conn
  }

  /** Whether Node lists `server`'s sockets, so that deferred tracking can find them at the drain. */
  #listsSocketsOf (server: Server | undefined): boolean {
    if (server === undefined) return false
    if (this.#listed.includes(server)) return true
    if (!this.#servers.includes(server) || !hasConnectionsList(server)) return false
    this.#listed.push(server)
    return true
  }

  readonly #onSecureConnection = (tlsSocket: TrackedSocket): void => {
    const conn = (parentSocket(tlsSocket) as TrackedSocket | undefined)?.[kConnection]
    if (conn === undefined) return
    tlsSocket[kConnection] = conn
    conn.reader = tlsSocket
  }

  /**
   * A socket closed. On Node 20 and 22, pipelined HTTP/1.1 responses still queued behind the
   * one being written never emit 'close' (Node closes only the response attached to the
   * socket), so the requests they answer are settled after it (#settleQueued), or the in-flight
   * counts, and the quiet period that waits on them, would never come back to 0.
   */
  #socketClosed (conn: Connection | undefined): void {
    if (conn !== undefined && conn.inFlight > 0 && conn.streams === undefined) setImmediate(this.#settleQueued, conn)
    this.forget(conn)
  }

  /**
   * After a socket's 'close', once the responses that are going to say so have: the one being
   * written closes with the socket, and Node 24 also closes the queued ones (abortOutgoing, a
   * 'close' on the next tick), where Node 20 and 22 never do. Whatever is still in flight by this
   * turn of the event loop never will end: it is settled here, on every Node alike.
   */
  readonly #settleQueued = (conn: Connection): void => {
    const queued = conn.inFlight
    if (queued === 0) return
    const probes = conn.probesInFlight
    const background = conn.backgroundInFlight
    this.#inFlight -= queued - probes
    this.#probesInFlight -= probes
    this.#trafficInFlight -= queued - probes - background
    conn.inFlight = conn.probesInFlight = conn.backgroundInFlight = 0
    this.#busy.unlink(conn)
    if (this.#draining && queued > probes + background) this.#lastActivityAt = now()
  }

  /** Stops tracking `conn`: at its socket's 'close', or as soon as the closing policy destroyed it. */
  forget (conn: Connection | undefined): void {
    if (conn === undefined || conn.gone) return
    conn.gone = true
    this.#connections.delete(conn)
    // While tracking is deferred, #endDeferral counts every socket that closed, from Node's counts.
    if (this.#draining && !conn.cut && !this.#deferred) this.#closedGracefully++
    if (this.#connections.size === 0) {
      for (const resolve of this.#emptyWaiters.splice(0)) resolve()
    }
  }

  #responseEnded (res: ServerResponse, probe: boolean): void {
    const conn = (res as TrackedResponse)[kConnection] ?? (res.req.socket as TrackedSocket)[kConnection]
    const background = (res as TrackedResponse)[kBackground] === true
    if (probe) this.#probesInFlight--
    else {
      this.#inFlight--
      if (!background) this.#trafficInFlight--
    }
    if (conn === undefined) return
    if (--conn.inFlight === 0) this.#busy.unlink(conn)
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
    const conn = this.#recordOf(req.socket as TrackedSocket)
    if (conn === undefined) {
      if (this.#draining) closeAfterResponse(res)
      return
    }
    // HTTP/2 never says Connection: close (the header is forbidden there): its sessions get GOAWAY.
    if (this.#draining && req.httpVersionMajor === 1) this.#markLast(conn, res)
    // Pipelined requests: only the socket's 'close' can settle the ones queued behind the first (#socketClosed).
    if (++conn.inFlight === 1) this.#busy.link(conn)
    else this.#watch(conn)
    conn.served++
    conn.response = res
    if (req.httpVersionMajor === 2) {
      (res as TrackedResponse)[kConnection] = conn
      ;(conn.streams ??= new Set()).add(res)
    }
    if (this.#isProbe(req.url)) {
      conn.probesInFlight++
      this.#probesInFlight++
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
    const conn = this.#recordOf(req.socket as TrackedSocket)
    if (conn === undefined) return
    conn.upgraded = true
    // Node takes an upgraded (or CONNECT) socket out of its list: from now on only the tracker knows it.
    this.#track(conn)
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
