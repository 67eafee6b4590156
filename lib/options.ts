// Longer than 150 lines: the public options type carries TSDoc and @default on every field.
import { constants } from 'node:os'
import type { DrainGroupReport, DrainReport } from './report.js'
import { InvalidOptionError } from './errors.js'
import { budgetDefaults, resolveBudget, type Budget } from './budget.js'

/** A readiness check: resolves `true` when the dependency it watches is usable. */
export type ReadinessCheck = () => boolean | Promise<boolean>

/** A liveness check: resolves `true` while the process is healthy; `false` asks the kubelet to restart it. */
export type LivenessCheck = () => boolean | Promise<boolean>

export interface ReadinessOptions {
  /** @default '/readyz' */
  path?: string | undefined
  /** Named checks; `/readyz` answers 503 naming the first that fails, throws, hangs or returns a non-boolean. */
  checks?: Record<string, ReadinessCheck> | undefined
  /** How long one check may take before it counts as failed, in ms. @default 1000 */
  checkTimeout?: number | undefined
  /** How long a check result is reused, so probes don't hammer a dependency, in ms. @default 1000 */
  checkCacheTtl?: number | undefined
}

export interface LivenessOptions {
  /** @default '/livez' */
  path?: string | undefined
  /** Named checks; `/livez` answers 503 naming the first that fails, throws or hangs. A drain never makes them fail. */
  checks?: Record<string, LivenessCheck> | undefined
  /** How long one check may take before it counts as failed, in ms. @default 1000 */
  checkTimeout?: number | undefined
  /** How long a check result is reused, in ms. @default 1000 */
  checkCacheTtl?: number | undefined
  /** The built-in event-loop check: `/livez` fails while the event loop's delay (p99 over the last interval) exceeds this, in ms. Off by default: a busy process is not a broken one, and a wedged loop already fails the probe by not answering. @default undefined (off) */
  maxEventLoopDelay?: number | undefined
}

export interface PreStopOptions {
  /** @default '/prestop' */
  path?: string | undefined
  /** Required unless `healthPort` is set: the endpoint then answers only `?token=` or `Authorization: Bearer` with it. At least 16 characters. */
  token?: string | undefined
}

export interface DrainOnCrashOptions {
  /** How long in-flight requests and tracked work may run after the crash, in ms (then the closers, the report, exit 1). @default 5000, or less when gracePeriod is short */
  timeout?: number | undefined
}

/** The part of a prom-client `Registry` the plugin uses; pass your own (prom-client's classes are structural). */
export interface MetricsRegistry {
  registerMetric (metric: any): void
  getSingleMetric (name: string): unknown
  removeSingleMetric (name: string): void
}

export interface MetricsOptions {
  /** Where to register the metrics. @default prom-client's global `register` */
  registry?: MetricsRegistry | undefined
  /** Prefix of every metric name. @default 'fastify_graceful_drain_' */
  prefix?: string | undefined
}

/**
 * Called instead of `process.exit` when the drain ends. In a drain group it is called once, for the
 * whole group: `code` is the group's, `report` the section of the app that decided it, `group` the combined report.
 */
export type ExitFunction = (code: number, report: DrainReport, group?: DrainGroupReport) => void | Promise<void>

/** Several apps in one process drain together (README, "Several apps in one process"). */
export interface GroupOptions {
  /** The group: instances registered with the same name in one process form one drain group. */
  name: string
  /** This app's name in the group and its section of the combined report. Unique in the group. @default 'app-<n>', n its registration order */
  member?: string | undefined
}

