import type { Server } from 'node:http'
import type { FastifyBaseLogger } from 'fastify'
import type { ResolvedOptions } from '../options.js'
import { inFlightEnd } from '../budget.js'

/** What the audit reads off the server: Node's own timeouts, as Fastify set them. */
type TimedServer = Pick<Server, 'keepAliveTimeout' | 'requestTimeout'>

export interface TimeoutFinding {
  readonly rule: 'keepAliveTimeout' | 'requestTimeout'
  readonly message: string
  readonly fields: Record<string, number>
}

/**
 * Checks, once at listen, that the server's timeouts and the drain agree
 * (README, "Timeouts that disagree"). Only rules that still hold on Node 20+:
 *
 * - keepAliveTimeout must exceed the load balancer's idle timeout. Otherwise
 *   the server closes an idle connection at the moment the balancer reuses it,
 *   and the balancer answers 502: the classic Node-behind-ALB failure. Only
 *   the user knows the balancer's timeout (`loadBalancerIdleTimeout`).
 * - requestTimeout longer than the in-flight budget: Fastify lets a request
 *   run that the drain will cut. 0 (Fastify's default: no limit) is not
 *   flagged, or every default app would warn.
 *
 * Not checked, because Node fixed it: "headersTimeout must exceed
 * keepAliveTimeout" (Node 10–12 applied headersTimeout across keep-alive
 * requests; since Node 18 it counts from a request's first byte), and
 * "headersTimeout ≤ requestTimeout", which Node itself enforces at listen.
 */
export function auditTimeouts (server: TimedServer, options: ResolvedOptions): TimeoutFinding[] {
  const findings: TimeoutFinding[] = []
  const idle = options.loadBalancerIdleTimeout
  const keepAlive = server.keepAliveTimeout
  if (idle !== undefined && keepAlive > 0 && keepAlive <= idle) {
    const suggested = idle + 5_000
    findings.push({
      rule: 'keepAliveTimeout',
      fields: { keepAliveTimeout: keepAlive, loadBalancerIdleTimeout: idle, suggested },
      message: `keepAliveTimeout (${keepAlive} ms) is not above the load balancer's idle timeout (${idle} ms): the server ` +
        'will close idle connections just as the balancer reuses them, and the balancer answers 502; ' +
        `set Fastify's keepAliveTimeout to ${suggested}`
    })
  }
  const budget = inFlightEnd(options)
  const requestTimeout = server.requestTimeout
  if (requestTimeout > budget) {
    findings.push({
      rule: 'requestTimeout',
      fields: { requestTimeout, inFlightCutAt: budget, gracePeriod: options.gracePeriod },
      message: `requestTimeout (${requestTimeout} ms) lets requests run longer than a drain allows (in-flight requests are cut ` +
        `${budget} ms after the signal): lower requestTimeout to ${budget} or less, or raise gracePeriod ` +
        '(and terminationGracePeriodSeconds with it)'
    })
  }
  return findings
}

/** Logs each finding once, at warn, with its numbers. */
export function warnAboutTimeouts (server: TimedServer, options: ResolvedOptions, log: FastifyBaseLogger): void {
  for (const finding of auditTimeouts(server, options)) log.warn({ timeout: finding.rule, ...finding.fields }, finding.message)
}
