import type { FastifyBaseLogger } from 'fastify'
import type { ExitFunction } from './options.js'
import type { DrainReport } from './report.js'
import { unrefTimer } from './deadline.js'

/** The longest we wait for an asynchronous log destination before exiting anyway. */
export const FLUSH_TIMEOUT_MS = 500

/**
 * The logger flush before exit takes a quarter of the exit margin at most: the
 * watchdog fires a quarter of it before gracePeriod (watchdog.ts, watchdogAt).
 */
export function exitFlushTimeout (exitMargin: number): number {
  return Math.min(FLUSH_TIMEOUT_MS, exitMargin / 4)
}

type Flushable = FastifyBaseLogger & { flush?: (cb?: (err?: Error) => void) => void }

/** Flushes pino's buffered destination (if it has one); bounded, never throws. */
export function flushLogger (log: FastifyBaseLogger, timeout = FLUSH_TIMEOUT_MS): Promise<void> {
  const flush = (log as Flushable).flush
  if (typeof flush !== 'function') return Promise.resolve()
  return new Promise(resolve => {
    const timer = unrefTimer(timeout, resolve)
    try {
      flush.call(log, () => { clearTimeout(timer); resolve() })
    } catch {
      clearTimeout(timer)
      resolve()
    }
  })
}

/**
 * The only place the plugin ends the process. `exit: false` leaves the process
 * alone (tests, embedding), a function replaces `process.exit`.
 */
export async function exitProcess (
  exit: boolean | ExitFunction,
  code: number,
  report: DrainReport | undefined,
  log: FastifyBaseLogger,
  flushTimeout = FLUSH_TIMEOUT_MS
): Promise<void> {
  if (exit === false) return
  await flushLogger(log, flushTimeout)
  if (typeof exit === 'function') {
    await exit(code, report as DrainReport)
    return
  }
  // Set first: exit hooks such as signal-exit's (tap, write-file-atomic) re-exit with
  // process.exitCode, which would turn a forced drain's 1 into the app's own code.
  process.exitCode = code
  process.exit(code)
}