export interface GracefulDrainOptions {
  /** The pod's `terminationGracePeriodSeconds` × 1000: the drain is over, whatever hangs, `exitMargin` before it. Every time option you leave unset is derived from it. @default 30000 */
  gracePeriod?: number | undefined
  /** How long to keep serving normally after readiness flips, in ms (0 under SIGINT). @default 5000, or gracePeriod / 4 when less */
  drainDelay?: number | undefined
  /** After `drainDelay`, keep serving until no request has arrived or been in flight for this long (probes and `quietPeriodIgnore` excluded); 0 turns the extension off, and it does not run when the delay is 0 unless set. Two seconds because behind a per-connection balancer the old pod sees only the odd new connection once its clients have moved, and a 1 s gap between two of them still let 1 rollover in 34 lose a request (test/rolling.test.ts). @default 2000, or gracePeriod / 5 when less */
  quietPeriod?: number | undefined
  /** Requests to these paths (any method, with or without a query string) are served but never count as traffic for the quiet period: scrapes and pollers that no load balancer routes keep coming whatever it does. Replaces the default list. @default ['/metrics'] */
  quietPeriodIgnore?: readonly string[] | undefined
  /** The latest the quiet-period extension may run to, in ms after the signal. @default drainDelay + half of what is left for in-flight requests */
  maxDrainDelay?: number | undefined
  /** Headroom kept before `gracePeriod` for the report, the logger flush and the exit, in ms. @default 1000, or gracePeriod / 10 when less */
  exitMargin?: number | undefined
  /** The closers' share of the budget: in-flight requests are cut only when this and `exitMargin` are all that is left; also the default bound of `fastify.close()` and of each closer, in ms. @default 5000, or gracePeriod / 10 when less */
  closeTimeout?: number | undefined
  /** Signals that start the drain; a second one forces the exit with 128 + its number. @default ['SIGTERM', 'SIGINT'] */
  signals?: readonly NodeJS.Signals[] | undefined
  /** The readiness probe, or `false` for none. @default { path: '/readyz' } */
  readiness?: ReadinessOptions | false | undefined
  /** The liveness probe, or `false` for none. @default { path: '/livez' } */
  liveness?: LivenessOptions | false | undefined
  /** Serve the probes (and the preStop endpoint) on their own listener that stays open until exit. @default undefined */
  healthPort?: number | undefined
  /** Host for the health listener. @default '0.0.0.0' */
  healthHost?: string | undefined
  /** The preStop endpoint for `lifecycle.preStop.httpGet`, or `true` for the defaults. @default false */
  preStop?: PreStopOptions | boolean | undefined
  /** Log level of probe requests. @default 'silent' */
  probeLogLevel?: string | undefined
  /** `true` calls `process.exit`, `false` never exits (tests, embedding), a function is called instead. @default true */
  exit?: boolean | ExitFunction | undefined
  /** Prometheus metrics through the app's prom-client (loaded only when set): `true` for its global registry. @default false */
  metrics?: MetricsOptions | boolean | undefined
  /** Once the listener is closed, a socket holding part of a request that makes no progress for this long is destroyed and reported as stalled, so one packet cannot hold the drain to its budget; a slow upload that progresses is never cut before the budget. In ms. @default 2000 */
  stallTimeout?: number | undefined
  /** The idle timeout of the load balancer in front (60000 for an AWS ALB): warns at listen when Fastify's keepAliveTimeout is not above it, the cause of 502s behind a balancer. @default undefined (not checked) */
  loadBalancerIdleTimeout?: number | undefined
  /** `fastify start` (fastify-cli) installs close-with-grace, which closes the app at the first signal and exits 1 after 500 ms: remove its listener from `signals` once the app is ready, so the drain runs instead. @default false */
  takeOverCloseWithGrace?: boolean | undefined
  /** Opt-in: an uncaught exception or unhandled rejection fails readiness at once, skips the delay, lets in-flight requests and tracked work finish within `timeout`, runs the closers, logs the report with the error and exits 1. Off by default: installing these handlers changes how every crash of the process behaves. @default false */
  drainOnCrash?: DrainOnCrashOptions | boolean | undefined
  /** Drain with the other apps of this process registered with the same group name: one signal owner, one deadline, the delay once, one combined report, one exit. The first member's budget, `signals` and `exit` are the group's. A string is the group's name. @default undefined (drains alone) */
  group?: GroupOptions | string | undefined
}

export interface ResolvedOptions extends Budget {
  readonly quietPeriodIgnore: readonly string[]
  readonly signals: readonly NodeJS.Signals[]
  readonly readiness: Readonly<{ path: string, checks: Readonly<Record<string, ReadinessCheck>>, checkTimeout: number, checkCacheTtl: number }> | false
  readonly liveness: Readonly<{ path: string, checks: Readonly<Record<string, LivenessCheck>>, checkTimeout: number, checkCacheTtl: number, maxEventLoopDelay: number | undefined }> | false
  readonly healthPort: number | undefined
  readonly healthHost: string
  readonly preStop: Readonly<{ path: string, token: string | undefined }> | false
  readonly probeLogLevel: string
  readonly exit: boolean | ExitFunction
  readonly metrics: Readonly<{ registry: MetricsRegistry | undefined, prefix: string }> | false
  readonly stallTimeout: number
  readonly loadBalancerIdleTimeout: number | undefined
  readonly takeOverCloseWithGrace: boolean
  readonly drainOnCrash: Readonly<{ timeout: number }> | false
  readonly group: Readonly<{ name: string, member: string | undefined }> | undefined
}

