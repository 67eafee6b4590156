import type { Drain } from '../drain.js'
import type { ConnectionTracker } from '../connections/tracker.js'
import type { MetricsRegistry } from '../options.js'
import type { DrainParticipant } from '../participants.js'
import { InvalidOptionError, MetricsUnavailableError, errorMessage } from '../errors.js'

const STATES = ['starting', 'ready', 'draining', 'closing', 'closed'] as const

/**
 * Prometheus metrics through the app's own prom-client, loaded only when
 * `metrics` is set, so prom-client is never a dependency. Every value is read
 * at scrape time (prom-client's `collect`), so nothing runs per request.
 * After a drain they stay registered, so a last scrape reads the final figures
 * (the process exits next); a plain app.close() unregisters them (tests, embedding).
 */
export async function registerMetrics (
  options: { readonly registry: MetricsRegistry | undefined, readonly prefix: string },
  drain: Drain,
  tracker: ConnectionTracker
): Promise<DrainParticipant> {
  let prom: typeof import('prom-client')
  try {
    prom = await import('prom-client')
  } catch (error) {
    throw new MetricsUnavailableError(errorMessage(error))
  }
  const registry = (options.registry ?? prom.register) as InstanceType<typeof prom.Registry>
  const p = options.prefix
  const names = [`${p}state`, `${p}in_flight_requests`, `${p}open_connections`, `${p}drain_duration_seconds`, `${p}forced_closes_total`]
  for (const name of names) {
    if (registry.getSingleMetric(name) !== undefined) {
      throw new InvalidOptionError('metrics.prefix', `a prefix no registered metric uses (${name} exists)`, p,
        'each app in a process needs its own registry or prefix')
    }
  }
  const registers: Array<InstanceType<typeof prom.Registry>> = []
  let reportedDestroyed = 0
  const metrics = [
    new prom.Gauge({
      name: `${p}state`,
      help: 'The drain state: 1 for the current state, 0 for the others',
      labelNames: ['state'],
      registers,
      collect () { for (const state of STATES) this.set({ state }, state === drain.state ? 1 : 0) }
    }),
    new prom.Gauge({
      name: `${p}in_flight_requests`,
      help: 'Requests being handled now (probes excluded)',
      registers,
      collect () { this.set(tracker.inFlight) }
    }),
    new prom.Gauge({
      name: `${p}open_connections`,
      help: 'Open client connections on the main server',
      registers,
      collect () { this.set(tracker.size) }
    }),
    new prom.Gauge({
      name: `${p}drain_duration_seconds`,
      help: 'How long the drain has been running, or took once finished; 0 before it starts',
      registers,
      collect () {
        const ms = drain.report?.durationMs ?? drain.deadline?.elapsed() ?? 0
        this.set(ms / 1000)
      }
    }),
    new prom.Counter({
      name: `${p}forced_closes_total`,
      help: 'Connections destroyed because the drain budget ran out',
      registers,
      collect () {
        const destroyed = tracker.counts().destroyed
        if (destroyed > reportedDestroyed) this.inc(destroyed - reportedDestroyed)
        reportedDestroyed = destroyed
      }
    })
  ]
  for (const metric of metrics) registry.registerMetric(metric)
  return {
    name: 'metrics',
    dispose () {
      if (drain.report !== undefined) return
      for (const name of names) registry.removeSingleMetric(name)
    }
  }
}
