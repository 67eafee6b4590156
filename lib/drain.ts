// Longer than 150 lines: the sequence, plus the state its phases share (the deadline,
// the phase times, what was cut, the closers' outcomes) and the read-only view
// fastify.drain exposes of it. Every policy lives elsewhere: see the class comment.
import { setMaxListeners } from 'node:events'
import type { FastifyBaseLogger } from 'fastify'
import type { ResolvedOptions } from './options.js'
import type { DrainDelay, DrainReport, DrainPhases } from './report.js'
import { AlreadyClosedError, CloserAfterStartError } from './errors.js'
import { StateMachine, type DrainState } from './state.js'
import { Deadline, now } from './deadline.js'
import { inFlightEnd } from './budget.js'
import { keepServing } from './delay.js'
import { Closers, validateCloser, type CloserFunction, type CloserOptions, type CloserOutcome } from './closers.js'
import type { ConnectionTracker } from './connections/tracker.js'
import { closeConnections, closeListeners, destroyRemaining } from './connections/closing.js'
import type { Server } from 'node:net'
import type { BackgroundWork } from './background-work.js'
import { armExitWatchdog, watchdogAt, type Watchdog } from './watchdog.js'
import type { Participants } from './participants.js'
import { buildReport, logReport, round } from './report.js'
import { exitFlushTimeout, exitProcess } from './exit.js'
import { signalExitCode } from './signals.js'

export interface StartOptions {
  /** Skip `drainDelay`: SIGINT, or a preStop call that has already waited it out. */
  skipDelay?: boolean
  /** Monotonic time the termination really began (a preStop call), if earlier than now. */
  startedAt?: number
  signal?: NodeJS.Signals
  /** The whole budget, if shorter than gracePeriod − exitMargin (a crash drains briefly). */
  budgetMs?: number
  /** The crash that started the drain (`drainOnCrash`). */
  crash?: { error: string, origin: string }
  /** Wall-clock time of `startedAt`, given by a drain group so that every member reports the same `startedAt`. */
  startedAtWall?: number
}

/**
 * What a drain group (group.ts) is to each of its members' drains: it starts
 * them all together, holds each one's listener until every member's delay has
 * ended, and takes each report, to log one and exit once.
 */
export interface GroupLink {
  /** Starts every member, this one included, with one start time and the same options. */
  start (reason: string, options: StartOptions): void
  /** Resolves when every member's delay has ended (or `forced` aborts): the listeners close together. */
  delayEnded (forced: AbortSignal): Promise<void>
  /** This member's report, final: instead of logging it and exiting. */
  finished (report: DrainReport): void
}

/** What the drain needs of the app, beyond its tracker and participants. */
export interface DrainApp {
  /** The listening server(s) to close when the delay ends. */
  readonly server: Server
  /** Fastify's own close(), unwrapped: the app's close() joins the drain instead (app-close.ts). */
  close (): Promise<void>
}

/**
 * The drain sequence (docs/design.md, "The drain sequence"), one instance per
 * Fastify app, and nothing else: start → keep serving (delay.ts) → close
 * connections (connections/closing.ts) → close resources (closers.ts) →
 * finish (the report and the exit code, report.ts). Each phase is announced
 * to the participants (participants.ts), in their declared order.
 */
export class Drain {
  readonly #app: DrainApp
  readonly #background: BackgroundWork
  readonly #options: ResolvedOptions
  readonly #log: FastifyBaseLogger
  readonly #tracker: ConnectionTracker
  readonly #participants: Participants
  readonly #closers: Closers
  readonly #state = new StateMachine()
  readonly #aborter = new AbortController()
  /** Aborts every wait of the drain when it is forced to end (deadline or second signal). */
  readonly #forced = new AbortController()
  #deadline: Deadline | undefined
  #running: Promise<DrainReport> | undefined
  #resolve: ((report: DrainReport) => void) | undefined
  #report: DrainReport | undefined
  #reason = 'api'
  #signal: NodeJS.Signals | undefined
  #phases: DrainPhases = { draining: 0 }
  #delay: DrainDelay = { plannedMs: 0, actualMs: 0, extendedMs: 0, endedBy: 'forced' }
  #openAtStart = 0
  #inFlightAtStart = 0
  #cut: string[] = []
  #outcomes: CloserOutcome[] = []
  #abandoned: string[] = []
  /** Milliseconds after the start at which in-flight requests and tracked work are cut. */
  #inFlightEndMs = 0
  #crash: StartOptions['crash']
  #startedAtWall: number | undefined
  #group: GroupLink | undefined
  /** The listener was found closed by someone else when the delay ended: the drain could not keep serving. */
  #listenerClosedEarly = false
  #watchdog: Watchdog | undefined
  /** Settles when the drain's fastify.close() does: an app.close() during the drain waits on it. */
  readonly #appClosed: Promise<void>
  #resolveAppClosed: () => void = () => {}

