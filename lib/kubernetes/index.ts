import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import type { ResolvedOptions } from '../options.js'
import type { Drain } from '../drain.js'
import type { DrainState } from '../state.js'
import type { DrainParticipant } from '../participants.js'
import { probePaths, registerProbes, type ReadinessSource } from './probes.js'
import { ReadinessChecks } from './readiness-checks.js'
import { StartupTasks } from './startup-tasks.js'
import { createHealthPort, type HealthPort } from './health-port.js'
import { registerPreStop } from './prestop.js'

export interface KubernetesWiring {
  /** `fastify.drain.startupTask()`: readiness says 'starting' until `task` resolves. */
  startupTask (name: string, task: PromiseLike<unknown>): void
  /** The health listener's bound port, once it listens. */
  readonly healthPort: number | undefined
  /** preStop and the health port, each a drain participant (their order is in participants.ts). */
  readonly participants: DrainParticipant[]
}

/**
 * The paths on the main port that are not in-flight work: the probes, unless
 * they moved to the health port, and a token-guarded preStop endpoint (its
 * call lasts the whole delay and must not hold the quiet period open).
 */
export function mainPortProbePaths (options: ResolvedOptions): Set<string> {
  const paths = options.healthPort === undefined ? probePaths(options) : new Set<string>()
  if (options.preStop !== false && options.healthPort === undefined) paths.add(options.preStop.path)
  return paths
}

/**
 * Wires what Kubernetes talks to (docs/design.md, "Probes and Kubernetes"): the
 * probes (on the main port or the health port), readiness checks and startup
 * tasks, and the preStop endpoint.
 */
export function setupKubernetes (app: FastifyInstance, options: ResolvedOptions, log: FastifyBaseLogger, drain: Drain): KubernetesWiring {
  const startup = new StartupTasks(log)
  const checks = options.readiness === false ? undefined : new ReadinessChecks(options.readiness, log)
  const source: ReadinessSource = {
    // 'ready' in the drain's sense (listening) is not ready for traffic while startup tasks run.
    get state (): DrainState { return drain.state === 'ready' && startup.blocking ? 'starting' : drain.state },
    failingCheck: async () => await checks?.failingCheck()
  }
  const participants: DrainParticipant[] = []
  const routes = (target: FastifyInstance): void => {
    registerProbes(target, options, source)
    if (options.preStop === false) return
    participants.push(registerPreStop(target, { ...options.preStop, drainDelay: options.drainDelay, logLevel: options.probeLogLevel }, drain, log))
  }

  let health: HealthPort | undefined
  if (options.healthPort === undefined) routes(app)
  else {
    health = createHealthPort(app, options.healthPort, options.healthHost, options.probeLogLevel, log, routes)
    // Open until the drain's end (the kubelet keeps probing through it), and closed by a plain app.close() too.
    const port = health
    participants.push({ name: 'health-port', dispose: async () => { await port.close() } })
  }

  return {
    startupTask: (name, task) => startup.add(name, task),
    get healthPort () { return health?.port },
    participants
  }
}
