// Longer than 150 lines: every Node internal the drain touches is here, each with why it is needed,
// so a Node upgrade that changes one breaks this file and no other.
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
 * The servers Fastify opened beside `app.server` when it was told to listen on
 * a host that resolves to several addresses (`listen({ host: 'localhost' })`
 * binds 127.0.0.1 and ::1: its `multipleBindings`, lib/server.js). Fastify 5
 * keeps them only in an array under a symbol of its own, `Symbol('fastify.serverBindings')`
 * (lib/symbols.js, not `Symbol.for`, so it cannot be looked up), and exposes them
 * nowhere else: `app.addresses()` gives their addresses, not the servers. The
 * drain has to close, watch and wait on every one of them, so the symbol is
 * found by its description, on the instance or its prototypes (an encapsulated
 * context inherits the root's). A Fastify that renames it yields [] here: the
 * secondary servers would then be closed by Fastify's own close() only, as before.
 */
export function secondaryServers (app: object): NetServer[] {
  for (let target: object | null = app; target !== null; target = Object.getPrototypeOf(target) as object | null) {
    const key = Object.getOwnPropertySymbols(target).find(symbol => symbol.description === 'fastify.serverBindings')
    if (key === undefined) continue
    const servers: unknown = (target as Record<symbol, unknown>)[key]
    return Array.isArray(servers) ? servers.filter((server): server is NetServer => server instanceof NetServer) : []
  }
  return []
}

/**
 * Makes `server.close()` close the listening handle only, like closeListener().
 * Fastify closes its secondary servers by calling `close()` on them when the
 * main server emits 'close', which it does as soon as the main server has no
 * connection left, possibly in the middle of the drain; Node ≥ 19's http close()
 * would then destroy every idle socket of the secondary server at once, fresh
 * ones included (see closeListener). Applied to the secondary servers only, once
 * the drain has closed their listeners itself.
 */
export function keepConnectionsOnClose (server: NetServer): void {
  Object.defineProperty(server, 'close', {
    configurable: true,
    writable: true,
    value: function close (this: NetServer, callback?: (error?: Error) => void): NetServer {
      return NetServer.prototype.close.call(this, callback)
    }
  })
}

/** What Node's http server keeps per HTTP/1 connection, in its `ConnectionsList`. */
interface ListedParser { socket: Socket | null | undefined }
interface ConnectionsList { all (): ListedParser[] }

/**
 * The sockets an http.Server is serving over HTTP/1, from Node's own list of
 * them (`server[kConnections]`, a `ConnectionsList` in _http_server.js, the one
 * `closeAllConnections()` walks: present on Node 18.2+, 20, 22 and 24, created
 * when the server starts listening). Every accepted socket is in it until its
 * 'close' (or its upgrade) takes its parser out, so the tracker needs no
 * per-socket Set entry or 'close' listener before the drain (tracker.ts,
 * "deferred"). Undefined when the list cannot be found (not listening yet, or a
 * Node that renamed it): the tracker then tracks every socket itself.
 */
export function listedSockets (server: NetServer): Socket[] | undefined {
  const list = connectionsList(server)
  if (list === undefined) return undefined
  const sockets: Socket[] = []
  for (const parser of list.all()) if (parser.socket != null) sockets.push(parser.socket)
  return sockets
}

/**
 * How many sockets `server` has open: net.Server's own count (`_connections`,
 * which `getConnections()` reports asynchronously), up at accept and down at
 * destroy, upgraded sockets included. O(1), where listedSockets() walks them
 * all; falls back to that walk where the count cannot be read.
 */
export function openCount (server: NetServer): number {
  const count = (server as NetServer & { _connections?: unknown })._connections
  return typeof count === 'number' ? count : listedSockets(server)?.length ?? 0
}

/** Whether listedSockets() can read `server`'s sockets: asked once per server, at its first connection. */
export function hasConnectionsList (server: NetServer): boolean {
  return connectionsList(server) !== undefined
}

function connectionsList (server: NetServer): ConnectionsList | undefined {
  const key = Object.getOwnPropertySymbols(server).find(symbol => symbol.description === 'http.server.connections')
  const list: unknown = key === undefined ? undefined : (server as unknown as Record<symbol, unknown>)[key]
  return typeof (list as Partial<ConnectionsList> | undefined)?.all === 'function' ? list as ConnectionsList : undefined
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
 * want for the last response on every socket from the first instant of the
 * drain. It is a public-but-undocumented field of OutgoingMessage; Fastify and
 * Node's own tests rely on it. Returns whether this call turned keep-alive off
 * (false: the headers are out already, or the request itself asked to close),
 * so that only a mark the drain set is ever lifted (keepAliveAfterAll).
 *
 * Why only the *last* response on a socket (tracker.ts, #markLast): Node emits
 * 'request' for each pipelined HTTP/1.1 request as soon as it has parsed it,
 * without waiting for the responses before it; their responses queue behind the
 * one being written and go out in order. A response with keep-alive off is
 * Node's last on that socket: when it has been written, Node ends the socket
 * (`res._last` → `socket.destroySoon()` in `resOnFinish`), and the responses
 * queued behind it are never written, although the app has already handled
 * their requests. Measured on Node 20: three pipelined requests, the first one
 * marked, all three handled, one response received. `Connection: close` on an
 * earlier response would also tell the client to stop reading there (RFC 9112
 * §9.6). So a response says `Connection: close` only while it is the last one
 * on its socket, and none is lost.
 */
export function closeAfterResponse (res: ServerResponse): boolean {
  if (res.headersSent || !res.shouldKeepAlive) return false
  res.shouldKeepAlive = false
  return true
}

/** Lifts closeAfterResponse()'s mark while the headers are still unwritten: a later pipelined response is the last one now. */
export function keepAliveAfterAll (res: ServerResponse): void {
  if (!res.headersSent) res.shouldKeepAlive = true
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