/** The defaults; the time options are the caps of the values derived from `gracePeriod` (see budget.ts). */
export const defaults = Object.freeze({
  gracePeriod: budgetDefaults.gracePeriod,
  drainDelay: budgetDefaults.drainDelay.cap,
  quietPeriod: budgetDefaults.quietPeriod.cap,
  exitMargin: budgetDefaults.exitMargin.cap,
  closeTimeout: budgetDefaults.closeTimeout.cap,
  quietPeriodIgnore: Object.freeze(['/metrics']),
  signals: Object.freeze(['SIGTERM', 'SIGINT'] as NodeJS.Signals[]),
  readinessPath: '/readyz',
  livenessPath: '/livez',
  preStopPath: '/prestop',
  checkTimeout: 1_000,
  checkCacheTtl: 1_000,
  healthHost: '0.0.0.0',
  probeLogLevel: 'silent',
  stallTimeout: 2_000,
  drainOnCrashTimeout: 5_000,
  metricsPrefix: 'fastify_graceful_drain_'
})

const MIN_TOKEN_LENGTH = 16
const LOG_LEVELS = new Set(['silent', 'fatal', 'error', 'warn', 'info', 'debug', 'trace'])
const KNOWN_OPTIONS = new Set(['gracePeriod', 'drainDelay', 'quietPeriod', 'quietPeriodIgnore', 'maxDrainDelay', 'exitMargin', 'closeTimeout',
  'signals', 'readiness', 'liveness', 'healthPort', 'healthHost', 'preStop', 'probeLogLevel', 'exit', 'metrics',
  'stallTimeout', 'loadBalancerIdleTimeout', 'takeOverCloseWithGrace', 'drainOnCrash', 'group'])

function milliseconds (name: string, value: unknown, fallback: number, { positive = false } = {}): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || (positive && value === 0)) {
    throw new InvalidOptionError(name, `a finite number of milliseconds ${positive ? '> 0' : '≥ 0'}`, value,
      `e.g. ${name}: ${fallback}`)
  }
  return value
}

function isObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** A misspelled nested key (`readiness: { pathh }`) is an error, like a misspelled top-level one. */
function knownKeys (name: string, value: Record<string, unknown>, known: readonly string[]): void {
  for (const key of Object.keys(value)) {
    if (!known.includes(key)) {
      throw new InvalidOptionError(`${name}.${key}`, 'a known option', value[key], `${name} takes ${known.join(', ')}`)
    }
  }
}

/** A named-check map: every value a function. */
function resolveChecks<T> (name: string, value: unknown): Readonly<Record<string, T>> {
  const checks = value ?? {}
  if (!isObject(checks)) throw new InvalidOptionError(`${name}.checks`, 'an object of named async functions', checks)
  for (const [key, check] of Object.entries(checks)) {
    if (typeof check !== 'function') {
      throw new InvalidOptionError(`${name}.checks.${key}`, 'a function returning a boolean or a promise of one', check)
    }
  }
  return Object.freeze({ ...checks }) as Record<string, T>
}

function routePath (name: string, value: unknown, fallback: string): string {
  if (value === undefined) return fallback
  if (typeof value !== 'string' || !value.startsWith('/')) {
    throw new InvalidOptionError(name, 'a path starting with "/"', value, `e.g. ${name}: '${fallback}'`)
  }
  return value
}

function resolvePaths (name: string, value: unknown, fallback: readonly string[]): readonly string[] {
  if (value === undefined) return fallback
  if (!Array.isArray(value)) throw new InvalidOptionError(name, 'an array of paths starting with "/"', value, `e.g. ${name}: ['/metrics']`)
  return Object.freeze(value.map((path: unknown, i) => routePath(`${name}[${i}]`, path, fallback[0] ?? '/metrics')))
}

function resolveSignals (value: unknown): readonly NodeJS.Signals[] {
  if (value === undefined) return defaults.signals
  if (!Array.isArray(value)) {
    throw new InvalidOptionError('signals', 'an array of signal names', value, "e.g. signals: ['SIGTERM', 'SIGINT']")
  }
  for (const signal of value) {
    if (typeof signal !== 'string' || !(signal in constants.signals) || signal === 'SIGKILL' || signal === 'SIGSTOP') {
      throw new InvalidOptionError('signals', 'an array of catchable signal names such as "SIGTERM"', signal,
        "e.g. signals: ['SIGTERM', 'SIGINT']")
    }
  }
  return Object.freeze([...new Set(value as NodeJS.Signals[])])
}

