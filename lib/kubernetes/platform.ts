import type { FastifyBaseLogger } from 'fastify'
import type { ResolvedOptions } from '../options.js'
import { inFlightEnd } from '../budget.js'
import { requestSignalAt } from '../protocols/request-signal.js'

/**
 * Who sends SIGKILL, and when, when it is not Kubernetes. `gracePeriod`
 * defaults to Kubernetes' 30 s; under a platform with a shorter kill timer a
 * drain planned for 30 s is killed half-way. README, "Kill timers by platform".
 */
export interface Platform {
  readonly name: string
  /** Its SIGTERM → SIGKILL timer, in ms. */
  readonly killAfterMs: number
}

/** The platform the environment says this is, or undefined for a Kubernetes pod. */
export function detectPlatform (env: NodeJS.ProcessEnv = process.env): Platform | undefined {
  const has = (name: string): boolean => (env[name] ?? '') !== ''
  if (has('KUBERNETES_SERVICE_HOST')) return undefined
  // Cloud Run sets K_SERVICE and sends SIGKILL 10 s after SIGTERM.
  if (has('K_SERVICE')) return { name: 'Cloud Run', killAfterMs: 10_000 }
  // PM2 sets pm_id in its children; its kill_timeout defaults to 1600 ms.
  if (has('pm_id')) return { name: 'PM2', killAfterMs: 1_600 }
  // docker stop, docker compose, ECS and most supervisors: 10 s.
  return { name: 'not Kubernetes (docker stop and most supervisors kill after 10 s)', killAfterMs: 10_000 }
}

/** At listen: one info line with the resolved budget, so the arithmetic is visible before it matters. */
export function logBudget (log: FastifyBaseLogger, options: ResolvedOptions): void {
  const budget = {
    gracePeriod: options.gracePeriod,
    drainDelay: options.drainDelay,
    quietPeriod: options.quietPeriod,
    maxDrainDelay: Math.round(options.maxDrainDelay),
    requestSignalAt: Math.round(requestSignalAt(options)),
    inFlightCutAt: inFlightEnd(options),
    closeTimeout: options.closeTimeout,
    exitMargin: options.exitMargin,
    deadline: options.gracePeriod - options.exitMargin,
    derived: ['gracePeriod', 'drainDelay', 'quietPeriod', 'maxDrainDelay', 'closeTimeout', 'exitMargin']
      .filter(name => !options.given.includes(name as never))
  }
  log.info({ budget }, `drain budget: serve ${budget.drainDelay} ms after the signal (up to ${budget.maxDrainDelay} ms while ` +
    `traffic goes on), cut requests at ${budget.inFlightCutAt} ms, closers until ${budget.deadline} ms, exit by ${budget.gracePeriod} ms`)
}

/** At listen, when `gracePeriod` was left at Kubernetes' default outside Kubernetes: name the platform and the value to set. */
export function warnAboutPlatform (log: FastifyBaseLogger, options: ResolvedOptions, env: NodeJS.ProcessEnv = process.env): void {
  if (options.given.includes('gracePeriod')) return
  const platform = detectPlatform(env)
  if (platform === undefined) return
  log.warn({ platform: platform.name, gracePeriod: options.gracePeriod, suggested: platform.killAfterMs },
    `gracePeriod is not set, so the drain plans for Kubernetes' default of ${options.gracePeriod} ms, but this is ` +
    `${platform.name}: set gracePeriod: ${platform.killAfterMs} (or your platform's SIGTERM→SIGKILL time) so the drain ends before the kill`)
}

/**
 * At listen, when the drain is to end the process and this process is PID 1 of
 * its PID namespace (a container's main process with no init before it): the
 * kernel ignores signals a namespace's init sends itself that it has no handler
 * for, SIGKILL included. The watchdog (watchdog.ts) then falls back to the main
 * thread's inspector, which ends a main thread stuck in JavaScript (a loop, a
 * logger's retry loop) but not one blocked inside a system call; the platform's
 * own SIGKILL, sent from outside the namespace, ends that one at the grace period.
 */
export function warnIfNamespaceInit (log: FastifyBaseLogger, options: ResolvedOptions, pid = process.pid): void {
  if (options.exit !== true || pid !== 1) return
  log.warn({ pid },
    'this process is PID 1 (a container with no init), which cannot SIGKILL itself: if the main thread hangs, the drain\'s ' +
    'watchdog can still end a JavaScript loop, but not a thread blocked in a system call (a blocking write), which would last ' +
    'until the platform\'s own kill at the grace period; run under an init (docker run --init, tini, dumb-init, or ' +
    'shareProcessNamespace: true in the pod spec) to keep the full guard')
}
