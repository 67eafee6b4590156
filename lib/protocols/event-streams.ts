import type { ServerResponse } from 'node:http'
import type { ConnectionTracker } from '../connections/tracker.js'
import type { DrainParticipant } from '../participants.js'
import { longLivedCounts, type LongLivedCounts } from '../report.js'
import { headerBlock } from '../connections/socket-internals.js'

/**
 * Server-sent event streams (`Content-Type: text/event-stream`), counted for the
 * report. Ending them is the handler's job, on `fastify.drain.signal` (with a
 * `retry:` hint so the client reconnects elsewhere); the tracker destroys what is
 * left at the budget with every other in-flight response. Nothing here runs per
 * request: the open responses are looked at only at drain start, when the
 * listener closes and at the budget.
 */
export class EventStreams {
  readonly #tracker: ConnectionTracker
  readonly #open = new Set<ServerResponse>()
  /** Every stream counted once, though it is looked for at drain start, at the listener's close and at the budget. */
  readonly #counted = new WeakSet<ServerResponse>()
  #seen = 0
  #destroyed = 0

  constructor (tracker: ConnectionTracker) {
    this.#tracker = tracker
  }

  /** Notes the event streams open now; each counts as closed gracefully if it ends before the budget. */
  collect (): void {
    for (const res of this.#tracker.responses()) {
      // writableFinished, not writableEnded: a stream ended into full buffers (a client that never reads) is still open.
      if (this.#counted.has(res) || res.writableFinished || !isEventStream(res)) continue
      this.#counted.add(res)
      this.#open.add(res)
      this.#seen++
      res.once('close', () => this.#open.delete(res))
    }
  }

  /** The budget is spent: the streams still open are about to be destroyed with their sockets. */
  budgetSpent (): void {
    this.collect()
    this.#destroyed += this.#open.size
    this.#open.clear()
  }

  counts (): LongLivedCounts | undefined {
    if (this.#seen === 0) return undefined
    return longLivedCounts(this.#seen, this.#destroyed)
  }
}

/** Fastify's `reply.header()` is readable with getHeader; `reply.raw.writeHead(200, { … })` only in the header block. */
export function isEventStream (res: ServerResponse): boolean {
  const type = res.getHeader('content-type')
  if (typeof type === 'string') return type.toLowerCase().startsWith('text/event-stream')
  return /^content-type:\s*text\/event-stream/im.test(headerBlock(res) ?? '')
}

/** The event-stream counts' part in the drain. */
export function eventStreamParticipant (tracker: ConnectionTracker): DrainParticipant {
  const streams = new EventStreams(tracker)
  return {
    name: 'event-streams',
    // Delivered before fastify.drain.signal aborts, so before handlers end their streams on it.
    draining: () => streams.collect(),
    closing: () => streams.collect(),
    budgetSpent: () => streams.budgetSpent(),
    report: () => ({ eventStreams: streams.counts() })
  }
}
