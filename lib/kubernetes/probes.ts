import type { ResolvedOptions } from '../options.js'
import type { DrainState } from '../state.js'
import type { Endpoint } from './probe-first.js'

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

/** `/readyz` and `/livez` as endpoints (probe-first.ts serves them): GET, and HEAD for the headers alone. */
export function probeEndpoints (options: ResolvedOptions, source: ProbeSource): Endpoint[] {
  const endpoints: Endpoint[] = []
  const methods = ['GET', 'HEAD']
  if (options.readiness !== false) endpoints.push({ path: options.readiness.path, methods, answer: async () => await readiness(source) })
  if (options.liveness !== false) endpoints.push({ path: options.liveness.path, methods, answer: async () => await liveness(source) })
  return endpoints
}
