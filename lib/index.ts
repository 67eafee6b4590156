// Longer than 150 lines: the decorator's public interface and its TSDoc live here, with the wiring.
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import { defaults, resolveOptions, type GracefulDrainOptions } from './options.js'
import { AlreadyRegisteredError } from './errors.js'
import { ConnectionTracker, trackEveryListener } from './connections/tracker.js'
import { pathMatcher } from './connections/path-matcher.js'
import { Drain } from './drain.js'
import { Participants } from './participants.js'
import { assertSignalsFree, drainOnSignal, installSignals, type InstalledSignals } from './signals.js'
import { groupMembership } from './group.js'
import { mainPortProbePaths, setupKubernetes } from './kubernetes/index.js'
import { warnAboutLateSignalListeners } from './coexistence/coexistence.js'
import { setupProtocols } from './protocols/index.js'
import { logBudget, warnAboutPlatform, warnIfNamespaceInit } from './kubernetes/platform.js'
import { channels, diagnosticsParticipant } from './observability/diagnostics.js'
import { registerMetrics } from './observability/metrics.js'
import type { CloserFunction, CloserOptions } from './closers.js'
import { BackgroundWork, backgroundWorkParticipant, type BackgroundWorkInput } from './background-work.js'
import { joinAppClose } from './app-close.js'
import { installCrashDrain } from './crash.js'
import { standbyWatchdog } from './watchdog.js'
import { requestSignalAt } from './protocols/request-signal.js'
import { warnAboutTimeouts } from './kubernetes/timeout-audit.js'
import { takeOverSignals } from './coexistence/fastify-cli.js'
import type { DrainGroupReport, DrainReport } from './report.js'
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
  /** Readiness says 'starting' until `task` resolves (and for good if it rejects): migrations, cache warm-up. */
  startupTask (name: string, task: PromiseLike<unknown>): void
  /**
   * Work that is not a request (a queue job, a write after `reply.send()`, a cron tick): the drain waits for it
   * before closing resources, within the in-flight budget. `work` is a promise, or a function given an AbortSignal
   * that aborts with `request.drainSignal`. Returns the work's result.
   */
  track<T> (name: string, work: BackgroundWorkInput<T>): Promise<T>
  /** The port the health listener is bound to (`healthPort`, or the one picked for 0), once it listens. */
  readonly healthPort: number | undefined
  /** The drain group this app belongs to (the `group` option), or undefined when it drains alone. */
  readonly group: DrainGroupInfo | undefined
}

/** `fastify.drain.group`: the group's name, this app's name in it, and the combined report once logged. */
export interface DrainGroupInfo {
  readonly name: string
  readonly member: string
  /** Every member's name, in registration order. */
  readonly members: readonly string[]
  readonly report: DrainGroupReport | undefined
}

declare module 'fastify' {
  interface FastifyRequest {
    /**
     * Aborts shortly before the drain's budget for in-flight requests runs out
     * (1 s before, or a tenth of that budget if less): pass it to your database
     * query or upstream call, catch the abort and answer, instead of having the socket cut.
     */
    readonly drainSignal: AbortSignal
  }
  interface FastifyInstance {
    drain: GracefulDrain
  }
}

