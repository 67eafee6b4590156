import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks'
import type { Check } from './checks.js'

/** The built-in liveness check's name, in `/livez`'s 503 body and in the log. */
export const EVENT_LOOP_CHECK = 'event-loop'

/** How often the histogram samples the loop (perf_hooks' own default). */
const RESOLUTION_MS = 10
/** The window the check looks at: the last whole second. */
const WINDOW_MS = 1_000

/**
 * The event loop's recent delay, for the `maxEventLoopDelay` liveness check.
 * Created only when that option is set: nothing samples the loop otherwise.
 *
 * The statistic is the 99th percentile of the delays sampled over the last
 * whole window (one second), minus the sampling interval, in ms. The
 * histogram records one sample per tick of a 10 ms timer, so a stall counts
 * as one sample however long it is, and an idle loop adds a hundred short ones
 * a second:
 * - the maximum would fail on a single GC pause or one slow synchronous
 *   request, and a liveness failure restarts the pod;
 * - the mean (what @fastify/under-pressure uses) is drowned by the idle
 *   samples: a loop stalled for 300 ms out of every 600 ms has a mean delay
 *   of about 10 ms;
 * - the 99th percentile fails once stalls longer than the limit are more than
 *   one sample in a hundred: two or more in a second, or a loop that does
 *   little but stall. That is a wedged process, not a busy one.
 * The histogram is reset at each window, so the check reflects the last second,
 * not the whole life of the process (startup included). A reset also forgets
 * when the last sample was taken, so a stall under way at the reset is not
 * recorded: one stall per window at most goes unseen, which a stalled loop,
 * stalling again and again, does not notice.
 */
export class EventLoopDelay {
  readonly #histogram: IntervalHistogram
  readonly #timer: NodeJS.Timeout
  /** The statistic for the last whole window, in ms; 0 until a window has passed. */
  #delay = 0
  #stopped = false

  constructor () {
    this.#histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS })
    this.#histogram.enable()
    // unref'd: sampling the loop must never keep the process alive.
    this.#timer = setInterval(() => this.#roll(), WINDOW_MS)
    this.#timer.unref()
  }

  /** The 99th-percentile delay of the last whole window, in ms (0 once stopped: nothing is left to watch). */
  get delay (): number {
    return this.#stopped ? 0 : this.#delay
  }

  #roll (): void {
    const h = this.#histogram
    this.#delay = h.count === 0 ? 0 : Math.max(0, h.percentile(99) / 1e6 - RESOLUTION_MS)
    h.reset()
  }

  stop (): void {
    if (this.#stopped) return
    this.#stopped = true
    clearInterval(this.#timer)
    this.#histogram.disable()
  }
}

/** The `event-loop` liveness check: passes while the recent delay is at most `max` ms. */
export function eventLoopCheck (monitor: EventLoopDelay, max: number): Check {
  return {
    name: EVENT_LOOP_CHECK,
    fn: () => monitor.delay <= max,
    whyFalse: () => `the event loop's delay was ${Math.round(monitor.delay)} ms (p99 over the last second), ` +
      `above maxEventLoopDelay (${max} ms)`
  }
}
