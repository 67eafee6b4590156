import type { FastifyInstance, LogLevel } from 'fastify'
import type { ResolvedOptions } from '../options.js'
import type { DrainState } from '../state.js'

/** What `/readyz` needs to know; readiness checks (and later sources) plug in here. */
export interface ReadinessSource {
  readonly state: DrainState
  /** Resolves the name of the first failing check, or undefined when all pass. */
  failingCheck (): Promise<string | undefined>
}

/** The probe paths served on the main port, so the connection tracker can leave them out of in-flight work. */
export function probePaths (options: ResolvedOptions): Set<string> {
  const paths = new Set<string>()
  if (options.readiness !== false) paths.add(options.readiness.path)
  if (options.liveness !== false) paths.add(options.liveness.path)
  return paths
}

/**
 * Registers `/readyz` and `/livez` on `app`. Readiness is 503 from the first
 * instant of the drain; liveness stays 200 throughout it, because a failing
 * liveness probe during a drain only invites the kubelet to restart the pod.
 */
export function registerProbes (app: FastifyInstance, options: ResolvedOptions, source: ReadinessSource): void {
  const logLevel = options.probeLogLevel as LogLevel
  const noCache = 'no-store'

  if (options.readiness !== false) {
    app.get(options.readiness.path, { logLevel }, async (_request, reply) => {
      reply.header('cache-control', noCache)
      const state = source.state
      if (state !== 'ready') return reply.code(503).send({ status: state })
      const failing = await source.failingCheck()
      // The state is read again: the drain may have started while a check ran.
      if (source.state !== 'ready') return reply.code(503).send({ status: source.state })
      if (failing !== undefined) return reply.code(503).send({ status: 'not ready', check: failing })
      return { status: 'ready' }
    })
  }

  if (options.liveness !== false) {
    app.get(options.liveness.path, { logLevel }, async (_request, reply) => {
      reply.header('cache-control', noCache)
      return { status: 'alive', state: source.state }
    })
  }
}
