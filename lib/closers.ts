import { InvalidCloserError } from './errors.js'
import { now, unrefTimer } from './deadline.js'

/** Closes one resource; `signal` aborts when its time is up, so it can give up cleanly. */
export type CloserFunction = (signal: AbortSignal) => unknown

export interface CloserOptions {
  /** At most this long, in ms, and never past the drain's budget. @default closeTimeout */
  timeout?: number
}

export interface CloserOutcome {
  name: string
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
  if (typeof options !== 'object' || options === null) {
    throw new InvalidCloserError('options', 'an object { timeout }', options)
  }
  const { timeout } = options as CloserOptions
  if (timeout !== undefined && (typeof timeout !== 'number' || !Number.isFinite(timeout) || timeout <= 0)) {
    throw new InvalidCloserError('options.timeout', 'a positive finite number of milliseconds', timeout)
  }
}

/**
 * Runs `fn` bounded by `timeout`: settles exactly once with the outcome,
 * whether `fn` returns, throws synchronously, rejects or never settles.
 */
export async function runBounded (name: string, fn: CloserFunction, timeout: number): Promise<CloserOutcome> {
  const started = now()
  const controller = new AbortController()
  const finish = (outcome: CloserOutcome['outcome'], error?: unknown): CloserOutcome => ({
    name,
    outcome,
    durationMs: Math.round(now() - started),
    ...(error === undefined ? {} : { error: error instanceof Error ? error.message : String(error) })
  })
  if (timeout <= 0) return finish('skipped', 'no time left in the budget')
  let timer: NodeJS.Timeout | undefined
  const expired = new Promise<CloserOutcome>(resolve => {
    timer = unrefTimer(timeout, () => {
      controller.abort(new Error(`closer "${name}" timed out after ${timeout} ms`))
      resolve(finish('timeout', `did not finish within ${timeout} ms`))
    })
  })
  const ran = (async () => { await fn(controller.signal) })()
    .then(() => finish('ok'), (error: unknown) => finish('error', error))
  try {
    return await Promise.race([ran, expired])
  } finally {
    clearTimeout(timer)
  }
}

/**
 * The resources the app registered with `fastify.drain.addCloser()`. They close
 * like a stack, last registered first, one at a time, because a resource
 * registered later usually depends on one registered earlier (a cache client
 * on top of its connection pool).
 */
export class Closers {
  readonly #closers: Closer[] = []

  get size (): number {
    return this.#closers.length
  }

  add (name: string, fn: CloserFunction, timeout: number | undefined): void {
    this.#closers.push({ name, fn, timeout })
  }

  /** Runs every closer; each gets min(its timeout, what `remaining()` says is left). */
  async run (defaultTimeout: number, remaining: () => number): Promise<CloserOutcome[]> {
    const outcomes: CloserOutcome[] = []
    for (const closer of [...this.#closers].reverse()) {
      outcomes.push(await runBounded(closer.name, closer.fn, Math.min(closer.timeout ?? defaultTimeout, remaining())))
    }
    return outcomes
  }
}