function resolveReadiness (value: unknown): ResolvedOptions['readiness'] {
  if (value === false) return false
  if (value !== undefined && !isObject(value)) {
    throw new InvalidOptionError('readiness', 'an object { path, checks } or false', value)
  }
  if (value !== undefined) knownKeys('readiness', value, ['path', 'checks', 'checkTimeout', 'checkCacheTtl'])
  return Object.freeze({
    path: routePath('readiness.path', value?.path, defaults.readinessPath),
    checks: resolveChecks<ReadinessCheck>('readiness', value?.checks),
    checkTimeout: milliseconds('readiness.checkTimeout', value?.checkTimeout, defaults.checkTimeout, { positive: true }),
    checkCacheTtl: milliseconds('readiness.checkCacheTtl', value?.checkCacheTtl, defaults.checkCacheTtl)
  })
}

function resolveLiveness (value: unknown): ResolvedOptions['liveness'] {
  if (value === false) return false
  if (value !== undefined && !isObject(value)) throw new InvalidOptionError('liveness', 'an object { path, checks } or false', value)
  if (value !== undefined) knownKeys('liveness', value, ['path', 'checks', 'checkTimeout', 'checkCacheTtl', 'maxEventLoopDelay'])
  const maxDelay = value?.maxEventLoopDelay
  return Object.freeze({
    path: routePath('liveness.path', value?.path, defaults.livenessPath),
    checks: resolveChecks<LivenessCheck>('liveness', value?.checks),
    checkTimeout: milliseconds('liveness.checkTimeout', value?.checkTimeout, defaults.checkTimeout, { positive: true }),
    checkCacheTtl: milliseconds('liveness.checkCacheTtl', value?.checkCacheTtl, defaults.checkCacheTtl),
    maxEventLoopDelay: maxDelay === undefined ? undefined : milliseconds('liveness.maxEventLoopDelay', maxDelay, 10_000, { positive: true })
  })
}

function resolvePreStop (value: unknown, healthPort: number | undefined): ResolvedOptions['preStop'] {
  if (value === undefined || value === false) return false
  if (value !== true && !isObject(value)) {
    throw new InvalidOptionError('preStop', 'true, false or an object { path, token }', value)
  }
  const input = value === true ? {} : value
  knownKeys('preStop', input, ['path', 'token'])
  const token = input.token
  if (token !== undefined && (typeof token !== 'string' || token.length < MIN_TOKEN_LENGTH)) {
    throw new InvalidOptionError('preStop.token', `a string of at least ${MIN_TOKEN_LENGTH} characters`,
      typeof token === 'string' ? `a ${token.length}-character string` : token, 'generate one with `openssl rand -hex 24`')
  }
  if (token === undefined && healthPort === undefined) {
    throw new InvalidOptionError('preStop', 'served on `healthPort` or guarded by `preStop.token`', value,
      'the preStop endpoint starts a drain, so it must not be reachable by the public: set healthPort or a token')
  }
  return Object.freeze({ path: routePath('preStop.path', input.path, defaults.preStopPath), token })
}

function resolveExit (value: unknown): boolean | ExitFunction {
  if (value === undefined) return true
  if (typeof value !== 'boolean' && typeof value !== 'function') {
    throw new InvalidOptionError('exit', 'true, false or a function (code, report) => void', value)
  }
  return value as boolean | ExitFunction
}

function resolveMetrics (value: unknown): ResolvedOptions['metrics'] {
  if (value === undefined || value === false) return false
  if (value !== true && !isObject(value)) {
    throw new InvalidOptionError('metrics', 'true, false or an object { registry, prefix }', value)
  }
  const input = value === true ? {} : value
  knownKeys('metrics', input, ['registry', 'prefix'])
  const registry = input.registry
  if (registry !== undefined && (!isObject(registry) || typeof registry.registerMetric !== 'function' ||
    typeof registry.getSingleMetric !== 'function' || typeof registry.removeSingleMetric !== 'function')) {
    throw new InvalidOptionError('metrics.registry', 'a prom-client Registry', registry, 'e.g. metrics: { registry: new Registry() }')
  }
  const prefix = input.prefix ?? defaults.metricsPrefix
  // Prometheus metric names: [a-zA-Z_:][a-zA-Z0-9_:]*; the prefix may be empty.
  if (typeof prefix !== 'string' || !/^([a-zA-Z_:][a-zA-Z0-9_:]*)?$/.test(prefix)) {
    throw new InvalidOptionError('metrics.prefix', 'a valid Prometheus metric name prefix', prefix, `e.g. '${defaults.metricsPrefix}'`)
  }
  return Object.freeze({ registry: registry as MetricsRegistry | undefined, prefix })
}