const gracefulDrainPlugin: FastifyPluginAsync<GracefulDrainOptions> = async (fastify, opts) => {
  if (fastify.hasDecorator('drain')) throw new AlreadyRegisteredError()
  const resolved = resolveOptions(opts)
  // Refuse before anything is set up, so a refused registration leaves nothing behind: a taken
  // signal, or a group this app may not join (group.ts), whose budget, signals and exit it takes.
  const membership = groupMembership(resolved, opts ?? {})
  const options = membership?.options ?? resolved
  if (membership === undefined) assertSignalsFree(options.signals)
  const log = fastify.log.child({ plugin: 'fastify-graceful-drain' })
  const probes = mainPortProbePaths(options)
  // A probe may carry a query string (`/readyz?verbose`); it is still a probe, not in-flight work.
  const tracker = new ConnectionTracker(fastify.server, pathMatcher(probes), pathMatcher(options.quietPeriodIgnore))
  // listen({ host: 'localhost' }) opens a second server beside fastify.server: track it too.
  trackEveryListener(fastify as FastifyInstance, tracker)
  // Each module's part in the drain; the order they hear each phase in is declared in participants.ts.
  const participants = new Participants()
  const background = new BackgroundWork()
  // The app's own close() joins a running drain; the drain alone calls Fastify's (app-close.ts).
  const close = joinAppClose(fastify as FastifyInstance, { get running () { return drain.running }, get appClosed () { return drain.appClosed } }, log)
  const drain = new Drain({ server: fastify.server, close }, options, log, tracker, participants, background)
  participants.add(backgroundWorkParticipant(background, () => requestSignalAt(options)))
  if (options.drainOnCrash !== false && membership === undefined) participants.add(installCrashDrain(drain, options, log))
  if (options.drainOnCrash !== false && membership?.group.claimCrashHandler() === true) {
    // Once per group: a crash drains every member; a crash during that drain forces them all.
    const group = membership.group
    participants.add(installCrashDrain({ get running () { return group.running }, start: (reason, start) => drain.start(reason, start), forceEnd: (by, code) => group.force(by, code) }, options, log))
  }
  // Probes, health port, preStop, readiness checks and startup tasks: see kubernetes/.
  const kubernetes = setupKubernetes(fastify as FastifyInstance, options, log, drain)
  participants.add(...kubernetes.participants, diagnosticsParticipant(drain, tracker, options))
  if (options.metrics !== false) participants.add(await registerMetrics(options.metrics, drain, tracker))
  // HTTP/2 GOAWAY, WebSocket 1001, event-stream counts, request.drainSignal: see protocols/.
  participants.add(...setupProtocols(fastify as FastifyInstance, options, tracker))

  // A signal starts the drain, or joins one already running; a second one forces the exit (signals.ts).
  // In a group, the group owns the signals (group.ts): this app leaves it if it closes without a drain.
  let addresses: string[] = []
  const firstOfGroup = membership?.group.members.length === 0
  const signals: InstalledSignals = membership === undefined
    ? installSignals(options.signals, drainOnSignal({
      get running () { return drain.running },
      get state () { return drain.state },
      // SIGINT is Ctrl-C in a terminal: nobody routes traffic here, so skip the delay.
      start: signal => { drain.start(signal, { signal, skipDelay: signal === 'SIGINT' }).catch(() => {}) },
      force: signal => drain.forceExit(signal)
    }, log))
    : {
        foreign: membership.group.add({ name: membership.member, drain, log, addresses: () => addresses }),
        uninstall: () => membership.group.leave(membership.member)
      }
  for (const { signal, listeners } of signals.foreign) {
    log.warn({ signal, listeners }, `${listeners} other ${signal} listener(s) were installed before fastify-graceful-drain ` +
      '(close-with-grace, fastify-cli, the app?): they may close the server at once and undo the drain; remove them')
  }
  warnAboutLateSignalListeners(fastify as FastifyInstance, membership === undefined || firstOfGroup ? options.signals : [], signals.foreign, log)
  participants.add({ name: 'signals', dispose: () => signals.uninstall() }, { name: 'connections', dispose: () => tracker.detach() })

  const api: GracefulDrain = Object.freeze({
    get state () { return drain.state },
    get signal () { return drain.signal },
    get inFlight () { return drain.inFlight },
    get report () { return drain.report },
    start: (reason?: string) => drain.start(reason ?? 'api'),
    addCloser: (name: string, fn: CloserFunction, closerOptions?: CloserOptions) => drain.addCloser(name, fn, closerOptions),
    startupTask: (name: string, task: PromiseLike<unknown>) => kubernetes.startupTask(name, task),
    track: <T>(name: string, work: BackgroundWorkInput<T>) => background.track<T>(name, work),
    get healthPort () { return kubernetes.healthPort },
    group: membership === undefined
      ? undefined
      : Object.freeze({
        name: membership.group.name,
        member: membership.member,
        get members () { return membership.group.members },
        get report () { return membership.group.report }
      })
  })
  fastify.decorate('drain', api)

  if (options.takeOverCloseWithGrace) {
    // fastify-cli installs close-with-grace after the app loads and before ready(): take its signals over then.
    fastify.addHook('onReady', async () => {
      const takeover = takeOverSignals({ signals: options.signals, log })
      participants.add({ name: 'close-with-grace', dispose: () => { if (!drain.running) takeover.restore() } })
    })
  }
  fastify.addHook('onListen', async () => {
    // The watchdog's thread boots now, not at the signal, when its boot would take the drain's CPU (watchdog.ts).
    if (options.exit === true) participants.add({ name: 'watchdog', dispose: standbyWatchdog() })
    drain.markReady()
    // For the group's report: a closed server has no address left to read.
    addresses = fastify.addresses().map(a => typeof a === 'string' ? a : a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`)
    logBudget(log, options)
    warnAboutPlatform(log, options)
    warnIfNamespaceInit(log, options)
    warnAboutTimeouts(fastify.server, options, log)
  })
  fastify.addHook('onClose', async () => {
    // A drain calls fastify.close() itself and disposes of the participants when it finishes;
    // an app closing on its own (tests, fastify-cli) must not leave listeners behind either.
    if (drain.running) return
    drain.markClosed()
    await participants.dispose()
    // Resources registered with addCloser() are closed on any close, not only after a drain.
    await drain.closeWithoutDrain()
  })
}

const plugin = fp(gracefulDrainPlugin, { fastify: '5.x', name: 'fastify-graceful-drain' })

/**
 * The plugin: `await app.register(gracefulDrain, { gracePeriod: 30_000 })`.
 * Fastify's convention for CommonJS: `require('fastify-graceful-drain')` is the
 * plugin itself (Node ≥ 20.19 loads this ESM build), carrying `default`,
 * `fastifyGracefulDrain` and every other runtime export, so `import` and
 * `require` see the same names.
 */
export const gracefulDrain = Object.assign(plugin, {
  default: plugin,
  fastifyGracefulDrain: plugin,
  gracefulDrain: plugin,
  resolveOptions,
  defaults,
  diagnosticsChannels: channels
})
export { gracefulDrain as fastifyGracefulDrain, gracefulDrain as 'module.exports', resolveOptions, defaults, channels as diagnosticsChannels }
export default gracefulDrain

export type { GracefulDrainOptions, GroupOptions, ReadinessOptions, LivenessOptions, PreStopOptions, ReadinessCheck, LivenessCheck, DrainOnCrashOptions, ExitFunction, ResolvedOptions, MetricsOptions, MetricsRegistry } from './options.js'
export type { BackgroundWorkInput, BackgroundWorkCounts } from './background-work.js'
export type { DrainReport, DrainPhases, LongLivedCounts, DrainGroupReport, DrainGroupSection } from './report.js'
export type { DrainState } from './state.js'
export type { CloserFunction, CloserOptions, CloserOutcome } from './closers.js'
export type { GracefulDrainError } from './errors.js'
