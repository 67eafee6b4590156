import { EventEmitter } from 'node:events'
import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import type { ResolvedOptions } from './options.js'
import type { DrainDelay, DrainReport, DrainPhases } from './report.js'
import { AlreadyClosedError, CloserAfterStartError } from './errors.js'
import { StateMachine, type DrainState } from './state.js'
import { Deadline, now, sleep } from './deadline.js'
import { inFlightEnd } from './budget.js'
import { keepServing } from './delay.js'
import { Closers, validateCloser, type CloserFunction, type CloserOptions, type CloserOutcome } from './closers.js'
import { ConnectionTracker, LINGER_MS } from './connections/tracker.js'
import { closeListener } from './connections/socket-internals.js'
import { logReport, round } from './report.js'
import { exitProcess } from './exit.js'
import { signalExitCode } from './signals.js'

/**
 * Internal phase events, so protocol and Kubernetes modules (HTTP/2, WebSocket,
 * diagnostics, metrics) hook into the sequence without growing this file:
 * 'draining' (deadline), 'closing', 'budgetSpent' (just before the remaining
 * sockets are destroyed), 'resourcesClosing', 'closed' (report).
 */
export interface DrainEvents {
  draining: [deadline: Deadline]
  closing: []
  budgetSpent: []
  resourcesClosing: []
  closed: [report: DrainReport]
}

export interface StartOptions {
  /** Skip `drainDelay`: SIGINT, or a preStop call that has already waited it out. */
  skipDelay?: boolean
  /** Monotonic time the termination really began (a preStop call), if earlier than now. */
  startedAt?: number
  signal?: NodeJS.Signals
}

/**
 * The drain sequence of DESIGN §2, one instance per Fastify app:
 * signal → draining (serve, Connection: close) → closing (listener closed,
 * idle sockets closed, in-flight awaited, the rest destroyed at the budget) →
 * fastify.close() and the closers → report → exit.
 */
export class Drain {
  readonly #app: FastifyInstance
  readonly #options: ResolvedOptions
  readonly #log: FastifyBaseLogger
  readonly #tracker: ConnectionTracker
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
  #onFinished: () => void = () => {}
  readonly #sections = new Map<string, () => unknown>()
  /** Phase events for the plugin's own modules; see DrainEvents. */
  readonly events = new EventEmitter<DrainEvents>()

