import type { FastifyBaseLogger } from 'fastify'
import type { ResolvedOptions } from './options.js'
import type { Arrivals, ConnectionTracker } from './connections/tracker.js'
import type { DrainDelay } from './report.js'
import { now, sleep, type Deadline } from './deadline.js'
import { round } from './report.js'

export interface DelayContext {
  readonly deadline: Deadline
  readonly options: ResolvedOptions
  readonly tracker: ConnectionTracker
  /** Aborts when the drain is forced to end (deadline, second signal). */
  readonly forced: AbortSignal
  readonly log: FastifyBaseLogger
}

/**
 * The delay phase (docs/design.md, "The delay adapts"): serve normally for
 * `drainDelay`, then until no traffic has arrived or been in flight for
 * `quietPeriod`, at most until `maxDrainDelay`. Returns what happened, for the report.
 *
 * `skipDelay` (SIGINT, or a preStop call that already waited) skips both. With
 * a delay of 0 the extension runs only if `quietPeriod` was set: no delay means no delay.
 */
export async function keepServing (ctx: DelayContext, skipDelay: boolean): Promise<DrainDelay> {
  const { deadline, options, tracker, forced } = ctx
  const planned = skipDelay ? 0 : options.drainDelay
  // No delay means no timer either: setTimeout(0) costs a turn of the event loop, 1–2 ms.
  if (planned > 0) await sleep(deadline.until(planned), forced)
  // Timer lateness on a busy machine is not an extension: measure from when the planned delay really ended.
  const plannedEnd = deadline.elapsed()
  const extends_ = !skipDelay && options.quietPeriod > 0 && (planned > 0 || options.given.includes('quietPeriod'))
  let endedBy: DrainDelay['endedBy'] = skipDelay ? 'skipped' : 'delay'
  if (extends_) endedBy = await waitForQuiet(ctx)
  const actual = deadline.elapsed()
  const delay: DrainDelay = { plannedMs: planned, actualMs: round(actual), extendedMs: round(actual - plannedEnd), endedBy }
  if (tracker.lastRequestAt >= deadline.startedAt) delay.lastArrivalMs = round(tracker.lastRequestAt - deadline.startedAt)
  warnIfLate(ctx, delay)
  return delay
}

/**
 * Load balancers that notice late keep sending; closing now would refuse their
 * traffic. The quiet period starts once no traffic is in flight either: the
 * process cannot exit before those requests end anyway, so the listener stays
 * open meanwhile for free. Behind a per-connection balancer (kube-proxy) whose
 * clients have moved away, new connections are rare and a quiet second right
 * after the last arrival proves little: closing the listener then refused the
 * next one in 2 of 30 rollovers (test/rolling.test.ts).
 */
async function waitForQuiet ({ deadline, options, tracker, forced }: DelayContext): Promise<DrainDelay['endedBy']> {
  tracker.recordArrivals()
  const capAt = deadline.startedAt + options.maxDrainDelay
  const startedAt = now()
  // While requests run, look again every quietPeriod: any end moves quietAt on.
  while (!forced.aborted) {
    const quietAt = tracker.trafficInFlight > 0 ? now() + options.quietPeriod : tracker.lastActivityAt + options.quietPeriod
    if (now() >= quietAt) return quietAt > startedAt ? 'quiet period' : 'delay'
    if (now() >= capAt) return 'cap'
    await sleep(Math.min(quietAt, capAt) - now(), forced)
  }
  return 'cap'
}

/**
 * Worth a warning only when traffic still *arrived* after drainDelay. If it
 * stopped, the balancer was slower than drainDelay: say which drainDelay would
 * have covered it. If it kept coming until the cap, no drainDelay can help:
 * name the routes, which are usually not routed by any balancer at all (a
 * scrape, a poller, the balancer's own health check).
 */
function warnIfLate ({ deadline, options, tracker, log }: DelayContext, delay: DrainDelay): void {
  const lastArrival = delay.lastArrivalMs
  if (lastArrival === undefined || delay.extendedMs <= 50 || lastArrival <= delay.plannedMs) return
  const fields = { drainDelay: delay.plannedMs, actualDelay: delay.actualMs, lastArrival, quietPeriod: options.quietPeriod }
  const routes = tracker.arrivals()
  if (delay.endedBy !== 'cap' || !keptComing(routes, deadline.startedAt + delay.actualMs)) {
    log.warn(fields, `requests kept arriving after drainDelay, the last ${lastArrival} ms after the signal: the drain waited ` +
      `${delay.extendedMs} ms more for a ${options.quietPeriod} ms quiet period; raise drainDelay to at least ${Math.ceil(lastArrival)} ms`)
    return
  }
  const busiest = routes.slice(0, 5).map(({ route, count, firstAt, lastAt }) => ({
    route,
    count,
    everyMs: count > 1 ? round((lastAt - firstAt) / (count - 1)) : undefined
  }))
  const named = busiest.map(r => `${r.route} ×${r.count}${r.everyMs === undefined ? '' : ` (every ~${r.everyMs} ms)`}`).join(', ')
  log.warn({ ...fields, maxDrainDelay: options.maxDrainDelay, routes: busiest },
    `traffic never went quiet: the delay ran to its cap (maxDrainDelay ${options.maxDrainDelay} ms) while requests kept ` +
    `arriving: ${named}. If these are not sent by the load balancer (a scrape, a poller, its own health check), ` +
    'add their paths to quietPeriodIgnore; if they are, the balancer has not taken the pod out yet: check its configuration')
}

/**
 * Whether traffic was still coming at `endedAt`: the time since the last
 * arrival is within twice the mean gap between arrivals. A poller every 300 ms
 * passes; a late balancer whose traffic stopped a second before the cap does not.
 */
function keptComing (routes: Arrivals[], endedAt: number): boolean {
  const count = routes.reduce((sum, r) => sum + r.count, 0)
  if (count < 2) return false
  const first = Math.min(...routes.map(r => r.firstAt))
  const last = Math.max(...routes.map(r => r.lastAt))
  const meanGap = (last - first) / (count - 1)
  return endedAt - last <= 2 * meanGap
}
