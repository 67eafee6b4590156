import type { FastifyInstance } from 'fastify'
import type { ConnectionTracker } from '../connections/tracker.js'
import type { ResolvedOptions } from '../options.js'
import type { DrainParticipant } from '../participants.js'
import { http2Participant } from './http2.js'
import { webSocketParticipant } from './websocket.js'
import { eventStreamParticipant } from './event-streams.js'
import { requestSignalParticipant } from './request-signal.js'

/**
 * Long-lived connections, each in its own module and each a drain participant
 * (their order is in participants.ts): HTTP/2 GOAWAY, WebSocket close 1001,
 * event-stream counts, and `request.drainSignal` for cancelling work before the
 * budget runs out.
 */
export function setupProtocols (fastify: FastifyInstance, options: ResolvedOptions, tracker: ConnectionTracker): DrainParticipant[] {
  const participants = [
    webSocketParticipant(fastify),
    eventStreamParticipant(tracker),
    requestSignalParticipant(fastify, options)
  ]
  if (fastify.initialConfig.http2 === true) participants.push(http2Participant(fastify.server))
  return participants
}
