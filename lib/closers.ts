// Longer than 150 lines: running a closer bounded, claiming its synchronous throws (a callback-style
// hook's throw is that closer's outcome, not a crash) and abandoning the rest at a forced end share
// one list and one clock; the racing itself is bounded.ts.
import { AsyncLocalStorage } from 'node:async_hooks'
import { InvalidCloserError, errorMessage } from './errors.js'
import { now } from './deadline.js'
import { bounded } from './bounded.js'

/** Closes one resource; `signal` aborts when its time is up, so it can give up cleanly. */
export type CloserFunction = (signal: AbortSignal) => unknown

export interface CloserOptions {
  /** At most this long, in ms, and never past the drain's budget. @default closeTimeout */
  timeout?: number
}

export interface CloserOutcome {
  name: string
  /** 'timeout' also covers a closer cut short by a forced end (deadline, second signal); 'skipped': never ran. */
  outcome: 'ok' | 'error' | 'timeout' | 'skipped'
  durationMs: number
  error?: string
}

interface Closer {
  readonly name: string
  readonly fn: CloserFunction
  readonly timeout: number | undefined
}

/** Checks addCloser()'s arguments; throws a coded TypeError naming the bad one. */
export function validateCloser (name: unknown, fn: unknown, options: unknown): asserts options is CloserOptions | undefined {
  if (typeof name !== 'string' || name.trim() === '') {
    throw new InvalidCloserError('name', 'a non-empty string', name)
  }
  if (typeof fn !== 'function') throw new InvalidCloserError('fn', 'a function (signal) => Promise<void>', fn)
  if (options === undefined) return
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new InvalidCloserError('options', 'an object { timeout }', options)
  }
  const { timeout } = options as CloserOptions
  if (timeout !== undefined && (typeof timeout !== 'number' || !Number.isFinite(timeout) || timeout <= 0)) {
    throw new InvalidCloserError('options.timeout', 'a positive finite number of milliseconds', timeout)
  }
}

/** The closer run an uncaught exception belongs to, if it was thrown from code that run started. */
const closerRun = new AsyncLocalStorage<object>()
/** The error the uncaughtException being emitted right now is, if a closer run has claimed it. */
let claimed: { error: unknown } | undefined

/**
 * Whether `error`, the uncaughtException being emitted, was thrown by a closer
 * or by the app's onClose hooks and is already reported as that closer's
 * outcome. Another 'uncaughtException' listener (drainOnCrash's) should then
 * leave it alone: the drain goes on with the next closer.
 */
export function claimedByCloser (error: unknown): boolean {
  return claimed !== undefined && claimed.error === error
}

/**
 * Runs `fn(signal)` and settles with it, or rejects with an exception that code
 * it started throws later, outside any promise: the throw is the closer's
 * outcome ('error'), not the end of the process.
 *
 * Why at the process level: a callback-style onClose hook, `(instance, done) =>
 * { throw … }`, is called by avvio's close queue (a fastq worker started from
 * `process.nextTick`) with no try/catch around it, and so are 1-argument and
 * 0-argument hooks whose body throws before returning a promise
 * (node_modules/avvio/index.js: closeWithCbOrNextTick → encapsulateTwoParam;
 * Fastify's hookRunnerApplication catches this for preClose, not for onClose).
 * The throw becomes an uncaught exception; the hook never calls `done`, so the
 * queue stops there and fastify.close() never settles. No public API of Fastify
 * or avvio reaches that frame, so the only depth at which it can be caught is
 * the process's 'uncaughtException', and only while this closer runs. An
 * AsyncLocalStorage run ties the exception to the code this closer started
 * (avvio's ticks inherit it), so an unrelated crash at the same moment is left
 * to Node's default (or the app's own listener), and drainOnCrash can tell the
 * two apart (claimedByCloser). The app's onClose hooks queued after the one that
 * threw never run: avvio's queue is stuck, so fastify.close() is reported as
 * 'error' at once and the closers added with addCloser() run next.
 */
export function catchUncaught (fn: CloserFunction, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const run = {}
    const onUncaught = (error: unknown): void => {
      if (closerRun.getStore() !== run) {
        // Not ours. Alone, this listener would swallow the crash: let Node's default handle it.
        if (process.listenerCount('uncaughtException') === 1) {
          stop()
          process.nextTick(() => { throw error })
        }
        return
      }
      claimed = { error }
      // Other listeners run in this same emit; afterwards the claim means nothing.
      process.nextTick(() => { if (claimed?.error === error) claimed = undefined })
      settle(reject, error)
    }
    const stop = (): void => {
      process.removeListener('uncaughtException', onUncaught)
      signal.removeEventListener('abort', stop)
    }
    const settle = (how: (value?: any) => void, value?: unknown): void => {
      stop()
      how(value)
    }
    // Prepended, so the claim is made before any other listener (drainOnCrash's) sees the error.
    process.prependListener('uncaughtException', onUncaught)
    // Timed out or cut short: runBounded has settled the outcome; leave the process as it was.
    signal.addEventListener('abort', stop, { once: true })
    closerRun.run(run, () => (async () => { await fn(signal) })())
      .then(() => settle(resolve), (error: unknown) => settle(reject, error))
  })
}

