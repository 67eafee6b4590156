// Longer than 150 lines: the group is one object with three jobs that share its state (who the
// members are, when the drain started, which reports are in): joining with its checks, starting and
// forcing every member, and the one report and exit. Split, each part would need the whole state.
import type { FastifyBaseLogger } from 'fastify'
import type { Drain, GroupLink, StartOptions } from './drain.js'
import type { ExitFunction, GracefulDrainOptions, ResolvedOptions } from './options.js'
import type { BudgetOption } from './budget.js'
import { assertSignalsFree, drainOnSignal, installSignals, signalExitCode, type InstalledSignals } from './signals.js'
import { groupExitCode, logGroupReport, round, type DrainGroupReport, type DrainGroupSection, type DrainReport } from './report.js'
import { GroupDrainingError, GroupMemberExistsError, GroupMismatchError, type GracefulDrainError } from './errors.js'
import { now } from './deadline.js'
import { armExitWatchdog, watchdogAt, type Watchdog } from './watchdog.js'
import { exitFlushTimeout, exitProcess, flushLogger } from './exit.js'

/**
 * Several Fastify apps in one process drained as one (docs/design.md,
 * "Participants"): one owner of the signals, one start time and so one
 * deadline, the delay once (every listener closes when the last member's delay
 * ends), each app's own sequence after that (its sockets, its onClose hooks
 * after its own last response), then one combined report and one exit with
 * the worst code. Groups live in a process-wide registry under Symbol.for(),
 * like the signal owner, so two copies of the package find the same group.
 */
const GROUPS = Symbol.for('fastify-graceful-drain.groups')
type ProcessWithGroups = NodeJS.Process & { [GROUPS]?: Map<string, DrainGroup> }
const registry = (): Map<string, DrainGroup> => ((process as ProcessWithGroups)[GROUPS] ??= new Map())

const BUDGET: readonly BudgetOption[] = ['gracePeriod', 'drainDelay', 'quietPeriod', 'maxDrainDelay', 'exitMargin', 'closeTimeout']

/** What the group needs of one app. */
export interface GroupMember {
  readonly name: string
  readonly drain: Drain
  readonly log: FastifyBaseLogger
  /** Where the app listens, read at the report (captured at listen: a closed server has no address). */
  addresses (): string[]
}

/** A checked place in a group: the member's name and the options it drains with (the group's budget, signals and exit). */
export interface Membership {
  readonly group: DrainGroup
  readonly member: string
  readonly options: ResolvedOptions
}

/**
 * Checks that an app may join the group `options.group` names, and returns
 * its place: nothing is registered or installed yet, so a refused app leaves
 * nothing behind. `input` tells which options the app set explicitly.
 */
export function groupMembership (options: ResolvedOptions, input: GracefulDrainOptions): Membership | undefined {
  if (options.group === undefined) return undefined
  const existing = registry().get(options.group.name)
  if (existing !== undefined) return existing.check(options, input)
  assertSignalsFree(options.signals)
  const group = new DrainGroup(options.group.name, options)
  // No member exits by itself: the group does, once (exit.ts is called from finish() below).
  return { group, member: options.group.member ?? 'app-1', options: Object.freeze({ ...options, exit: false }) }
}

export class DrainGroup implements GroupLink {
  readonly name: string
  /** The first member's options: their budget, `signals` and `exit` are the group's. */
  readonly #options: ResolvedOptions
  readonly #members = new Map<string, GroupMember>()
  readonly #reports = new Map<string, DrainReport>()
  #joined = 0
  #first = ''
  #log: FastifyBaseLogger | undefined
  #signals: InstalledSignals | undefined
  #started: { reason: string, signal: NodeJS.Signals | undefined, at: number } | undefined
  #forcedCode: number | undefined
  #arrived = 0
  #delayWaiters: Array<() => void> = []
  #fallback: NodeJS.Timeout | undefined
  #watchdog: Watchdog | undefined
  #report: DrainGroupReport | undefined
  #crashInstalled = false

  constructor (name: string, options: ResolvedOptions) {
    this.name = name
    this.#options = options
  }