  constructor (app: DrainApp, options: ResolvedOptions, log: FastifyBaseLogger, tracker: ConnectionTracker,
    participants: Participants, background: BackgroundWork) {
    this.#app = app
    this.#options = options
    this.#log = log
    this.#tracker = tracker
    this.#participants = participants
    this.#background = background
    this.#appClosed = new Promise(resolve => { this.#resolveAppClosed = resolve })
    this.#closers = new Closers(async () => {
      try {
        await app.close()
      } finally {
        this.#resolveAppClosed()
      }
    })
    // One signal shared by every SSE stream and long poll: each adds its own abort listener,
    // and 11 of them are not a leak (Node would warn at the 11th).
    setMaxListeners(0, this.#aborter.signal)
  }

  /** Settles when the drain has closed the app: what an `app.close()` during the drain returns. */
  get appClosed (): Promise<void> {
    return this.#appClosed
  }

  /** The app closed the listener itself during the delay: the drain could not keep serving (report, exit 1). */
  noteListenerClosedEarly (): void {
    if (this.#state.current === 'draining') this.#listenerClosedEarly = true
  }

  get state (): DrainState {
    return this.#state.current
  }

  /** Aborts when the drain starts: long-lived handlers (SSE, long polls) end their responses on it. */
  get signal (): AbortSignal {
    return this.#aborter.signal
  }

  /** True between the drain's start and its end: 'draining' or 'closing'. */
  get running (): boolean {
    return this.#state.isDraining && this.#state.current !== 'closed'
  }

  get inFlight (): number {
    return this.#tracker.inFlight
  }

  /** The last drain's report, once it has finished. */
  get report (): DrainReport | undefined {
    return this.#report
  }

  /** The deadline of the running drain, for the modules that schedule against it. */
  get deadline (): Deadline | undefined {
    return this.#deadline
  }

  /** What started the drain ('SIGTERM', 'prestop', 'api', …) and the signal if one did, for diagnostics. */
  get startedBy (): { reason: string, signal: NodeJS.Signals | undefined } {
    return { reason: this.#reason, signal: this.#signal }
  }

  markReady (): void {
    this.#state.moveTo('ready')
  }

  /** Called when the app closes without a drain: nothing is left to do but to say so. */
  markClosed (): void {
    this.#state.moveTo('closed')
  }

  addCloser (name: string, fn: CloserFunction, options?: CloserOptions): void {
    validateCloser(name, fn, options)
    if (this.#state.isDraining) throw new CloserAfterStartError(name, this.#state.current)
    this.#closers.add(name, fn, options?.timeout)
  }

  /** Makes this drain a member of a drain group: the group starts it, holds its listener, takes its report. */
  joinGroup (group: GroupLink): void {
    this.#group = group
  }

  /**
   * Starts the drain (once; later calls return the same report promise). In a
   * drain group, whatever starts one member (the API, preStop, a crash) starts them all.
   */
  start (reason = 'api', options: StartOptions = {}): Promise<DrainReport> {
    if (this.#running !== undefined) return this.#running
    // Closed without a drain (app.close()): a drain now would only call process.exit(0) out of the blue.
    if (this.#state.current === 'closed') return Promise.reject(new AlreadyClosedError())
    this.#group?.start(reason, options)
    return this.startOwn(reason, options)
  }

  /** Starts this app's drain only: what start() does alone, and what a drain group does for each member. */
  startOwn (reason: string, options: StartOptions): Promise<DrainReport> {
    if (this.#running !== undefined) return this.#running
    if (this.#state.current === 'closed') return Promise.reject(new AlreadyClosedError())
    this.#running = new Promise(resolve => { this.#resolve = resolve })
    this.#reason = reason
    this.#signal = options.signal
    this.#crash = options.crash
    this.#startedAtWall = options.startedAtWall
    const { gracePeriod, exitMargin, closeTimeout } = this.#options
    const budget = Math.min(options.budgetMs ?? Infinity, gracePeriod - exitMargin)
    const deadline = new Deadline(options.startedAt ?? now(), budget)
    this.#deadline = deadline
    // Requests before reservations: only the closers' share and the exit margin are kept back.
    this.#inFlightEndMs = options.budgetMs === undefined ? inFlightEnd(this.#options) : Math.max(0, budget - closeTimeout)
    deadline.guard(() => { this.#finish({ by: 'deadline', exitCode: 1 }).catch(this.#logFailure) })
    // The last guard, on its own thread (watchdog.ts); only when the drain is to end the process.
    if (this.#options.exit === true && this.#group === undefined) {
      this.#watchdog = armExitWatchdog(watchdogAt(deadline.startedAt, this.#options), {})
    }
    this.#state.moveTo('draining')
    this.#tracker.startDraining()
    this.#openAtStart = this.#tracker.size
    this.#inFlightAtStart = this.#tracker.inFlight
    // Before the signal aborts: participants see what is open before the app's handlers react to it.
    this.#participants.draining(deadline)
    this.#aborter.abort(new Error(`drain started: ${reason}`))
    this.#log.info({ reason, gracePeriod: this.#options.gracePeriod, deadlineMs: round(deadline.end - deadline.startedAt) },
      'drain started: readiness now fails, still serving')
    this.#run(options.skipDelay === true).catch(this.#logFailure)
    return this.#running
  }

  /** A second signal: exit at once with 128 + its number, as a shell would report the kill. */
  forceExit (signal: NodeJS.Signals): void {
    this.#log.warn({ signal }, 'second signal during the drain: exiting now')
    this.forceEnd('second signal', signalExitCode(signal))
  }

  /** Ends the drain at once (a second signal, a crash during the drain) with `exitCode`. */
  forceEnd (by: string, exitCode: number): void {
    this.#finish({ by, exitCode }).catch(this.#logFailure)
  }

  readonly #logFailure = (error: unknown): void => {
    this.#log.error({ err: error }, 'drain failed unexpectedly')
  }

  async #run (skipDelay: boolean): Promise<void> {
    const deadline = this.#deadline as Deadline
    this.#delay.plannedMs = skipDelay ? 0 : this.#options.drainDelay
    this.#delay = await keepServing({ deadline, options: this.#options, tracker: this.#tracker, forced: this.#forced.signal, log: this.#log }, skipDelay)
    if (this.#forced.signal.aborted) return
    if (this.#group !== undefined) {
      // The delay once for the whole group: this listener stays open until every member's delay has ended.
      await this.#group.delayEnded(this.#forced.signal)
      if (this.#forced.signal.aborted) return
      this.#delay = { ...this.#delay, actualMs: Math.max(this.#delay.actualMs, round(deadline.elapsed())) }
    }
    await this.#closeConnections()
    if (this.#forced.signal.aborted) return
    await this.#waitForBackgroundWork()
    if (this.#forced.signal.aborted) return
    await this.#closeResources()
    if (this.#forced.signal.aborted) return
    await this.#finish()
  }

  /** Closing phase: refuse new connections, close idle ones, wait for in-flight requests within the budget. */
  async #closeConnections (): Promise<void> {
    const deadline = this.#deadline as Deadline
    this.#state.moveTo('closing')
    this.#phases.closing = round(deadline.elapsed())
    if (!this.#app.server.listening && this.#options.drainDelay > 0) this.noteListenerClosedEarly()
    // Every server the app listens on: Fastify opens a second one for `listen({ host: 'localhost' })`.
    closeListeners(this.#tracker)
    this.#log.info({ elapsedMs: this.#phases.closing, inFlight: this.#tracker.inFlight, openConnections: this.#tracker.size },
      `listener closed after ${this.#phases.closing} ms: new connections are refused; ${this.#tracker.inFlight} in flight`)
    this.#participants.closing()
    // Sockets stalled mid-request are destroyed on the way (stallTimeout) and named in the report.
    this.#cut.push(...await closeConnections(this.#tracker, deadline.until(this.#inFlightEndMs), this.#forced.signal, this.#options.stallTimeout))
    if (this.#tracker.size > 0 && !this.#forced.signal.aborted) {
      this.#cut.push(...this.#spendBudget())
      this.#log.warn({ cut: this.#cut }, 'drain budget spent: destroyed the connections still open')
    }
  }

  /** The participants hear it first (told once, however the budget ran out), then every socket still open is destroyed. */
  #spendBudget (): string[] {
    this.#participants.budgetSpent()
    return destroyRemaining(this.#tracker)
  }

  /**
   * Tracked background work holds the closers, within the same budget as the
   * requests: a job started after its reply still has its pool (background-work.ts).
   */
  async #waitForBackgroundWork (): Promise<void> {
    const deadline = this.#deadline as Deadline
    await this.#background.settleWithin(deadline.until(this.#inFlightEndMs), this.#forced.signal)
    if (this.#forced.signal.aborted) return
    this.#background.seal(this.#state.current)
    if (this.#background.pending > 0) {
      this.#participants.budgetSpent()
      this.#abandoned = this.#background.abandon()
      this.#log.warn({ abandoned: this.#abandoned }, 'drain budget spent: background work abandoned')
    }
  }

  /** Strictly after the last response: the app's onClose hooks, then the closers, each bounded. */
  async #closeResources (): Promise<void> {
    const deadline = this.#deadline as Deadline
    this.#phases.resourcesClosing = round(deadline.elapsed())
    this.#participants.resourcesClosing()
    // fastify.close() (the app's onClose hooks) first, then the closers, last added first: see closers.ts.
    this.#outcomes = await this.#closers.run(this.#options.closeTimeout, () => deadline.remaining(), this.#logOutcome)
  }

  readonly #logOutcome = (outcome: CloserOutcome): void => {
    if (outcome.outcome === 'ok') return
    this.#log.error({ closer: outcome }, `closer "${outcome.name}" ${outcome.outcome} after ${outcome.durationMs} ms`)
  }

  /**
   * The app is closing without a drain (tests, fastify-cli, a failed startup):
   * its onClose hooks are running, so close the closers' resources too, each
   * bounded by its own timeout, rather than leave them open. No-op after a drain.
   */
  async closeWithoutDrain (): Promise<void> {
    if (this.#running !== undefined || this.#closers.size === 0) return
    await this.#closers.run(this.#options.closeTimeout, () => Infinity, this.#logOutcome, { withApp: false })
  }

  /**
   * Ends the drain exactly once: normally, or forced by the deadline or a second
   * signal (which bring their own exit code). The report and the exit code are
   * built from the facts gathered here (report.ts).
   */
  async #finish (forcedEnd?: { by: string, exitCode: number }): Promise<void> {
    if (this.#report !== undefined) return
    const deadline = this.#deadline as Deadline
    if (forcedEnd !== undefined) {
      this.#forced.abort()
      this.#outcomes = this.#closers.abandon(forcedEnd.by)
      const cut = this.#spendBudget()
      this.#cut.push(...cut)
      this.#background.seal(this.#state.current)
      this.#abandoned.push(...this.#background.abandon())
      this.#log.warn({ forcedBy: forcedEnd.by, cut }, `drain forced to end by the ${forcedEnd.by}`)
    }
    // An app.close() that joined the drain must not wait for a close that will never come.
    this.#resolveAppClosed()
    deadline.disarm()
    this.#state.moveTo('closed')
    this.#phases.closed = round(deadline.elapsed())
    const report = buildReport({
      reason: this.#reason,
      signal: this.#signal,
      deadline,
      phases: this.#phases,
      delay: this.#delay,
      inFlightAtStart: this.#inFlightAtStart,
      openAtStart: this.#openAtStart,
      cut: this.#cut,
      closers: this.#outcomes,
      connections: this.#tracker.counts(),
      sections: this.#participants.report(),
      forcedEnd,
      background: this.#background.counts(this.#abandoned),
      crash: this.#crash,
      listenerClosedEarly: this.#listenerClosedEarly,
      // Read at the end: a non-zero code the app set (a failed job, say) outlives a clean drain.
      appExitCode: typeof process.exitCode === 'number' ? process.exitCode : Number(process.exitCode ?? 0),
      startedAtWall: this.#startedAtWall
    })
    this.#report = report
    // A group member's report is a section of the group's one report (group.ts).
    if (this.#group === undefined) logReport(this.#log, report)
    this.#participants.closed(report)
    // Not awaited: the health port may still be closing while the process exits (exit.ts).
    this.#participants.dispose().catch(this.#logFailure)
    this.#resolve?.(report)
    // The group logs one report and exits once, when every member has finished.
    if (this.#group !== undefined) return this.#group.finished(report)
    await exitProcess(this.#options.exit, report.exitCode, report, this.#log, exitFlushTimeout(this.#options.exitMargin))
    // Still running: `exit` is false or a function that did not end the process.
    this.#watchdog?.disarm()
  }
}
