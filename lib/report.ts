// Longer than 150 lines: the one exit-code rule has to see both the report of one app and the
// combined report of a drain group (group.ts), so both types, builders and log lines live here.
import type { FastifyBaseLogger } from 'fastify'
import type { BackgroundWorkCounts } from './background-work.js'
import type { CloserOutcome } from './closers.js'
import type { Deadline } from './deadline.js'
import type { ReportSections } from './participants.js'

/** Milliseconds after the drain started at which each phase began (absent: never reached). */
export interface DrainPhases {
  draining: number
  closing?: number
  resourcesClosing?: number
  closed?: number
}

/** What happened during one drain; logged once, at `info` (or `warn` when anything was forced or failed). */
export interface DrainReport {
  /** What started the drain: a signal name, 'prestop', 'api' or the reason given to `start()`. */
  reason: string
  signal: NodeJS.Signals | undefined
  /** Wall-clock time the drain started (ISO 8601). */
  startedAt: string
  /** Milliseconds after the start by which everything had to be done (gracePeriod − exitMargin). */
  deadlineMs: number
  phases: DrainPhases
  delay: DrainDelay
  requests: {
    inFlightAtStart: number
    servedDuringDrain: number
    /** Requests whose sockets were destroyed at the budget: method and path. */
    cut: string[]
  }
  connections: {
    openAtStart: number
    closedGracefully: number
    destroyed: number
  }
  /** The app's `fastify.close()` (its onClose hooks) first, then each closer, in the order they ran. */
  closers: CloserOutcome[]
  /** True when the budget ran out and something was destroyed or abandoned. */
  forced: boolean
  exitCode: number
  durationMs: number
  /** Milliseconds that were left before the deadline when the drain ended. */
  remainingMs: number
  /** Work tracked with `fastify.drain.track()` (present when there was any). */
  background?: BackgroundWorkCounts
  /** The crash that started the drain (`drainOnCrash`). */
  crash?: { error: string, origin: string }
  /** Present when the drain could not keep serving: the app closed the listener itself during the delay. */
  interrupted?: string
  /** HTTP/2 sessions open at the drain start or opened during it (present on an `http2: true` server). */
  http2Sessions?: LongLivedCounts
  /** WebSockets (@fastify/websocket) told to go away with close code 1001 (present when there were any). */
  webSockets?: LongLivedCounts
  /** `text/event-stream` responses open during the drain (present when there were any). */
  eventStreams?: LongLivedCounts
}

/** How long the server kept serving after the signal, and why it stopped when it did. */
export interface DrainDelay {
  /** The configured minimum (0 when skipped: SIGINT, or a preStop call already waited). */
  plannedMs: number
  /** How long the server really kept accepting after the signal. */
  actualMs: number
  /** How much the quiet period added to the planned delay. */
  extendedMs: number
  /**
   * 'delay': traffic was already quiet when drainDelay ended; 'quiet period': extended until it was;
   * 'cap': extended to maxDrainDelay without quiet; 'skipped': no delay (SIGINT, preStop); 'forced': cut short.
   */
  endedBy: 'delay' | 'quiet period' | 'cap' | 'skipped' | 'forced'
  /** When the last traffic request arrived, in ms after the signal (absent: none arrived during the drain). */
  lastArrivalMs?: number
}

/** Long-lived connections of one kind: how many the drain had to end, and how they ended. */
export interface LongLivedCounts {
  total: number
  /** Ended before the budget ran out: by the handler, the peer, or a completed close handshake. */
  closedGracefully: number
  /** Still open when the budget was spent, and destroyed. */
  destroyed: number
}

export const round = (ms: number): number => Math.round(ms)

const plural = (count: number, noun: string): string => `${count} ${noun}${count === 1 ? '' : 's'}`

/** `total` seen, of which `destroyed` were cut at the budget: the rest ended gracefully. */
export function longLivedCounts (total: number, destroyed: number): LongLivedCounts {
  return { total, closedGracefully: total - destroyed, destroyed }
}

/** What the drain saw, gathered by drain.ts; the report and the exit code are derived from it here. */
export interface DrainFacts {
  reason: string
  signal: NodeJS.Signals | undefined
  deadline: Deadline
  phases: DrainPhases
  delay: DrainDelay
  inFlightAtStart: number
  openAtStart: number
  /** Requests cut at the budget or by a forced end. */
  cut: string[]
  closers: CloserOutcome[]
  connections: { servedDuringDrain: number, closedGracefully: number, destroyed: number }
  sections: ReportSections
  /** A forced end (deadline, second signal) brings its own exit code. */
  forcedEnd: { by: string, exitCode: number } | undefined
  background: BackgroundWorkCounts
  crash: { error: string, origin: string } | undefined
  listenerClosedEarly: boolean
  /** `process.exitCode` as the app left it (0 when unset). */
  appExitCode: number
  /** Wall-clock start shared by a drain group's members, so their `startedAt` agree to the millisecond. */
  startedAtWall?: number | undefined
}

/**
 * The report, and the exit-code rule: on a normal end the code is derived from
 * the same facts as `forced`, so the two cannot disagree (they once did: exit 0
 * with forced: true). Any socket destroyed at the budget was forced, named in
 * `cut` or not (one that never sent a request); a failed closer exits 1 too.
 */
