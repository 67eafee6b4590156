import { unrefTimer } from './deadline.js'

/**
 * Races `work()` against a timer of `ms`, settling exactly once: with `work()`'s
 * value, with `onTimeout()` when the timer fires first, or with `onStop()`
 * when `stop` aborts first. The timer is unref'd (during a drain the deadline's
 * guard is the one ref'd handle, deadline.ts) and cleared, and the abort
 * listener removed, whichever way it settles. Used by the closers (runBounded)
 * and the readiness checks, so both bound a user's function the same way.
 */
export function bounded<T> (work: () => PromiseLike<T>, ms: number, onTimeout: () => T, stop?: AbortSignal, onStop?: () => T): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  let onAbort: (() => void) | undefined
  const expired = new Promise<T>(resolve => {
    timer = unrefTimer(ms, () => resolve(onTimeout()))
    if (stop === undefined || onStop === undefined) return
    onAbort = () => resolve(onStop())
    stop.addEventListener('abort', onAbort, { once: true })
  })
  // work() is called after the timer is set: a function that blocks the event loop still times out.
  return Promise.race([work(), expired]).finally(() => {
    clearTimeout(timer)
    if (onAbort !== undefined) stop?.removeEventListener('abort', onAbort)
  })
}