  constructor (app: FastifyInstance, options: ResolvedOptions, log: FastifyBaseLogger, tracker: ConnectionTracker) {
    this.#app = app
    this.#options = options
    this.#log = log
    this.#tracker = tracker
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

  /** Runs once the drain has finished, before the exit: uninstall what the plugin installed. */
  onFinished (fn: () => void): void {
    this.#onFinished = fn
  }

  /** Adds `key` to the report, computed when the drain finishes (e.g. HTTP/2 sessions, WebSockets). */
  addReportSection (key: string, compute: () => unknown): void {
    this.#sections.set(key, compute)
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
    this.#aborter.abort(new Error(`drain started: ${reason}`))
    this.#log.info({ reason, gracePeriod: this.#options.gracePeriod, deadlineMs: round(deadline.end - deadline.startedAt) },
      'drain started: readiness now fails, still serving')
    this.events.emit('draining', deadline)
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
    this.events.emit('closing')
    // Requests before reservations: only the closers' share and the exit margin are kept back.
    const httpBudgetEnd = inFlightEnd(this.#options)
    // Ends the wait at the HTTP budget, or at once if the drain is forced.
    const budget = new AbortController()
    const onForced = (): void => budget.abort()
    this.#forced.signal.addEventListener('abort', onForced, { once: true })
    // Aborting on expiry ends the loop below: a settled budgetSpent alone would make every
    // Promise.race settle at once, a microtask loop that starves every timer, the deadline's too.
    const budgetSpent = sleep(deadline.until(httpBudgetEnd), budget.signal).then(() => budget.abort())
    // Event-driven and linear in connections: one scan ends every idle socket; the
    // next scan runs only when a fresh or lingering socket's grace runs out. Socket
    // closes wake nothing but the last one, and a response that leaves its socket
    // to linger only brings the next scan forward: re-scanning at every close took
    // 19 s (5.7 s of CPU) to drain 10,000 idle keep-alive connections.
    const empty = this.#tracker.whenEmpty()
    let scanAt = now()
    let timerAt = Infinity
    let timer: Promise<void> | undefined
    const onChange = (): void => { scanAt = Math.min(scanAt, now() + LINGER_MS) }
    // A timer may fire a fraction of a millisecond before scanAt by performance.now(): scan anyway.
    const onTimer = (): void => { scanAt = -Infinity }
    while (this.#tracker.size > 0 && !budget.signal.aborted) {
      if (now() >= scanAt) {
        const recheck = this.#tracker.closeIdle()
        scanAt = recheck === undefined ? Infinity : now() + recheck
      }
      // One timer per scan time, not per wake-up.
      if (scanAt !== timerAt) {
        timerAt = scanAt
        timer = scanAt === Infinity ? undefined : sleep(scanAt - now(), budget.signal).then(onTimer)
      }
      const waits = [this.#tracker.nextChange().then(onChange), empty, budgetSpent]
      if (timer !== undefined) waits.push(timer)
      await Promise.race(waits)
    }
    this.#forced.signal.removeEventListener('abort', onForced)
    budget.abort()
    if (this.#tracker.size > 0 && !this.#forced.signal.aborted) {
      this.events.emit('budgetSpent')
      this.#cut = this.#tracker.destroyAll()
      this.#log.warn({ cut: this.#cut }, 'drain budget spent: destroyed the connections still open')
    }
  }

  /** Strictly after the last response: the app's onClose hooks, then the closers, each bounded. */
  async #closeResources (): Promise<void> {
    const deadline = this.#deadline as Deadline
    this.#phases.resourcesClosing = round(deadline.elapsed())
    this.events.emit('resourcesClosing')
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
   * signal (which bring their own exit code). On a normal end the exit code is
   * derived here, from the same facts as the report's `forced`, so the two cannot disagree.
   */
  async #finish (forcedEnd?: { by: string, exitCode: number }): Promise<void> {
    if (this.#report !== undefined) return
    const deadline = this.#deadline as Deadline
    const forcedBy = forcedEnd?.by
    if (forcedBy !== undefined) {
      this.#forced.abort()
      this.#outcomes = this.#closers.abandon(forcedBy)
      this.events.emit('budgetSpent')
      const cut = this.#tracker.destroyAll()
      this.#cut.push(...cut)
      this.#log.warn({ forcedBy, cut }, `drain forced to end by the ${forcedBy}`)
    }
    deadline.disarm()
    this.#state.moveTo('closed')
    this.#phases.closed = round(deadline.elapsed())
    const counts = this.#tracker.counts()
    // Any socket destroyed at the budget was forced, named in `cut` or not (one that never sent a request).
    const forced = forcedBy !== undefined || counts.destroyed > 0 || this.#cut.length > 0
    const failed = this.#outcomes.some(outcome => outcome.outcome !== 'ok')
    const exitCode = forcedEnd?.exitCode ?? (forced || failed ? 1 : 0)
    const report: DrainReport = {
      reason: this.#reason,
      signal: this.#signal,
      startedAt: new Date(deadline.startedAtWall).toISOString(),
      deadlineMs: round(deadline.end - deadline.startedAt),
      phases: this.#phases,
      delay: this.#delay,
      requests: { inFlightAtStart: this.#inFlightAtStart, servedDuringDrain: counts.servedDuringDrain, cut: this.#cut },
      connections: { openAtStart: this.#openAtStart, closedGracefully: counts.closedGracefully, destroyed: counts.destroyed },
      closers: [...this.#outcomes],
      forced,
      exitCode,
      durationMs: round(deadline.elapsed()),
      remainingMs: round(deadline.remaining())
    }
    for (const [key, compute] of this.#sections) (report as unknown as Record<string, unknown>)[key] = compute()
    this.#report = report
    this.#onFinished()
    logReport(this.#log, report)
    this.events.emit('closed', report)
    this.#resolve?.(report)
    await exitProcess(this.#options.exit, exitCode, report, this.#log)
  }
}
