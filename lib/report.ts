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
    startedAt: new Date(deadline.startedAtWall).toISOString(),
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
  if (facts.forcedEnd !== undefined) return facts.forcedEnd.exitCode
  if (problems) return 1
  return Number.isInteger(facts.appExitCode) && facts.appExitCode !== 0 ? facts.appExitCode : 0
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
