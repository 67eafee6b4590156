import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import type { ResolvedOptions } from '../options.js'
import type { Drain } from '../drain.js'
import type { DrainState } from '../state.js'
import type { DrainParticipant } from '../participants.js'
import { InvalidOptionError } from '../errors.js'
import { probeEndpoints, probePaths, type ProbeSource } from './probes.js'
import { answerBeforeHooks, registerEndpoints } from './probe-first.js'
import { Checks, namedChecks, type Check } from './checks.js'
import { EVENT_LOOP_CHECK, EventLoopDelay, eventLoopCheck } from './event-loop.js'
import { StartupTasks } from './startup-tasks.js'
import { createHealthPort, type HealthPort } from './health-port.js'
import { preStopEndpoint } from './prestop.js'

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
 * The liveness checks: the built-in event-loop check first, when
 * `maxEventLoopDelay` is set (a stalled loop also makes the user's checks time
 * out, and its name is the better diagnosis), then the user's, in their order.
 */
function livenessChecks (options: ResolvedOptions, log: FastifyBaseLogger): { checks: Checks | undefined, monitor: EventLoopDelay | undefined } {
  const liveness = options.liveness
  if (liveness === false) return { checks: undefined, monitor: undefined }
  const list: Check[] = namedChecks(liveness.checks)
  let monitor: EventLoopDelay | undefined
  if (liveness.maxEventLoopDelay !== undefined) {
    if (Object.hasOwn(liveness.checks, EVENT_LOOP_CHECK)) {
      throw new InvalidOptionError(`liveness.checks.${EVENT_LOOP_CHECK}`, 'renamed when liveness.maxEventLoopDelay is set',
        liveness.checks[EVENT_LOOP_CHECK], `"${EVENT_LOOP_CHECK}" is the name of the built-in check that maxEventLoopDelay adds`)
    }
    monitor = new EventLoopDelay()
    list.unshift(eventLoopCheck(monitor, liveness.maxEventLoopDelay))
  }
  return { checks: new Checks('liveness', list, liveness, log), monitor }
}

/**
 * Wires what Kubernetes talks to (docs/design.md, "Probes and Kubernetes"): the
 * probes (on the main port or the health port), readiness and liveness checks,
 * startup tasks, and the preStop endpoint.
 */
export function setupKubernetes (app: FastifyInstance, options: ResolvedOptions, log: FastifyBaseLogger, drain: Drain): KubernetesWiring {
  const startup = new StartupTasks(log)
  const ready = options.readiness === false ? undefined : new Checks('readiness', namedChecks(options.readiness.checks), options.readiness, log)
  const live = livenessChecks(options, log)
  const monitor = live.monitor
  // The app's close ends the sampling, after a drain (which closes the app) as on a plain app.close():
  // only the report and the exit are left, and a stopped monitor passes the check.
  if (monitor !== undefined) app.addHook('onClose', async () => { monitor.stop() })
  const source: ProbeSource = {
    // 'ready' in the drain's sense (listening) is not ready for traffic while startup tasks run.
    get state (): DrainState { return drain.state === 'ready' && startup.blocking ? 'starting' : drain.state },
    readinessFailing: async () => await ready?.failingCheck(),
    livenessFailing: async () => await live.checks?.failingCheck()
  }
  const participants: DrainParticipant[] = []
  const endpoints = probeEndpoints(options, source)
  if (options.preStop !== false) {
    const preStop = preStopEndpoint({ ...options.preStop, drainDelay: options.drainDelay }, drain, log)
    endpoints.push(preStop.endpoint)
    participants.push(preStop.participant)
  }
  // On the main port or the health port: answered before the app's hooks, and routes for inject().
  const serve = (target: FastifyInstance): void => {
    registerEndpoints(target, endpoints, options.probeLogLevel)
    if (!answerBeforeHooks(target, endpoints, options.probeLogLevel)) {
      log.warn('the probes go through the app\'s hooks (auth, rate limits, under-pressure): Fastify\'s request handler ' +
        'is not a listener of the server (a serverFactory that wraps it?); set healthPort to keep them apart')
    }
  }

  let health: HealthPort | undefined
  if (options.healthPort === undefined) serve(app)
  else {
    health = createHealthPort(app, options.healthPort, options.healthHost, options.probeLogLevel, log, serve)
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
