import { performance } from 'node:perf_hooks'

/** Monotonic milliseconds: wall-clock jumps (NTP, suspend) must not stretch or cut a drain. */
export const now = (): number => performance.now()

/**
 * The one budget of a drain: `signal time + gracePeriod − exitMargin`.
 * Every phase asks it how long it may still take, so no phase can spend
 * time that belongs to a later one.
 */
export class Deadline {
  /** Monotonic time the drain started (the signal, or the preStop call). */
  readonly startedAt: number
  /** Wall-clock time of the same instant, for the report. */
  readonly startedAtWall: number
  /** Monotonic time by which the process must be gone, minus nothing: the exit margin is already taken off. */
  readonly end: number
  #guard: NodeJS.Timeout | undefined

  constructor (startedAt: number, budget: number) {
    this.startedAt = startedAt
    this.startedAtWall = Date.now() - (now() - startedAt)
    this.end = startedAt + budget
  }

  /** Milliseconds since the drain started. */
  elapsed (): number {
    return now() - this.startedAt
  }

  /** Milliseconds left in the whole budget, never negative. */
  remaining (): number {
    return Math.max(0, this.end - now())
  }

  /** Milliseconds from now until `offset` ms after the start, never negative. */
  until (offset: number): number {
    return Math.max(0, this.startedAt + offset - now())
  }

  /**
   * Arms the one ref'd handle of the drain. A closer whose promise holds no
   * handle (a hung promise, a pool waiting on nothing) would otherwise let the
   * event loop run empty and Node exit with code 0 in the middle of the drain,
   * skipping the remaining closers and the report.
   */
  guard (onExpired: () => void): void {
    this.disarm()
    this.#guard = setTimeout(onExpired, this.remaining())
  }

  disarm (): void {
    if (this.#guard !== undefined) clearTimeout(this.#guard)
    this.#guard = undefined
  }
}

/** A timer that never keeps the process alive by itself. */
export function unrefTimer (ms: number, fn: () => void): NodeJS.Timeout {
  const timer = setTimeout(fn, ms)
  timer.unref()
  return timer
}

/** Resolves after `ms` or when `signal` aborts, whichever is first; holds no handle. */
export function sleep (ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise(resolve => {
    if (signal?.aborted === true) return resolve()
    const done = (): void => {
      clearTimeout(timer)
      signal?.removeEventListener('abort', done)
      resolve()
    }
    const timer = unrefTimer(ms, done)
    signal?.addEventListener('abort', done, { once: true })
  })
}