function resolveDrainOnCrash (value: unknown, budget: Budget): ResolvedOptions['drainOnCrash'] {
  if (value === undefined || value === false) return false
  if (value !== true && !isObject(value)) throw new InvalidOptionError('drainOnCrash', 'true, false or an object { timeout }', value)
  const input = value === true ? {} : value
  knownKeys('drainOnCrash', input, ['timeout'])
  // Bounded by what a normal drain gives in-flight requests: the closers and the exit still fit before gracePeriod.
  const most = budget.gracePeriod - budget.exitMargin - budget.closeTimeout
  const timeout = milliseconds('drainOnCrash.timeout', input.timeout, Math.min(defaults.drainOnCrashTimeout, most), { positive: true })
  if (timeout > most) {
    throw new InvalidOptionError('drainOnCrash.timeout', `at most gracePeriod − exitMargin − closeTimeout (${most})`, timeout,
      'or leave it unset for the default')
  }
  return Object.freeze({ timeout })
}

function groupName (name: string, value: unknown): string {
  if (typeof value !== 'string' || value.trim() === '') {
    throw new InvalidOptionError(name, 'a non-empty string', value, "e.g. group: { name: 'web', member: 'public' }")
  }
  return value
}

function resolveGroup (value: unknown): ResolvedOptions['group'] {
  if (value === undefined) return undefined
  if (typeof value === 'string') return Object.freeze({ name: groupName('group', value), member: undefined })
  if (!isObject(value)) throw new InvalidOptionError('group', 'a group name or an object { name, member }', value, "e.g. group: { name: 'web', member: 'public' }")
  knownKeys('group', value, ['name', 'member'])
  return Object.freeze({
    name: groupName('group.name', value.name),
    member: value.member === undefined ? undefined : groupName('group.member', value.member)
  })
}

function resolveBoolean (name: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined) return fallback
  if (typeof value !== 'boolean') throw new InvalidOptionError(name, 'true or false', value, `e.g. ${name}: true`)
  return value
}

function resolveHealthPort (value: unknown): number | undefined {
  if (value === undefined) return undefined
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 65535) {
    throw new InvalidOptionError('healthPort', 'an integer port from 0 to 65535', value, 'e.g. healthPort: 9000')
  }
  return value
}

/** Validates the user's options and fills in the defaults; never mutates the input. */
export function resolveOptions (input: GracefulDrainOptions = {}): ResolvedOptions {
  if (!isObject(input)) throw new InvalidOptionError('options', 'an object', input)
  for (const key of Object.keys(input)) {
    if (!KNOWN_OPTIONS.has(key)) {
      throw new InvalidOptionError(key, 'a known option', (input as Record<string, unknown>)[key],
        `known options are ${[...KNOWN_OPTIONS].join(', ')}`)
    }
  }
  const budget = resolveBudget(input)
  const healthPort = resolveHealthPort(input.healthPort)
  const healthHost = input.healthHost ?? defaults.healthHost
  if (typeof healthHost !== 'string' || healthHost === '') {
    throw new InvalidOptionError('healthHost', 'a host name or address', healthHost, "e.g. healthHost: '0.0.0.0'")
  }
  const probeLogLevel: unknown = input.probeLogLevel ?? defaults.probeLogLevel
  if (typeof probeLogLevel !== 'string' || !LOG_LEVELS.has(probeLogLevel)) {
    throw new InvalidOptionError('probeLogLevel', `one of ${[...LOG_LEVELS].join(', ')}`, probeLogLevel)
  }
  return Object.freeze({
    ...budget,
    quietPeriodIgnore: resolvePaths('quietPeriodIgnore', input.quietPeriodIgnore, defaults.quietPeriodIgnore),
    signals: resolveSignals(input.signals),
    readiness: resolveReadiness(input.readiness),
    liveness: resolveLiveness(input.liveness),
    healthPort,
    healthHost,
    preStop: resolvePreStop(input.preStop, healthPort),
    probeLogLevel,
    exit: resolveExit(input.exit),
    metrics: resolveMetrics(input.metrics),
    stallTimeout: milliseconds('stallTimeout', input.stallTimeout, defaults.stallTimeout, { positive: true }),
    loadBalancerIdleTimeout: input.loadBalancerIdleTimeout === undefined
      ? undefined
      : milliseconds('loadBalancerIdleTimeout', input.loadBalancerIdleTimeout, 60_000, { positive: true }),
    takeOverCloseWithGrace: resolveBoolean('takeOverCloseWithGrace', input.takeOverCloseWithGrace, false),
    drainOnCrash: resolveDrainOnCrash(input.drainOnCrash, budget),
    group: resolveGroup(input.group)
  })
}
