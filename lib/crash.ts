import type { FastifyBaseLogger } from 'fastify'
import type { DrainParticipant } from './participants.js'
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
  crash (error: unknown, origin: string): void
  forceEnd (by: string, exitCode: number): void
}

export function installCrashDrain (target: CrashTarget, log: FastifyBaseLogger): DrainParticipant {
  let crashed = false
  const onCrash = (error: unknown, origin: string): void => {
    if (crashed || target.running) {
      log.fatal({ err: error, origin }, 'crash during the drain: exiting now')
      target.forceEnd('crash during the drain', 1)
      return
    }
    crashed = true
    log.error({ err: error, origin }, `${origin === 'unhandledRejection' ? 'unhandled rejection' : 'uncaught exception'}: draining before exit 1`)
    target.crash(error, origin)
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
