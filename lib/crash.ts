import type { FastifyBaseLogger } from 'fastify'
import type { DrainParticipant } from './participants.js'
import type { ResolvedOptions } from './options.js'
import type { StartOptions } from './drain.js'
import { claimedByCloser } from './closers.js'

/**
 * `drainOnCrash` (docs/design.md, "The drain sequence"): an uncaught exception
 * or unhandled rejection fails readiness at once, skips the delay, lets
 * in-flight requests and tracked work finish within a short budget, runs the
 * closers and exits 1 with the error in the report. Off by default: installing
 * these handlers changes what every crash of the process does, which is the
 * app's decision, not a plugin's. A second crash, or a crash during a drain
 * already running, ends the drain at once.
 */
export interface CrashTarget {
  readonly running: boolean
  start (reason: 'crash', options: StartOptions): Promise<unknown>
  forceEnd (by: string, exitCode: number): void
}

/**
 * How a crash starts the drain: no delay, and a budget of its own (the crash
 * timeout for requests and tracked work, then the closers' share), with the
 * error in the report.
 */
export function crashStart (error: unknown, origin: string, options: Pick<ResolvedOptions, 'drainOnCrash' | 'closeTimeout'>): StartOptions {
  const message = error instanceof Error ? (error.stack ?? error.message) : String(error)
  const timeout = options.drainOnCrash === false ? 0 : options.drainOnCrash.timeout
  return { skipDelay: true, budgetMs: timeout + options.closeTimeout, crash: { error: message, origin } }
}

export function installCrashDrain (target: CrashTarget, options: Pick<ResolvedOptions, 'drainOnCrash' | 'closeTimeout'>, log: FastifyBaseLogger): DrainParticipant {
  let crashed = false
  const onCrash = (error: unknown, origin: string): void => {
    if (crashed || target.running) {
      log.fatal({ err: error, origin }, 'crash during the drain: exiting now')
      target.forceEnd('crash during the drain', 1)
      return
    }
    crashed = true
    log.error({ err: error, origin }, `${origin === 'unhandledRejection' ? 'unhandled rejection' : 'uncaught exception'}: draining before exit 1`)
    target.start('crash', crashStart(error, origin, options)).catch(() => {})
  }
  const onException = (error: unknown, origin: string): void => {
    // A throw from a close hook or closer the drain is running is that closer's outcome, not a crash (closers.ts).
    if (claimedByCloser(error)) return
    onCrash(error, origin)
  }
  const onRejection = (reason: unknown): void => onCrash(reason, 'unhandledRejection')
  process.on('uncaughtException', onException)
  process.on('unhandledRejection', onRejection)
  return {
    name: 'crash',
    dispose () {
      process.removeListener('uncaughtException', onException)
      process.removeListener('unhandledRejection', onRejection)
    }
  }
}
