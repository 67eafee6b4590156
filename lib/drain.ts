// Longer than 150 lines: the sequence, plus the state its phases share (the deadline,
// the phase times, what was cut, the closers' outcomes) and the read-only view
// fastify.drain exposes of it. Every policy lives elsewhere: see the class comment.
import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import type { ResolvedOptions } from './options.js'
import type { DrainDelay, DrainReport, DrainPhases } from './report.js'
import { AlreadyClosedError, CloserAfterStartError } from './errors.js'
import { StateMachine, type DrainState } from './state.js'
import { Deadline, now } from './deadline.js'
import { inFlightEnd } from './budget.js'
import { keepServing } from './delay.js'
import { Closers, validateCloser, type CloserFunction, type CloserOptions, type CloserOutcome } from './closers.js'
import type { ConnectionTracker } from './connections/tracker.js'
import { closeConnections, destroyRemaining } from './connections/closing.js'
import { closeListener } from './connections/socket-internals.js'
import type { Participants } from './participants.js'
import { buildReport, logReport, round } from './report.js'
import { exitProcess } from './exit.js'
import { signalExitCode } from './signals.js'

export interface StartOptions {
  /** Skip `drainDelay`: SIGINT, or a preStop call that has already waited it out. */
  skipDelay?: boolean
  /** Monotonic time the termination really began (a preStop call), if earlier than now. */
  startedAt?: number
  signal?: NodeJS.Signals
}

/**
 * The drain sequence (docs/design.md, "The drain sequence"), one instance per
 * Fastify app, and nothing else: start → keep serving (delay.ts) → close
 * connections (connections/closing.ts) → close resources (closers.ts) →
 * finish (the report and the exit code, report.ts). Each phase is announced
 * to the participants (participants.ts), in their declared order.
 */
export class Drain {
  readonly #app: FastifyInstance
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

  constructor (app: FastifyInstance, options: ResolvedOptions, log: FastifyBaseLogger, tracker: ConnectionTracker, participants: Participants) {
    this.#app = app
    this.#options = options
    this.#log = log
    this.#tracker = tracker
    this.#participants = participants
    this.#closers = new Closers(() => app.close())
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

  /** Starts the drain (once; later calls return the same report promise). */
  start (reason = 'api', options: StartOptions = {}): Promise<DrainReport> {
    if (this.#running !== undefined) return this.#running
    // Closed without a drain (app.close()): a drain now would only call process.exit(0) out of the blue.
    if (this.#state.current === 'closed') return Promise.reject(new AlreadyClosedError())
    this.#running = new Promise(resolve => { this.#resolve = resolve })
    this.#reason = reason
    this.#signal = options.signal
    const deadline = new Deadline(options.startedAt ?? now(), this.#options.gracePeriod - this.#options.exitMargin)
    this.#deadline = deadline
    deadline.guard(() => { this.#finish({ by: 'deadline', exitCode: 1 }).catch(this.#logFailure) })
    this.#state.moveTo('draining')
    this.#openAtStart = this.#tracker.size
    this.#inFlightAtStart = this.#tracker.inFlight
    this.#tracker.startDraining()
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
    this.#finish({ by: 'second signal', exitCode: signalExitCode(signal) }).catch(this.#logFailure)
  }

  readonly #logFailure = (error: unknown): void => {
    this.#log.error({ err: error }, 'drain failed unexpectedly')
  }

  async #run (skipDelay: boolean): Promise<void> {
    const deadline = this.#deadline as Deadline
    this.#delay.plannedMs = skipDelay ? 0 : this.#options.drainDelay
    this.#delay = await keepServing({ deadline, options: this.#options, tracker: this.#tracker, forced: this.#forced.signal, log: this.#log }, skipDelay)
    if (this.#forced.signal.aborted) return
    await this.#closeConnections()
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
    closeListener(this.#app.server)
    this.#participants.closing()
    // Requests before reservations: only the closers' share and the exit margin are kept back.
    await closeConnections(this.#tracker, deadline.until(inFlightEnd(this.#options)), this.#forced.signal)
    if (this.#tracker.size > 0 && !this.#forced.signal.aborted) {
      this.#cut = this.#spendBudget()
      this.#log.warn({ cut: this.#cut }, 'drain budget spent: destroyed the connections still open')
    }
  }

  /** The participants hear it first (told once, however the budget ran out), then every socket still open is destroyed. */
  #spendBudget (): string[] {
    this.#participants.budgetSpent()
    return destroyRemaining(this.#tracker)
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
      this.#log.warn({ forcedBy: forcedEnd.by, cut }, `drain forced to end by the ${forcedEnd.by}`)
    }
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
      forcedEnd
    })
    this.#report = report
    logReport(this.#log, report)
    this.#participants.closed(report)
    // Not awaited: the health port may still be closing while the process exits (exit.ts).
    this.#participants.dispose().catch(this.#logFailure)
    this.#resolve?.(report)
    await exitProcess(this.#options.exit, report.exitCode, report, this.#log)
  }
}
