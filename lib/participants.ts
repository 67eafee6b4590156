import type { Deadline } from './deadline.js'
import type { DrainReport } from './report.js'

/**
 * Every module that takes part in a drain, in the one order in which it hears
 * each phase (docs/design.md, "Participants"): those that observe or announce
 * before those that destroy. A participant's name must be in this list, so a
 * new one cannot be added without choosing its place.
 */
export const ORDER = [
  // budgetSpent: handlers learn why before anything they use is cut, so their abort listeners can still answer.
  'request-signal',
  // budgetSpent: tracked work is told to stop at the same moment as the requests.
  'background-work',
  // budgetSpent: `forced` is published while the counts still describe what is about to be cut.
  'diagnostics',
  // draining: sees the open streams before handlers end them on fastify.drain.signal (which aborts after
  // this phase); budgetSpent: counts the streams still open before HTTP/2 and the tracker destroy them.
  'event-streams',
  // budgetSpent: destroys its sessions; their sockets are destroyed by the tracker right after the last participant (drain.ts).
  'http2',
  // closing: close code 1001 once the listener is closed; budgetSpent: terminates whoever did not answer.
  'websocket',
  // budgetSpent, closed: a preStop call still waiting returns once the drain is forced or over.
  'prestop',
  // dispose only: the final figures stay readable after a drain; unregistered on a plain app.close().
  'metrics',
  // dispose only: the process's signal listeners (and the crash handlers) and the server's listeners go.
  'signals',
  'crash',
  // dispose only: close-with-grace's listener goes back if the app closes without a drain (coexistence/fastify-cli.ts).
  'close-with-grace',
  // dispose only: the standby watchdog thread ends if the app closes without a drain (watchdog.ts).
  'watchdog',
  'connections',
  // dispose, last: the health port outlives the rest of the teardown, so the kubelet gets an answer to the very end.
  'health-port'
] as const

export type ParticipantName = typeof ORDER[number]

/** The report sections a participant adds; typed, so a section is one `DrainReport` already declares. */
export type ReportSections = Partial<Pick<DrainReport, 'http2Sessions' | 'webSockets' | 'eventStreams'>>

/**
 * One module's part in the drain. Every hook is optional and synchronous: a
 * participant starts work, it never holds the drain (the drain's own waits, on
 * sockets and the budget, carry that work).
 */
export interface DrainParticipant {
  readonly name: ParticipantName
  /** The drain has started and the deadline is armed; `fastify.drain.signal` aborts right after. */
  draining? (deadline: Deadline): void
  /** The listener has just closed. */
  closing? (): void
  /** The in-flight budget is spent, or the drain is forced: the last call before the remaining sockets are destroyed. */
  budgetSpent? (): void
  /** No request is left: fastify.close() and the closers are about to run. */
  resourcesClosing? (): void
  /** The report is final, just before the exit. */
  closed? (report: DrainReport): void
  /** Sections of the report, read once, when it is built. */
  report? (): ReportSections
  /** The only teardown: after a drain, or when the app closes without one. */
  dispose? (): void | Promise<void>
}

type Phase = 'draining' | 'closing' | 'budgetSpent' | 'resourcesClosing' | 'closed'

/** The participants of one plugin instance, kept in ORDER; each phase is delivered once, dispose() runs once. */
export class Participants {
  readonly #list: DrainParticipant[] = []
  readonly #delivered = new Set<Phase>()
  #disposed: Promise<void> | undefined

  add (...participants: DrainParticipant[]): void {
    this.#list.push(...participants)
    this.#list.sort((a, b) => ORDER.indexOf(a.name) - ORDER.indexOf(b.name))
  }

  draining (deadline: Deadline): void {
    if (this.#first('draining')) for (const p of this.#list) p.draining?.(deadline)
  }

  closing (): void {
    if (this.#first('closing')) for (const p of this.#list) p.closing?.()
  }

  budgetSpent (): void {
    if (this.#first('budgetSpent')) for (const p of this.#list) p.budgetSpent?.()
  }

  resourcesClosing (): void {
    if (this.#first('resourcesClosing')) for (const p of this.#list) p.resourcesClosing?.()
  }

  closed (report: DrainReport): void {
    if (this.#first('closed')) for (const p of this.#list) p.closed?.(report)
  }

  report (): ReportSections {
    const sections: ReportSections = {}
    for (const p of this.#list) Object.assign(sections, p.report?.())
    return sections
  }

  /** Starts every participant's dispose() in ORDER (the synchronous ones are done when this returns), then awaits them all. */
  dispose (): Promise<void> {
    this.#disposed ??= Promise.all(this.#list.map(p => p.dispose?.())).then(() => {})
    return this.#disposed
  }

  #first (phase: Phase): boolean {
    if (this.#delivered.has(phase)) return false
    this.#delivered.add(phase)
    return true
  }
}
