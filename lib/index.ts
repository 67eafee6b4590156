import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import { resolveOptions, type GracefulDrainOptions } from './options.js'
import { AlreadyRegisteredError } from './errors.js'
import { ConnectionTracker } from './connections.js'
import { Drain } from './drain.js'
import { installSignals } from './signals.js'
import { probePaths, registerProbes } from './health.js'
import type { CloserFunction, CloserOptions } from './closers.js'
import type { DrainReport } from './report.js'
import type { DrainState } from './state.js'

/** `fastify.drain`: the drain's state and controls. */
export interface GracefulDrain {
  /** 'starting' until the server listens, then 'ready', 'draining', 'closing', 'closed'. */
  readonly state: DrainState
  /** Aborts when the drain starts: end SSE streams and long polls on it. */
  readonly signal: AbortSignal
  /** Requests being handled now (probes excluded). */
  readonly inFlight: number
  /** The report of the drain, once it has finished. */
  readonly report: DrainReport | undefined
  /** Starts the drain without a signal; resolves with the report (the same promise on every call). */
  start (reason?: string): Promise<DrainReport>
  /** Closes a resource after the last response and after the app's onClose hooks; last added, first closed. */
  addCloser (name: string, fn: CloserFunction, options?: CloserOptions): void
}

declare module 'fastify' {
  interface FastifyInstance {
    drain: GracefulDrain
  }
}

const gracefulDrainPlugin: FastifyPluginAsync<GracefulDrainOptions> = async (fastify, opts) => {
  if (fastify.hasDecorator('drain')) throw new AlreadyRegisteredError()
  const options = resolveOptions(opts)
  const log = fastify.log.child({ plugin: 'fastify-graceful-drain' })
  const probes = probePaths(options)
  // A probe may carry a query string (`/readyz?verbose`); it is still a probe, not in-flight work.
  const tracker = new ConnectionTracker(fastify.server, url => url !== undefined && probes.has(url.split('?', 1)[0] ?? url))
  const drain = new Drain(fastify as FastifyInstance, options, log, tracker)

  const signals = installSignals(options.signals, signal => {
    if (drain.state === 'draining' || drain.state === 'closing') return drain.forceExit(signal)
    // SIGINT is Ctrl-C in a terminal: nobody routes traffic here, so skip the delay.
    drain.start(signal, { signal, skipDelay: signal === 'SIGINT' }).catch(() => {})
  })
  for (const { signal, listeners } of signals.foreign) {
    log.warn({ signal, listeners }, `${listeners} other ${signal} listener(s) were installed before fastify-graceful-drain ` +
      '(close-with-grace, fastify-cli, the app?): they may close the server at once and undo the drain; remove them')
  }
  drain.onFinished(() => {
    signals.uninstall()
    tracker.detach()
  })

  const api: GracefulDrain = Object.freeze({
    get state () { return drain.state },
    get signal () { return drain.signal },
    get inFlight () { return drain.inFlight },
    get report () { return drain.report },
    start: (reason?: string) => drain.start(reason ?? 'api'),
    addCloser: (name: string, fn: CloserFunction, closerOptions?: CloserOptions) => drain.addCloser(name, fn, closerOptions)
  })
  fastify.decorate('drain', api)

  registerProbes(fastify as FastifyInstance, options, { get state () { return drain.state }, failingCheck: async () => undefined })

  fastify.addHook('onListen', async () => { drain.markReady() })
  fastify.addHook('onClose', async () => {
    // A drain calls fastify.close() itself and cleans up when it finishes; an
    // app closing on its own (tests, fastify-cli) must not leave listeners behind.
    if (drain.state === 'draining' || drain.state === 'closing') return
    drain.markClosed()
    signals.uninstall()
    tracker.detach()
  })
}

/** The plugin: `await app.register(gracefulDrain, { gracePeriod: 30_000 })`. */
export const gracefulDrain = fp(gracefulDrainPlugin, { fastify: '5.x', name: 'fastify-graceful-drain' })

export default gracefulDrain
// `require('fastify-graceful-drain')` (Node ≥ 20.19 loads this ESM build) returns the plugin itself, as CommonJS users expect.
export { gracefulDrain as 'module.exports' }

export { resolveOptions, defaults } from './options.js'
export type { GracefulDrainOptions, ReadinessOptions, LivenessOptions, PreStopOptions, ReadinessCheck, ExitFunction, ResolvedOptions } from './options.js'
export type { DrainReport, DrainPhases } from './report.js'
export type { DrainState } from './state.js'
export type { CloserFunction, CloserOptions, CloserOutcome } from './closers.js'
export type { GracefulDrainError } from './errors.js'
