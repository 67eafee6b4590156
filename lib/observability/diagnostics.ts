import diagnostics from 'node:diagnostics_channel'
import type { Drain } from '../drain.js'
import type { ConnectionTracker } from '../connections/tracker.js'
import type { DrainReport } from '../report.js'
import type { DrainParticipant } from '../participants.js'

/**
 * The drain's life on `node:diagnostics_channel`, for APM agents and custom
 * instrumentation: subscribing needs no reference to the app and no option.
 * A message is built only when a channel has subscribers.
 */
export const channels = Object.freeze({
  /** `{ reason, signal, startedAt, deadlineMs, drainDelay, gracePeriod, inFlight, openConnections }` */
  start: diagnostics.channel('fastify-graceful-drain:start'),
  /** `{ phase: 'draining' | 'closing' | 'resourcesClosing' | 'closed', elapsedMs }` */
  phase: diagnostics.channel('fastify-graceful-drain:phase'),
  /** `{ elapsedMs, inFlight, openConnections }`: the budget is spent, what is still open is about to be destroyed. */
  forced: diagnostics.channel('fastify-graceful-drain:forced'),
  /** `{ exitCode, forced, durationMs, report }`: the drain is over, the process is about to exit. */
  exit: diagnostics.channel('fastify-graceful-drain:exit')
})

export interface DiagnosticsContext {
  readonly gracePeriod: number
  readonly drainDelay: number
}

/** Publishes the drain's phases on the channels above. */
export function diagnosticsParticipant (drain: Drain, tracker: ConnectionTracker, context: DiagnosticsContext): DrainParticipant {
  const elapsedMs = (): number => Math.round(drain.deadline?.elapsed() ?? 0)
  const phase = (name: string): void => {
    if (channels.phase.hasSubscribers) channels.phase.publish({ phase: name, elapsedMs: elapsedMs() })
  }
  return {
    name: 'diagnostics',
    draining (deadline) {
      if (channels.start.hasSubscribers) {
        channels.start.publish({
          ...drain.startedBy,
          startedAt: new Date(deadline.startedAtWall).toISOString(),
          deadlineMs: Math.round(deadline.end - deadline.startedAt),
          drainDelay: context.drainDelay,
          gracePeriod: context.gracePeriod,
          inFlight: tracker.inFlight,
          openConnections: tracker.size
        })
      }
      phase('draining')
    },
    closing: () => phase('closing'),
    resourcesClosing: () => phase('resourcesClosing'),
    budgetSpent () {
      if (channels.forced.hasSubscribers) {
        channels.forced.publish({ elapsedMs: elapsedMs(), inFlight: tracker.inFlight, openConnections: tracker.size })
      }
    },
    closed (report: DrainReport) {
      phase('closed')
      if (channels.exit.hasSubscribers) {
        channels.exit.publish({ exitCode: report.exitCode, forced: report.forced, durationMs: report.durationMs, report })
      }
    }
  }
}
