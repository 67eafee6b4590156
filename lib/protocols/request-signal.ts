import { setMaxListeners } from 'node:events'
import type { FastifyInstance } from 'fastify'
import type { Deadline } from '../deadline.js'
import type { DrainParticipant } from '../participants.js'
import type { ResolvedOptions } from '../options.js'
import { inFlightEnd } from '../budget.js'

/** How long before the in-flight budget runs out `request.drainSignal` aborts, at most. */
export const REQUEST_SIGNAL_MARGIN_MS = 1_000

/**
 * When `request.drainSignal` aborts, in ms after the drain start: a margin
 * before the in-flight budget (gracePeriod − exitMargin − closeTimeout) runs
 * out, so a handler has time to cancel its query or upstream call and answer,
 * instead of having its socket cut. The margin is 1 s, or a tenth of the
 * budget when that is shorter, so a short budget keeps most of its time for the work.
 */
export function requestSignalAt (options: ResolvedOptions): number {
  const budget = inFlightEnd(options)
  return budget - Math.min(REQUEST_SIGNAL_MARGIN_MS, budget / 10)
}

/**
 * `request.drainSignal`: one AbortSignal shared by every request of the app,
 * since they all share the drain's budget. A getter on the Request prototype,
 * so a request that never reads it costs nothing; one timer per drain, not per request.
 */
export function requestSignalParticipant (fastify: FastifyInstance, options: ResolvedOptions): DrainParticipant {
  const controller = new AbortController()
  // Every request that passes it to a query or listens on it adds an abort listener to this one signal: as many
  // as there are requests in flight, each gone when its request ends. Node's limit (10) is a leak detector for
  // emitters whose listeners should stay few; here any number is load, not a leak, and a finite limit would only
  // move the false warning to a busier server. 0 is no limit.
  setMaxListeners(0, controller.signal)
  let timer: NodeJS.Timeout | undefined
  const abort = (why: string): void => {
    clearTimeout(timer)
    // An AbortError, so fetch/undici reject with it as with any other abort.
    if (!controller.signal.aborted) controller.abort(new DOMException(why, 'AbortError'))
  }
  fastify.decorateRequest('drainSignal', { getter () { return controller.signal } })
  return {
    name: 'request-signal',
    draining (deadline: Deadline) {
      // unref'd: the drain's deadline timer is what keeps the process alive.
      timer = setTimeout(abort, deadline.until(requestSignalAt(options)), 'the drain budget for in-flight requests is about to run out')
      timer.unref()
    },
    // The sockets are cut right after this phase: the handlers are told first.
    budgetSpent: () => abort('the drain budget for in-flight requests is spent'),
    closed: () => abort('the drain has ended')
  }
}
