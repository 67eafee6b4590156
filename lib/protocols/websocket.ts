import type { EventEmitter } from 'node:events'
import type { FastifyInstance } from 'fastify'
import type { DrainParticipant } from '../participants.js'
import { longLivedCounts, type LongLivedCounts } from '../report.js'

/** 1001 "going away" (RFC 6455 §7.4.1): the server is going down; clients reconnect, through the load balancer, elsewhere. */
export const GOING_AWAY = 1001
const REASON = 'server draining'

/** The part of a `ws` WebSocket (what @fastify/websocket hands out) the drain uses; structural, so `ws` stays optional. */
interface WebSocketLike extends EventEmitter {
  close (code?: number, reason?: string): void
  terminate (): void
}

interface WebSocketServerLike extends EventEmitter {
  clients?: Set<WebSocketLike>
}

/**
 * WebSockets of @fastify/websocket (`fastify.websocketServer`): each gets close
 * code 1001 when the listener closes, i.e. after `drainDelay`, not at drain
 * start. During the delay the load balancer may still route new connections
 * here: a client told to go away at once would reconnect straight back to this
 * pod and be sent away a second time. After the delay it lands on another pod,
 * and the close handshake (one round trip) easily fits in the rest of the budget.
 * Sockets still open at the budget (a peer that never answers the close frame)
 * are destroyed; the tracker destroys any other upgraded socket there too.
 */
export class WebSockets {
  readonly #app: FastifyInstance
  readonly #open = new Set<WebSocketLike>()
  #server: WebSocketServerLike | undefined
  #seen = 0
  #destroyed = 0

  constructor (app: FastifyInstance) {
    this.#app = app
  }

  /** Close code 1001 to every open WebSocket, and to any that still opens on a kept-alive socket. */
  goAway (): void {
    this.#server = (this.#app as FastifyInstance & { websocketServer?: WebSocketServerLike }).websocketServer
    if (this.#server === undefined) return
    for (const socket of this.#server.clients ?? []) this.#goAway(socket)
    this.#server.on('connection', this.#goAway)
  }

  /** The budget is spent: whoever has not finished the close handshake is cut. */
  destroyAll (): void {
    for (const socket of this.#open) {
      this.#destroyed++
      socket.terminate()
    }
    this.#open.clear()
  }

  detach (): void {
    this.#server?.removeListener('connection', this.#goAway)
  }

  counts (): LongLivedCounts | undefined {
    if (this.#seen === 0) return undefined
    return longLivedCounts(this.#seen, this.#destroyed)
  }

  readonly #goAway = (socket: WebSocketLike): void => {
    if (this.#open.has(socket)) return
    this.#open.add(socket)
    this.#seen++
    socket.once('close', () => this.#open.delete(socket))
    socket.close(GOING_AWAY, REASON)
  }
}

/** WebSockets' part in the drain; a no-op for apps without @fastify/websocket. */
export function webSocketParticipant (app: FastifyInstance): DrainParticipant {
  const sockets = new WebSockets(app)
  return {
    name: 'websocket',
    closing: () => sockets.goAway(),
    budgetSpent: () => sockets.destroyAll(),
    report: () => ({ webSockets: sockets.counts() }),
    dispose: () => sockets.detach()
  }
}
