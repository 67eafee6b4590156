import type { FastifyBaseLogger } from 'fastify'
import { now } from '../deadline.js'
import { bounded } from '../bounded.js'
import { errorMessage } from '../errors.js'

/** Which probe the checks answer for; it names them in the log ('readiness check "db" failing: …'). */
export type CheckKind = 'readiness' | 'liveness'

/** One named check: the user's, or a built-in such as the event-loop check (event-loop.ts). */
export interface Check {
  readonly name: string
  /** Passes only by returning (or resolving) `true`. */
  readonly fn: () => unknown
  /** Why it returned false, for the log, when a built-in can say more than 'returned false'. */
  readonly whyFalse?: () => string
}

interface CheckResult {
  readonly ok: boolean
  /** Why it failed, for the log: 'returned false', 'returned a string …', 'timed out after 1000 ms', the error message. */
  readonly why: string
  readonly at: number
}

interface CheckEntry {
  readonly check: Check
  cached: CheckResult | undefined
  /** The call still running, so a hung check is never called again until it settles (no pile-up of calls). */
  running: Promise<CheckResult> | undefined
  /** What was last logged: we log state changes, not every probe. */
  logged: boolean | undefined
}

export interface ChecksOptions {
  readonly checkTimeout: number
  readonly checkCacheTtl: number
}

/** The user's `checks: { name: fn }` as named checks, in declaration order. */
export function namedChecks (checks: Readonly<Record<string, () => unknown>>): Check[] {
  return Object.entries(checks).map(([name, fn]) => ({ name, fn }))
}

/**
 * Named checks behind a timeout and a short cache, one instance for the
 * readiness checks and one for the liveness checks. A probe waits at most
 * `checkTimeout` whatever a check does (throws, hangs, returns a non-boolean),
 * and a check runs at most once per `checkCacheTtl` however many probes
 * (kubelet, load balancers) ask, so probes cannot hammer a dependency that is
 * already struggling.
 */
export class Checks {
  readonly #kind: CheckKind
  readonly #entries: CheckEntry[]
  readonly #timeout: number
  readonly #ttl: number
  readonly #log: FastifyBaseLogger

  constructor (kind: CheckKind, checks: readonly Check[], options: ChecksOptions, log: FastifyBaseLogger) {
    this.#kind = kind
    this.#entries = checks.map(check => ({ check, cached: undefined, running: undefined, logged: undefined }))
    this.#timeout = options.checkTimeout
    this.#ttl = options.checkCacheTtl
    this.#log = log
  }

  get size (): number {
    return this.#entries.length
  }

  /** Runs the checks in parallel; resolves the name of the first failing one (in declaration order), or undefined. */
  async failingCheck (): Promise<string | undefined> {
    if (this.#entries.length === 0) return undefined
    const results = await Promise.all(this.#entries.map(entry => this.#evaluate(entry)))
    return this.#entries.find((_entry, i) => results[i]?.ok !== true)?.check.name
  }

  async #evaluate (entry: CheckEntry): Promise<CheckResult> {
    if (entry.cached !== undefined && now() - entry.cached.at < this.#ttl) return entry.cached
    entry.running ??= this.#call(entry)
    const timeout = this.#timeout
    const running = entry.running
    const result = await bounded(() => running, timeout, (): CheckResult => ({ ok: false, why: `timed out after ${timeout} ms`, at: now() }))
    entry.cached = result
    if (entry.logged !== result.ok) {
      const name = entry.check.name
      const kind = this.#kind
      // The first result is only worth a line when it is a failure.
      if (!result.ok) this.#log.warn({ check: name, why: result.why }, `${kind} check "${name}" failing: ${result.why}`)
      else if (entry.logged === false) this.#log.info({ check: name }, `${kind} check "${name}" passing again`)
      entry.logged = result.ok
    }
    return result
  }

  #call (entry: CheckEntry): Promise<CheckResult> {
    const { fn, whyFalse } = entry.check
    // Wrapped so a check that throws synchronously is a failure like any other.
    const running = (async () => await fn())()
      .then(
        (value: unknown): CheckResult => typeof value === 'boolean'
          ? { ok: value, why: value ? 'passed' : whyFalse?.() ?? 'returned false', at: now() }
          : { ok: false, why: `returned ${describe(value)} instead of a boolean`, at: now() },
        (error: unknown): CheckResult => ({ ok: false, why: `threw: ${errorMessage(error)}`, at: now() })
      )
    running.finally(() => { if (entry.running === running) entry.running = undefined }).catch(() => {})
    return running
  }
}

function describe (value: unknown): string {
  if (value === null) return 'null'
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`
}