export function buildReport (facts: DrainFacts): DrainReport {
  const { deadline, connections, background } = facts
  const forced = facts.forcedEnd !== undefined || connections.destroyed > 0 || facts.cut.length > 0 ||
    background.abandoned.length > 0 || facts.listenerClosedEarly
  const failed = facts.closers.some(outcome => outcome.outcome !== 'ok') || facts.crash !== undefined
  return {
    reason: facts.reason,
    signal: facts.signal,
    startedAt: new Date(facts.startedAtWall ?? deadline.startedAtWall).toISOString(),
    deadlineMs: round(deadline.end - deadline.startedAt),
    phases: facts.phases,
    delay: facts.delay,
    requests: { inFlightAtStart: facts.inFlightAtStart, servedDuringDrain: connections.servedDuringDrain, cut: facts.cut },
    connections: { openAtStart: facts.openAtStart, closedGracefully: connections.closedGracefully, destroyed: connections.destroyed },
    closers: [...facts.closers],
    forced,
    exitCode: exitCode(facts, forced || failed),
    durationMs: round(deadline.elapsed()),
    remainingMs: round(deadline.remaining()),
    ...(background.total > 0 || background.abandoned.length > 0 ? { background } : {}),
    ...(facts.crash === undefined ? {} : { crash: facts.crash }),
    ...(facts.listenerClosedEarly ? { interrupted: 'the app closed the listener during the delay: new connections were refused early' } : {}),
    ...facts.sections
  }
}

/**
 * The exit code, by precedence (README, "Exit codes"): a second signal's
 * 128 + n; 1 when anything was forced, cut, abandoned or failed (a crash
 * included); else the app's own non-zero `process.exitCode`; else 0.
 */
function exitCode (facts: DrainFacts, problems: boolean): number {
  return byPrecedence(facts.forcedEnd?.exitCode, problems, facts.appExitCode)
}

function byPrecedence (forcedCode: number | undefined, problems: boolean, appExitCode: number): number {
  if (forcedCode !== undefined) return forcedCode
  if (problems) return 1
  return Number.isInteger(appExitCode) && appExitCode !== 0 ? appExitCode : 0
}

/** The same facts as `forced || failed` in buildReport(), read back from a finished report. */
function hasProblems (report: DrainReport): boolean {
  return report.forced || report.crash !== undefined || report.closers.some(outcome => outcome.outcome !== 'ok')
}

/** One app's section of a drain group's report: its own report, with the addresses it listened on. */
export type DrainGroupSection = DrainReport & { addresses: string[] }

/** The one report of a drain group (README, "Several apps in one process"): a section per app, one exit code. */
export interface DrainGroupReport {
  group: string
  reason: string
  signal: NodeJS.Signals | undefined
  /** Shared by every section: one start, one deadline. */
  startedAt: string
  deadlineMs: number
  /** True when any section was forced, or a member never reported by the deadline. */
  forced: boolean
  /** The worst of the sections' codes, by the precedence of `exitCode` above. */
  exitCode: number
  durationMs: number
  /** Keyed by member name, in registration order. */
  apps: Record<string, DrainGroupSection>
  /** Members that had not reported when the group's deadline passed (present only then). */
  missing?: string[]
}

/** The section whose code decided the group's, and the group's code: a forced end's code (a second signal), else 1 for any problem, else the app's own. */
export function groupExitCode (sections: DrainReport[], forcedCode: number | undefined, missing: boolean): { code: number, decidedBy: DrainReport | undefined } {
  const problems = missing || sections.some(hasProblems)
  const own = sections.find(report => report.exitCode !== 0)?.exitCode ?? 0
  const code = byPrecedence(forcedCode, problems, own)
  return { code, decidedBy: sections.find(report => report.exitCode === code) ?? sections[0] }
}

/** One line for the whole group: each app's outcome in words, every figure in `drainGroupReport`. */
export function logGroupReport (log: FastifyBaseLogger, report: DrainGroupReport): void {
  const apps = Object.entries(report.apps).map(([name, app]) => {
    const failed = app.closers.filter(c => c.outcome !== 'ok').map(c => `${c.name} (${c.outcome})`)
    return `${name}: ${plural(app.requests.servedDuringDrain, 'request')} served, ${app.requests.cut.length} cut, ` +
      `${plural(app.connections.destroyed, 'connection')} destroyed` +
      (failed.length > 0 ? `, closers failed: ${failed.join(', ')}` : '') + `, exit code ${app.exitCode}`
  })
  const summary = `drain group "${report.group}" ${report.exitCode === 0 ? 'complete' : 'finished with problems'} in ${report.durationMs} ms: ` +
    apps.join('; ') + (report.missing === undefined ? '' : `; never reported: ${report.missing.join(', ')}`) +
    `; exit code ${report.exitCode}`
  if (report.exitCode === 0) log.info({ drainGroupReport: report }, summary)
  else log.warn({ drainGroupReport: report }, summary)
}

/** One structured line with all the figures; the message says the outcome in words. */
export function logReport (log: FastifyBaseLogger, report: DrainReport): void {
  const failed = report.closers.filter(c => c.outcome !== 'ok').map(c => `${c.name} (${c.outcome})`)
  const summary = `drain ${report.forced || failed.length > 0 ? 'finished with problems' : 'complete'} in ${report.durationMs} ms: ` +
    `${plural(report.requests.servedDuringDrain, 'request')} served during the drain, ` +
    `${report.requests.cut.length} cut, ${plural(report.connections.destroyed, 'connection')} destroyed` +
    (report.background?.abandoned.length ? `, background work abandoned: ${report.background.abandoned.join(', ')}` : '') +
    (failed.length > 0 ? `, closers failed: ${failed.join(', ')}` : '') +
    `; exit code ${report.exitCode}`
  if (report.exitCode === 0) log.info({ drainReport: report }, summary)
  else log.warn({ drainReport: report }, summary)
}
