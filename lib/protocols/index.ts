import type { FastifyInstance } from 'fastify'
import type { ConnectionTracker } from '../connections/tracker.js'
import type { Drain } from '../drain.js'
import type { ResolvedOptions } from '../options.js'
import { trackHttp2 } from './http2.js'
import { trackWebSockets } from './websocket.js'
import { trackEventStreams } from './event-streams.js'
import { registerRequestSignal } from './request-signal.js'

/**
 * Long-lived connections, each on its own module and hooked into the drain's
 * phase events: HTTP/2 GOAWAY, WebSocket close 1001, event-stream counts, and
 * `request.drainSignal` for cancelling work before the budget runs out.
 */
export function setupProtocols (fastify: FastifyInstance, options: ResolvedOptions, drain: Drain, tracker: ConnectionTracker): void {
  if (fastify.initialConfig.http2 === true) trackHttp2(fastify.server, drain)
  trackWebSockets(fastify, drain)
  trackEventStreams(tracker, drain)
  registerRequestSignal(fastify, drain, options)
}
