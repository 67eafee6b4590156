import { Server as NetServer, type Socket } from 'node:net'
import type { Server as HttpServer, ServerResponse } from 'node:http'

/**
 * The few Node internals the drain cannot do without, typed in one place so a
 * Node upgrade that changes them breaks here, visibly, and nowhere else.
 */

/**
 * Stops accepting connections without touching the open ones. Node ≥ 19's
 * http `server.close()` also calls `closeIdleConnections()` at once, which
 * destroys keep-alive sockets a client may be sending on right now, and
 * sockets accepted a moment ago whose first request is still on the wire.
 * The plain net.Server close only closes the listening handle; idle sockets
 * are then closed later, on our schedule (see closing.ts).
 */
export function closeListener (server: HttpServer | NetServer): void {
  if (!server.listening) return
  NetServer.prototype.close.call(server)
}

/**
 * A TLS socket wraps the TCP socket the server accepted; `_parent` is the only
 * link back to it, and we track connections from the TCP `connection` event so
 * that sockets stuck in the handshake are counted (and destroyed at the budget) too.
 */
export function parentSocket (socket: Socket): Socket | undefined {
  return (socket as Socket & { _parent?: Socket | null })._parent ?? undefined
}

/**
 * `shouldKeepAlive = false` before the headers are written makes Node send
 * `Connection: close` and end the socket after the response, which is what we
 * want for every response from the first instant of the drain. It is a
 * public-but-undocumented field of OutgoingMessage; Fastify and Node's own
 * tests rely on it.
 */
export function closeAfterResponse (res: ServerResponse): void {
  if (!res.headersSent) res.shouldKeepAlive = false
}

/**
 * The header block an HTTP/1 response has written, or undefined. Headers given
 * to `writeHead(status, { … })` without an earlier setHeader() are written
 * without ever being stored where getHeader() can read them (SSE handlers
 * commonly do exactly that); `_header` is the only place they can be read back.
 */
export function headerBlock (res: ServerResponse): string | undefined {
  const block = (res as ServerResponse & { _header?: unknown })._header
  return typeof block === 'string' ? block : undefined
}
