import type { Socket } from 'node:net'
import type { ServerResponse } from 'node:http'

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
  /** Its socket's 'close' reaches the tracker: always once tracked, before that only if requests were pipelined on it. */
  watched: boolean
  /** Closed, as far as the books go: counted once, whether it was in the Set or not (forget). */
  gone: boolean
  /** In the list of sockets with a request in flight (InFlightList), linked through `prev`/`next`: no allocation per request. */
  busy: boolean
  prev: Connection | undefined
  next: Connection | undefined
}

/** A socket's record, as the tracker creates it: at its accept, or at its first request (deferred tracking). */
export function newRecord (socket: Socket, acceptedAt: number): Connection {
  return {
    socket,
    reader: socket,
    acceptedAt,
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
    streams: undefined,
    watched: false,
    gone: false,
    busy: false,
    prev: undefined,
    next: undefined
  }
}

/**
 * The connections with a request in flight, as a doubly linked list through
 * their own `prev`/`next` fields: joining and leaving it on every request
 * allocates nothing, and the drain's start walks only these instead of every
 * open socket (10,000 idle ones, say).
 */
export class InFlightList {
  #head: Connection | undefined

  /** `conn` has its first request in flight. */
  link (conn: Connection): void {
    conn.busy = true
    conn.next = this.#head
    if (this.#head !== undefined) this.#head.prev = conn
    this.#head = conn
  }

  /** `conn` has no request in flight any more. */
  unlink (conn: Connection): void {
    if (!conn.busy) return
    conn.busy = false
    if (conn.prev === undefined) this.#head = conn.next
    else conn.prev.next = conn.next
    if (conn.next !== undefined) conn.next.prev = conn.prev
    conn.prev = conn.next = undefined
  }

  all (): Connection[] {
    const busy: Connection[] = []
    for (let conn = this.#head; conn !== undefined; conn = conn.next) busy.push(conn)
    return busy
  }
}