/**
 * Runs `fn` bounded by `timeout`: settles exactly once with the outcome,
 * whether `fn` returns, throws synchronously, rejects, throws later from code
 * it started (catchUncaught) or never settles.
 * `stop` (a forced end of the drain) cuts it short like its own timeout.
 */
export async function runBounded (name: string, fn: CloserFunction, timeout: number, stop?: AbortSignal): Promise<CloserOutcome> {
  const started = now()
  const controller = new AbortController()
  const finish = (outcome: CloserOutcome['outcome'], error?: unknown): CloserOutcome => ({
    name,
    outcome,
    durationMs: Math.round(now() - started),
    ...(error === undefined ? {} : { error: errorMessage(error) })
  })
  if (timeout <= 0) return finish('skipped', 'no time left in the budget')
  // A synchronous throw becomes a rejection, and so does an uncaught throw from code fn started.
  const ran = (): Promise<CloserOutcome> => catchUncaught(fn, controller.signal)
    .then(() => finish('ok'), (error: unknown) => finish('error', error))
  return await bounded(ran, timeout, () => {
    controller.abort(new Error(`closer "${name}" timed out after ${timeout} ms`))
    return finish('timeout', `did not finish within ${timeout} ms`)
  }, stop, () => {
    controller.abort(stop?.reason)
    return finish('timeout', errorMessage(stop?.reason))
  })
}

/**
 * The resources closed strictly after the last response: first `fastify.close()`
 * (the app's own onClose hooks, which Fastify runs last registered first), then
 * the closers added with `fastify.drain.addCloser()`, also last added first,
 * one at a time. A closer registered later usually stands on one registered
 * earlier (a cache client on top of its connection pool), and the closers are
 * the outer layer: resources the app's hooks may still use while they close
 * (an outbound HTTP agent, a telemetry exporter, the database server itself).
 */
export class Closers {
  readonly #app: Closer
  readonly #closers: Closer[] = []
  readonly #outcomes: CloserOutcome[] = []
  /** Aborted when the drain is forced to end: the running closer is cut short, the rest are skipped. */
  readonly #stop = new AbortController()
  #pending: Closer[] | undefined
  #current: { name: string, started: number } | undefined

  /** `app` closes the Fastify instance: it always runs first. */
  constructor (app: CloserFunction) {
    this.#app = { name: 'fastify.close', fn: app, timeout: undefined }
  }

  get size (): number {
    return this.#closers.length
  }

  add (name: string, fn: CloserFunction, timeout: number | undefined): void {
    this.#closers.push({ name, fn, timeout })
  }

  /** In the order they would run: fastify.close() first (unless the app is closing already), then the closers, last added first. */
  #order (withApp = true): Closer[] {
    return [...(withApp ? [this.#app] : []), ...[...this.#closers].reverse()]
  }

  /**
   * Runs every closer; each gets min(its timeout or `defaultTimeout`, what
   * `remaining()` says is left of the budget). A failure never stops the others.
   * `withApp: false` when the app is closing by itself: its onClose hooks are running already.
   */
  async run (defaultTimeout: number, remaining: () => number, onOutcome: (outcome: CloserOutcome) => void,
    { withApp = true } = {}): Promise<CloserOutcome[]> {
    this.#pending = this.#order(withApp)
    for (let closer = this.#pending.shift(); closer !== undefined && !this.#stop.signal.aborted; closer = this.#pending.shift()) {
      this.#current = { name: closer.name, started: now() }
      const outcome = await runBounded(closer.name, closer.fn, Math.min(closer.timeout ?? defaultTimeout, remaining()), this.#stop.signal)
      this.#current = undefined
      // abandon() has already recorded this one and the rest.
      if (this.#stop.signal.aborted) break
      this.#outcomes.push(outcome)
      onOutcome(outcome)
    }
    return [...this.#outcomes]
  }

  /**
   * The drain was forced to end (the deadline, a second signal). Synchronous,
   * so the report written right after it lists every closer: the ones that ran,
   * the one cut short now, and the ones that will never run.
   */
  abandon (reason: string): CloserOutcome[] {
    if (!this.#stop.signal.aborted) {
      const current = this.#current
      if (current !== undefined) {
        this.#outcomes.push({ name: current.name, outcome: 'timeout', durationMs: Math.round(now() - current.started), error: `cut short by the ${reason}` })
      }
      for (const closer of this.#pending ?? this.#order()) {
        this.#outcomes.push({ name: closer.name, outcome: 'skipped', durationMs: 0, error: `not run: the drain was ended by the ${reason}` })
      }
      this.#pending = []
      this.#stop.abort(new Error(`cut short by the ${reason}`))
    }
    return [...this.#outcomes]
  }
}
