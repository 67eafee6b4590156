// A little over 150 lines: the tracked-work registry and the drain's participant for it, which
// reads the same counts.
import { sleep, type Deadline } from './deadline.js'
import type { DrainParticipant } from './participants.js'
import { TrackAfterCloseError, InvalidTrackError } from './errors.js'

/** Work that is not a request: a promise, or a function given an AbortSignal that returns one. */
export type BackgroundWorkInput<T> = PromiseLike<T> | ((signal: AbortSignal) => T | PromiseLike<T>)

export interface BackgroundWorkCounts {
  /** Tracked during the drain or still pending when it started. */
  total: number
  /** Settled (resolved or rejected) before the budget ran out. */
  settled: number
  /** Still pending when the budget ran out: their names, in the order they were tracked. */
  abandoned: string[]
}

interface Entry {
  readonly name: string
}

/**
 * `fastify.drain.track(name, work)`: work the drain must wait for although no
 * request carries it (docs/design.md, "The drain sequence"). While any is
 * pending, the drain does not run `fastify.close()` or the closers, so the
 * pool the work uses stays open; what is still pending when the in-flight
 * budget runs out is abandoned and named in the report.
 *
 * Cheap by design: one Set entry and one `finally` per call, no timer; all
 * tracked work shares one AbortSignal, which aborts with `request.drainSignal`.
 */
export class BackgroundWork {
  readonly #controller = new AbortController()
  readonly #signal = this.#controller.signal
  readonly #pending = new Set<Entry>()
  readonly #waiters: Array<() => void> = []
  #sealed: string | undefined
  #counting = false
  #total = 0
  #settled = 0

  /** The signal every tracked function is given: aborts shortly before the in-flight budget ends. */
  get signal (): AbortSignal {
    return this.#signal
  }

  /** Tells the tracked work to stop (an AbortError, as fetch and undici expect). */
  abort (why: string): void {
    if (!this.#signal.aborted) this.#controller.abort(new DOMException(why, 'AbortError'))
  }

  get pending (): number {
    return this.#pending.size
  }

  /** Registers `work`; returns its result, settling exactly when the work does. */
  track<T> (name: string, work: BackgroundWorkInput<T>): Promise<T> {
    if (typeof name !== 'string' || name.trim() === '') throw new InvalidTrackError('name', 'a non-empty string', name)
    if (typeof work !== 'function' && typeof (work as PromiseLike<T> | undefined)?.then !== 'function') {
      throw new InvalidTrackError('work', 'a promise, or a function (signal) => promise', work)
    }
    if (this.#sealed !== undefined) throw new TrackAfterCloseError(name, this.#sealed)
    const entry: Entry = { name }
    this.#pending.add(entry)
    if (this.#counting) this.#total++
    // An async wrapper turns a synchronous throw into a rejection, so it is tracked like one.
    const running = typeof work === 'function'
      ? (async () => await work(this.#signal))()
      : Promise.resolve(work)
    return running.finally(() => this.#settle(entry))
  }

  /** The drain started: count what is pending now and what comes. */
  startCounting (): void {
    this.#counting = true
    this.#total = this.#pending.size
  }

  /** Resolves when nothing is pending. */
  whenSettled (): Promise<void> {
    if (this.#pending.size === 0) return Promise.resolve()
    return new Promise(resolve => { this.#waiters.push(resolve) })
  }

  /**
   * Resolves when nothing is pending, when `ms` have passed, or when `forced`
   * aborts, whichever comes first: the drain holds its closers this long.
   */
  async settleWithin (ms: number, forced: AbortSignal): Promise<void> {
    if (this.#pending.size === 0 || forced.aborted) return
    const stop = new AbortController()
    const onForced = (): void => stop.abort()
    forced.addEventListener('abort', onForced, { once: true })
    try {
      await Promise.race([this.whenSettled(), sleep(ms, stop.signal)])
    } finally {
      stop.abort()
      forced.removeEventListener('abort', onForced)
    }
  }

  /** The closers are about to run: from now on track() is an error, since the resources the work needs are closing. */
  seal (state: string): void {
    this.#sealed ??= state
  }

  /** The budget ran out: names of what was still pending, forgotten from here on. */
  abandon (): string[] {
    const names = [...this.#pending].map(entry => entry.name)
    this.#pending.clear()
    this.#release()
    return names
  }

  counts (abandoned: string[]): BackgroundWorkCounts {
    return { total: this.#total, settled: this.#settled, abandoned }
  }

  #settle (entry: Entry): void {
    if (!this.#pending.delete(entry)) return
    if (this.#counting) this.#settled++
    if (this.#pending.size === 0) this.#release()
  }

  #release (): void {
    for (const resolve of this.#waiters.splice(0)) resolve()
  }
}

/**
 * The drain's side of background work: counting starts at the signal, the
 * shared signal aborts with `request.drainSignal` (at `abortAt` ms after the
 * start), and at the budget or the end whatever runs is told to stop.
 */
export function backgroundWorkParticipant (work: BackgroundWork, abortAt: () => number): DrainParticipant {
  let timer: NodeJS.Timeout | undefined
  const abort = (why: string): void => {
    clearTimeout(timer)
    work.abort(why)
  }
  return {
    name: 'background-work',
    draining (deadline: Deadline) {
      work.startCounting()
      // unref'd: the drain's deadline timer is what keeps the process alive.
      timer = setTimeout(abort, deadline.until(abortAt()), 'the drain budget for background work is about to run out')
      timer.unref()
    },
    budgetSpent: () => abort('the drain budget for background work is spent'),
    closed: () => abort('the drain has ended')
  }
}
