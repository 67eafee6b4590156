import type { Http2Session } from 'node:http2'
import type { Server } from 'node:net'
import type { DrainParticipant } from '../participants.js'
import { longLivedCounts, type LongLivedCounts } from '../report.js'

/**
 * HTTP/2 sessions of one server (`http2: true`, h2c or TLS with ALPN): every
 * session gets GOAWAY from the first instant of the drain, sessions that
 * arrive during the drain get it after their first stream, open streams
 * finish, and what is left at the budget is destroyed.
 * Per session, not per request: a Set entry and two listeners.
 */
export class Http2Sessions {
  readonly #server: Server
  readonly #sessions = new Set<Http2Session>()
  #draining = false
  #seen = 0
  #destroyed = 0

  constructor (server: Server) {
    this.#server = server
    server.on('session', this.#onSession)
  }

  detach (): void {
    this.#server.removeListener('session', this.#onSession)
  }

  /** Drain start: GOAWAY to every session; each closes once its open streams are done. */
  startDraining (): void {
    this.#draining = true
    this.#seen = this.#sessions.size
    this.closeAll()
  }

  /** Listener closed: sessions opened during the delay that never sent a stream are told to go away too. */
  closeAll (): void {
    for (const session of this.#sessions) goAway(session)
  }

  /** The budget is spent: destroy what is still open (drain.ts destroys their sockets after the last participant). */
  destroyAll (): void {
    for (const session of this.#sessions) {
      this.#destroyed++
      session.destroy()
    }
    this.#sessions.clear()
  }

  counts (): LongLivedCounts {
    return longLivedCounts(this.#seen, this.#destroyed)
  }

  readonly #onSession = (session: Http2Session): void => {
    this.#sessions.add(session)
    session.once('close', () => this.#sessions.delete(session))
    if (this.#draining) {
      // Not at once: a client that has not sent its first request yet would have it
      // refused (Node's client does not retry it); it is served first.
      this.#seen++
      session.once('stream', () => goAway(session))
    }
  }
}

/**
 * `close()` sends GOAWAY with the last stream the server has seen and lets the
 * open streams finish; later streams are refused, which tells the client they
 * were never processed and are safe to retry elsewhere. (A two-step "shutdown
 * notice", GOAWAY with the largest stream id first, is not possible here:
 * nghttp2 ignores every new stream after any GOAWAY Node sends, so the client
 * would wait on streams it was promised.)
 */
function goAway (session: Http2Session): void {
  if (!session.closed && !session.destroyed) session.close()
}

/** HTTP/2's part in the drain, when the server speaks it (Fastify `http2: true`). */
export function http2Participant (server: Server): DrainParticipant {
  const sessions = new Http2Sessions(server)
  return {
    name: 'http2',
    draining: () => sessions.startDraining(),
    closing: () => sessions.closeAll(),
    budgetSpent: () => sessions.destroyAll(),
    report: () => ({ http2Sessions: sessions.counts() }),
    dispose: () => sessions.detach()
  }
}
