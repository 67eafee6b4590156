import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest, LogLevel } from 'fastify'
import type { Drain } from '../drain.js'
import type { DrainParticipant } from '../participants.js'
import { sleep, type Deadline } from '../deadline.js'

export interface PreStopOptions {
  readonly path: string
  readonly token: string | undefined
  readonly drainDelay: number
  readonly logLevel: string
}

/**
 * The preStop endpoint (docs/design.md, "Probes and Kubernetes") for `lifecycle.preStop.httpGet`: starts the
 * drain at once, so readiness fails from the first instant, and answers only
 * after `drainDelay`, because the kubelet sends SIGTERM when the hook returns;
 * that SIGTERM then finds the drain running and the delay already spent. The
 * drain's deadline starts here, as Kubernetes counts preStop time against
 * terminationGracePeriodSeconds.
 *
 * Anyone who reaches it can take the pod out of service, so it is registered
 * only on the health port or with a token; without the right token it answers
 * 403 and starts nothing.
 */
export function registerPreStop (app: FastifyInstance, options: PreStopOptions, drain: Drain, log: FastifyBaseLogger): DrainParticipant {
  const expected = options.token === undefined ? undefined : digest(options.token)
  // A drain forced to end early (deadline, second signal) must not leave the hook waiting.
  const ended = new AbortController()
  const end = (): void => ended.abort()
  const handler = async (request: FastifyRequest, reply: FastifyReply) => {
    reply.header('cache-control', 'no-store')
    if (expected !== undefined && !timingSafeEqual(digest(presentedToken(request)), expected)) {
      // The plugin's logger, not the request's: that one logs at the (silent) probe level.
      log.warn({ ip: request.ip }, 'preStop endpoint called without the right token: nothing started')
      return reply.code(403).send({ error: 'Forbidden' })
    }
    // Idempotent: a repeated call joins the drain already running and waits out the same delay.
    drain.start('prestop').catch(() => {})
    const deadline = drain.deadline as Deadline
    await sleep(deadline.until(options.drainDelay), ended.signal)
    return { status: 'draining', waitedMs: Math.round(deadline.elapsed()) }
  }
  // GET is what `httpGet` sends; POST for people who call it by hand (curl -X POST), as it changes state.
  // No automatic HEAD route: a monitoring HEAD request must not take the pod out of service.
  app.route({ method: ['GET', 'POST'], url: options.path, logLevel: options.logLevel as LogLevel, exposeHeadRoute: false, handler })
  return { name: 'prestop', budgetSpent: end, closed: end }
}

/** `Authorization: Bearer <token>` or `?token=<token>`; '' when neither. */
function presentedToken (request: FastifyRequest): string {
  const auth = request.headers.authorization
  if (typeof auth === 'string' && auth.startsWith('Bearer ')) return auth.slice(7).trim()
  const query = request.query as Record<string, unknown> | undefined
  return typeof query?.token === 'string' ? query.token : ''
}

/**
 * Compared as SHA-256 digests: timingSafeEqual needs equal lengths, and
 * comparing lengths first would leak the token's length through timing.
 */
function digest (value: string): Buffer {
  return createHash('sha256').update(value).digest()
}