  get running (): boolean { return this.#started !== undefined }
  get report (): DrainGroupReport | undefined { return this.#report }
  get members (): string[] { return [...this.#members.keys()] }

  /** The rules of joining (README, "Several apps in one process"); see groupMembership(). */
  check (options: ResolvedOptions, input: GracefulDrainOptions): Membership {
    const member = options.group?.member ?? `app-${this.#joined + 1}`
    if (this.#started !== undefined) throw new GroupDrainingError(this.name, member)
    if (this.#members.has(member)) throw new GroupMemberExistsError(this.name, member)
    const mismatch = (option: string, value: unknown, groupValue: unknown): GracefulDrainError =>
      new GroupMismatchError(this.name, member, option, value, groupValue, this.#first)
    for (const option of BUDGET) {
      if (input[option] !== undefined && input[option] !== this.#options[option]) throw mismatch(option, input[option], this.#options[option])
    }
    // `signals: []` is what the old way passed to the apps that own none: still allowed.
    const signals = this.#options.signals
    if (input.signals !== undefined && options.signals.length > 0 &&
      (options.signals.length !== signals.length || options.signals.some(signal => !signals.includes(signal)))) {
      throw mismatch('signals', options.signals, signals)
    }
    if (input.exit !== undefined && input.exit !== this.#options.exit) throw mismatch('exit', input.exit, this.#options.exit)
    const budget = Object.fromEntries([...BUDGET, 'given'].map(key => [key, this.#options[key as keyof ResolvedOptions]]))
    return { group: this, member, options: Object.freeze({ ...options, ...budget, signals, exit: false }) }
  }

  /**
   * Adds a checked member. The first one registers the group and installs its
   * signals; returns the listeners found already installed for the warnings.
   */
  add (member: GroupMember): InstalledSignals['foreign'] {
    this.#members.set(member.name, member)
    this.#joined++
    member.drain.joinGroup(this)
    if (this.#log !== undefined) return []
    this.#first = member.name
    this.#log = member.log
    registry().set(this.name, this)
    const running = (): boolean => this.running
    this.#signals = installSignals(this.#options.signals, drainOnSignal({
      get running () { return running() },
      start: signal => this.start(signal, { signal, skipDelay: signal === 'SIGINT' }),
      force: signal => {
        this.#log?.warn({ signal, group: this.name }, 'second signal during the drain: exiting now')
        this.force('second signal', signalExitCode(signal))
      }
    }, member.log))
    return this.#signals.foreign
  }

  /** `drainOnCrash` is installed once per group, by the first member that asks for it. */
  claimCrashHandler (): boolean {
    if (this.#crashInstalled) return false
    this.#crashInstalled = true
    return true
  }

  /** An app closed without a drain (app.close() before any signal): it leaves; the last one to leave dissolves the group. */
  leave (name: string): void {
    if (this.#started !== undefined || !this.#members.delete(name)) return
    if (this.#members.size === 0) this.#dissolve()
  }

  start (reason: string, options: StartOptions): void {
    if (this.#started !== undefined) return
    const at = options.startedAt ?? now()
    this.#started = { reason, signal: options.signal, at }
    const shared: StartOptions = { ...options, startedAt: at, startedAtWall: Date.now() - (now() - at) }
    const { gracePeriod, exitMargin } = this.#options
    const budget = Math.min(options.budgetMs ?? Infinity, gracePeriod - exitMargin)
    // Every member's own deadline fires at the same instant and forces it; this catches a member that never reports.
    this.#fallback = setTimeout(() => this.#finish(), Math.max(0, at + budget + exitMargin / 10 - now()))
    if (this.#options.exit === true) this.#watchdog = armExitWatchdog(watchdogAt(at, this.#options), { group: this.name })
    for (const member of this.#members.values()) member.drain.startOwn(reason, shared).catch(() => {})
  }

  /** Ends every member's drain at once (a second signal, a crash during the drain) with `exitCode`. */
  force (by: string, exitCode: number): void {
    this.#forcedCode ??= exitCode
    for (const member of this.#members.values()) member.drain.forceEnd(by, exitCode)
  }

  delayEnded (forced: AbortSignal): Promise<void> {
    this.#arrived++
    if (this.#arrived >= this.#members.size) {
      for (const resolve of this.#delayWaiters.splice(0)) resolve()
      return Promise.resolve()
    }
    return new Promise(resolve => {
      this.#delayWaiters.push(resolve)
      forced.addEventListener('abort', () => resolve(), { once: true })
    })
  }

  finished (report: DrainReport): void {
    for (const [name, member] of this.#members) if (member.drain.report === report) this.#reports.set(name, report)
    if (this.#reports.size === this.#members.size) this.#finish()
  }

  #finish (): void {
    if (this.#report !== undefined || this.#started === undefined) return
    clearTimeout(this.#fallback)
    const started = this.#started
    const apps: Record<string, DrainGroupSection> = {}
    const missing: string[] = []
    for (const [name, member] of this.#members) {
      const report = this.#reports.get(name)
      if (report === undefined) missing.push(name)
      else apps[name] = { ...report, addresses: member.addresses() }
    }
    const sections = Object.values(apps)
    const { code, decidedBy } = groupExitCode(sections, this.#forcedCode, missing.length > 0)
    const report: DrainGroupReport = {
      group: this.name,
      reason: started.reason,
      signal: started.signal,
      startedAt: sections[0]?.startedAt ?? new Date().toISOString(),
      deadlineMs: sections[0]?.deadlineMs ?? 0,
      forced: missing.length > 0 || sections.some(section => section.forced),
      exitCode: code,
      durationMs: round(now() - started.at),
      apps,
      ...(missing.length > 0 ? { missing } : {})
    }
    this.#report = report
    const log = this.#log as FastifyBaseLogger
    logGroupReport(log, report)
    this.#dissolve()
    this.#exit(code, decidedBy as DrainReport, report, log).catch(error => log.error({ err: error }, 'drain group exit failed'))
  }

  async #exit (code: number, decidedBy: DrainReport, report: DrainGroupReport, log: FastifyBaseLogger): Promise<void> {
    const exit = this.#options.exit
    const flushTimeout = exitFlushTimeout(this.#options.exitMargin)
    // Each app has its own logger: flush the others', the first member's is flushed by exitProcess().
    await Promise.all([...this.#members.values()].filter(m => m.log !== log).map(m => flushLogger(m.log, flushTimeout)))
    const once: boolean | ExitFunction = typeof exit === 'function' ? (c, r) => exit(c, r, report) : exit
    await exitProcess(once, code, decidedBy, log, flushTimeout)
    this.#watchdog?.disarm()
  }

  /** The group's process-wide traces go: its name in the registry and its signal listeners. */
  #dissolve (): void {
    if (registry().get(this.name) === this) registry().delete(this.name)
    this.#signals?.uninstall()
  }
}
