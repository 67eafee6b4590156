import type { FastifyInstance, LogLevel } from 'fastify'
import type { ResolvedOptions } from '../options.js'
import type { DrainState } from '../state.js'

/** What the probes need to know; the checks (checks.ts) and the startup tasks plug in here. */
export interface ProbeSource {
  /** The drain's state as readiness sees it: 'starting' while a startup task is pending. */
  readonly state: DrainState
  /** Resolves the name of the first failing readiness check, or undefined when all pass. */
  readinessFailing (): Promise<string | undefined>
  /** Resolves the name of the first failing liveness check, or undefined when all pass. */
  livenessFailing (): Promise<string | undefined>
}

/** A probe's answer: sent as JSON with `cache-control: no-store`. */
export interface ProbeAnswer {
  readonly statusCode: number
  readonly body: Readonly<Record<string, unknown>>
}

/** The probe paths served on the main port, so the connection tracker can leave them out of in-flight work. */
export function probePaths (options: ResolvedOptions): Set<string> {
  const paths = new Set<string>()
  if (options.readiness !== false) paths.add(options.readiness.path)
  if (options.liveness !== false) paths.add(options.liveness.path)
  return paths
}

/**
 * `/readyz`: 503 from the first instant of the drain, and while a startup
 * task or a readiness check says the app cannot take traffic.
 */
export async function readiness (source: ProbeSource): Promise<ProbeAnswer> {
  const state = source.state
  if (state !== 'ready') return { statusCode: 503, body: { status: state } }
  const failing = await source.readinessFailing()
  // The state is read again: the drain may have started while a check ran.
  if (source.state !== 'ready') return { statusCode: 503, body: { status: source.state } }
  if (failing !== undefined) return { statusCode: 503, body: { status: 'not ready', check: failing } }
  return { statusCode: 200, body: { status: 'ready' } }
}

/**
 * `/livez`: 503 only when a liveness check fails. The drain state is reported,
 * never a reason to fail: a failing liveness probe during a drain only invites
 * the kubelet to restart a pod that is about to exit anyway. A check that
 * fails during a drain still fails the probe, since the process is broken
 * whatever the drain is doing.
 */
export async function liveness (source: ProbeSource): Promise<ProbeAnswer> {
  const failing = await source.livenessFailing()
  const state = source.state
  if (failing !== undefined) return { statusCode: 503, body: { status: 'not alive', check: failing, state } }
  return { statusCode: 200, body: { status: 'alive', state } }
}

/** Registers `/readyz` and `/livez` on `app`. */
export function registerProbes (app: FastifyInstance, options: ResolvedOptions, source: ProbeSource): void {
  const logLevel = options.probeLogLevel as LogLevel
  const route = (path: string, answer: (source: ProbeSource) => Promise<ProbeAnswer>): void => {
    app.get(path, { logLevel }, async (_request, reply) => {
      reply.header('cache-control', 'no-store')
      const { statusCode, body } = await answer(source)
      return reply.code(statusCode).send(body)
    })
  }
  if (options.readiness !== false) route(options.readiness.path, readiness)
  if (options.liveness !== false) route(options.liveness.path, liveness)
}
