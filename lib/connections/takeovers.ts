import type { IncomingMessage, Server } from 'node:http'

/** Events on which Node hands a socket over to the app, out of HTTP (WebSocket upgrades, CONNECT tunnels). */
const TAKEOVERS = ['upgrade', 'connect'] as const
type Takeover = typeof TAKEOVERS[number]
const isTakeover = (event: string | symbol): event is Takeover => event === 'upgrade' || event === 'connect'

/**
 * Tells the tracker when Node hands a socket over to the app (a WebSocket
 * upgrade, a CONNECT tunnel), but listens for 'upgrade' and 'connect' only
 * while the app itself does (@fastify/websocket, a proxy). Node hands a request
 * with an `Upgrade` header to the 'upgrade' listeners whenever there is one, and
 * answers it as a normal request when there is none (`server.listenerCount('upgrade') > 0`
 * in _http_server.js, parserOnIncoming). A listener of ours alone made every such
 * request (curl --http2's `Upgrade: h2c`, `Upgrade: websocket` to any route)
 * vanish unanswered into it, and its socket outside Node's request timeouts.
 * 'newListener' is emitted before the app's listener is added, so ours comes
 * first. Both kinds of socket leave Node's own list of connections, which the
 * tracker's deferred tracking reads at the drain: from then on only the tracker knows them.
 */
export class TakeoverWatch {
  readonly #server: Server
  readonly #onTakeover: (req: IncomingMessage) => void
  /** The takeover events listened to now. */
  readonly #watching = new Set<Takeover>()

  constructor (server: Server, onTakeover: (req: IncomingMessage) => void) {
    this.#server = server
    this.#onTakeover = onTakeover
    server.on('newListener', this.#onListenerAdded)
    server.on('removeListener', this.#onListenerRemoved)
    for (const event of TAKEOVERS) if (server.listenerCount(event) > 0) this.#watch(event, true)
  }

  detach (): void {
    this.#server.removeListener('newListener', this.#onListenerAdded)
    this.#server.removeListener('removeListener', this.#onListenerRemoved)
    for (const event of TAKEOVERS) this.#watch(event, false)
  }

  #watch (event: Takeover, on: boolean): void {
    if (on === this.#watching.has(event)) return
    if (on) {
      this.#watching.add(event)
      this.#server.on(event, this.#onTakeover)
    } else {
      this.#watching.delete(event)
      this.#server.removeListener(event, this.#onTakeover)
    }
  }

  readonly #onListenerAdded = (event: string | symbol, listener: unknown): void => {
    if (isTakeover(event) && listener !== this.#onTakeover) this.#watch(event, true)
  }

  /** 'removeListener' comes after the removal: once only ours is left, ours goes too. */
  readonly #onListenerRemoved = (event: string | symbol, listener: unknown): void => {
    if (!isTakeover(event)) return
    if (listener === this.#onTakeover) this.#watching.delete(event)
    else if (this.#watching.has(event) && this.#server.listenerCount(event) === 1) this.#watch(event, false)
  }
}
