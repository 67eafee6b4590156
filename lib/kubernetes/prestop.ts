import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import type { Drain } from '../drain.js'
import type { DrainParticipant } from '../participants.js'
import { sleep, type Deadline } from '../deadline.js'
import type { Endpoint, ProbeRequest } from './probe-first.js'

export interface PreStopOptions {
  readonly path: string
  readonly token: string | undefined
  readonly drainDelay: number
}

/**
 * The preStop endpoint (docs/design.md, "Probes and Kubernetes") for `lifecycle.preStop.httpGet`: starts the
 * drain at once, so readiness fails from the first instant, and answers only
 * after `drainDelay`, because the kubelet sends SIGTERM when the hook returns;
 * that SIGTERM then finds the drain running and the delay already spent. The
 * drain's deadline starts here, as Kubernetes counts preStop time against
 * terminationGracePeriodSeconds.
 *
 * Anyone who reaches it can take the pod out of service, so it is served
 * only on the health port or with a token; without the right token it answers
 * 403 and starts nothing. Like the probes, it is answered before the app's
 * hooks (probe-first.ts): an app-wide auth hook cannot turn the kubelet's call into a 401.
 */
export function preStopEndpoint (options: PreStopOptions, drain: Drain, log: FastifyBaseLogger): { endpoint: Endpoint, participant: DrainParticipant } {
  const expected = options.token === undefined ? undefined : digest(options.token)
  // A drain forced to end early (deadline, second signal) must not leave the hook waiting.
  const ended = new AbortController()
  const end = (): void => ended.abort()
  const answer = async (request: ProbeRequest) => {
    if (expected !== undefined && !timingSafeEqual(digest(presentedToken(request)), expected)) {
      // The plugin's logger, not the request's: that one logs at the (silent) probe level.
      log.warn({ ip: request.ip }, 'preStop endpoint called without the right token: nothing started')
      return { statusCode: 403, body: { error: 'Forbidden' } }
    }
    // Idempotent: a repeated call joins the drain already running and waits out the same delay.
    drain.start('prestop').catch(() => {})
    const deadline = drain.deadline as Deadline
    await sleep(deadline.until(options.drainDelay), ended.signal)
    return { statusCode: 200, body: { status: 'draining', waitedMs: Math.round(deadline.elapsed()) } }
  }
  return {
    // GET is what `httpGet` sends; POST for people who call it by hand (curl -X POST), as it changes state.
    // No HEAD: a monitoring HEAD request must not take the pod out of service.
    endpoint: { path: options.path, methods: ['GET', 'POST'], answer },
    participant: { name: 'prestop', budgetSpent: end, closed: end }
  }
}

/** `Authorization: Bearer <token>` or a single `?token=<token>`; '' when neither. */
function presentedToken (request: ProbeRequest): string {
  const auth = request.headers.authorization
  if (typeof auth === 'string' && auth.startsWith('Bearer ')) return auth.slice(7).trim()
  const query = request.url.indexOf('?')
  if (query === -1) return ''
  const tokens = new URLSearchParams(request.url.slice(query + 1)).getAll('token')
  // Two tokens are no token, as with Fastify's query parser (an array, not a string).
  return tokens.length === 1 ? tokens[0] as string : ''
}

/**
 * Compared as SHA-256 digests: timingSafeEqual needs equal lengths, and
 * comparing lengths first would leak the token's length through timing.
 */
function digest (value: string): Buffer {
  return createHash('sha256').update(value).digest()
}
