/**
 * Every error the plugin throws, in one place. Codes follow Fastify's
 * `FST_<PLUGIN>_<WHAT>` convention so they can be matched in logs and tests;
 * messages name the option, what was expected, the value given and the fix.
 */

export interface GracefulDrainError extends Error {
  readonly code: string
}

type ErrorFactory<Args extends unknown[]> = new (...args: Args) => GracefulDrainError

function createError<Args extends unknown[]> (
  code: string,
  format: (...args: Args) => string,
  Base: ErrorConstructor | TypeErrorConstructor | RangeErrorConstructor = Error
): ErrorFactory<Args> {
  const DrainError = class extends (Base as ErrorConstructor) {
    readonly code = code
    constructor (...args: Args) {
      super(format(...args))
      this.name = 'GracefulDrainError'
    }
  }
  Object.defineProperty(DrainError, 'name', { value: code })
  return DrainError as unknown as ErrorFactory<Args>
}

/** Renders a user-supplied value for an error message without throwing on odd inputs. */
export function show (value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'function') return `function ${value.name || '(anonymous)'}`
  if (typeof value === 'bigint') return `${value}n`
  // JSON.stringify renders NaN and ±Infinity as "null", which would hide the very value that was wrong.
  if (typeof value === 'number') return String(value)
  try {
    return JSON.stringify(value) ?? String(value)
  } catch {
    return String(value)
  }
}

export const InvalidOptionError = createError(
  'FST_GRACEFUL_DRAIN_INVALID_OPTION',
  (option: string, expected: string, value: unknown, fix?: string) =>
    `\`${option}\` must be ${expected}; got ${show(value)}${fix === undefined ? '' : `: ${fix}`}`,
  TypeError
)

export const ImpossibleBudgetError = createError(
  'FST_GRACEFUL_DRAIN_IMPOSSIBLE_BUDGET',
  (setTerms: string, gracePeriod: string, derived: string, fix: string) =>
    `${setTerms} must be less than ${gracePeriod}, or no time is left for in-flight requests` +
    `${derived === '' ? '' : ` (unset, so derived from gracePeriod and shrunk to fit: ${derived})`}: ${fix}`,
  RangeError
)

export const AlreadyRegisteredError = createError(
  'FST_GRACEFUL_DRAIN_ALREADY_REGISTERED',
  () => 'fastify-graceful-drain is already registered on this Fastify instance or one of its parents: ' +
    'register it once, at the root of the app'
)

export const SignalsOwnedError = createError(
  'FST_GRACEFUL_DRAIN_SIGNALS_OWNED',
  (signals: string) => `another fastify-graceful-drain instance in this process already handles ${signals}: ` +
    'one instance per process owns the signals; register every app with the same `group` option to drain them together, ' +
    'or pass `signals: []` to the others and call `fastify.drain.start()` yourself, ' +
    'or close the first instance before registering a new one'
)

export const InvalidCloserError = createError(
  'FST_GRACEFUL_DRAIN_INVALID_CLOSER',
  (argument: string, expected: string, value: unknown) =>
    `addCloser(): \`${argument}\` must be ${expected}; got ${show(value)}`,
  TypeError
)

export const AlreadyClosedError = createError(
  'FST_GRACEFUL_DRAIN_ALREADY_CLOSED',
  () => 'fastify.drain.start() was called after the app closed without a drain: there is nothing left to drain, ' +
    'and exiting now would end the process behind your back; call start() instead of app.close(), not after it'
)

export const CloserAfterStartError = createError(
  'FST_GRACEFUL_DRAIN_CLOSER_AFTER_START',
  (name: string, state: string) =>
    `addCloser("${name}") was called while the drain is ${state}: the closers have already been scheduled, ` +
    'so this resource would never be closed; register closers at startup (e.g. right after creating the resource)'
)

export const HealthPortConflictError = createError(
  'FST_GRACEFUL_DRAIN_HEALTH_PORT_CONFLICT',
  (port: number) => `\`healthPort\` (${port}) is the port the app itself listens on: the probes need a port of their own ` +
    'so they stay up while the main listener closes; pick another port (e.g. 9000) and point the probes at it'
)

export const HealthPortInUseError = createError(
  'FST_GRACEFUL_DRAIN_HEALTH_PORT_IN_USE',
  (port: number, host: string, reason: string) => `the health listener could not listen on ${host}:${port} (\`healthPort\`): ${reason}; ` +
    (reason === 'EADDRINUSE'
      ? 'another process or another app in this process holds that port'
      : 'the port or host cannot be bound by this process (a port below 1024 needs privileges)') +
    ': pick a free port and point the probes at it'
)

export const MetricsUnavailableError = createError(
  'FST_GRACEFUL_DRAIN_METRICS_UNAVAILABLE',
  (reason: string) => `\`metrics\` needs prom-client, which could not be loaded (${reason}): ` +
    'install it (npm i prom-client) or leave `metrics` unset'
)

export const InvalidTrackError = createError(
  'FST_GRACEFUL_DRAIN_INVALID_TRACK',
  (argument: string, expected: string, value: unknown) =>
    `track(): \`${argument}\` must be ${expected}; got ${show(value)}`,
  TypeError
)

export const TrackAfterCloseError = createError(
  'FST_GRACEFUL_DRAIN_TRACK_AFTER_CLOSE',
  (name: string, state: string) =>
    `track("${name}") was called after the drain reached its closers (${state}): the resources this work would use ` +
    'are closing, so it cannot be waited for; start background work before the drain closes resources, ' +
    'or check fastify.drain.signal and skip new work once it has aborted'
)

export const GroupMismatchError = createError(
  'FST_GRACEFUL_DRAIN_GROUP_MISMATCH',
  (group: string, member: string, option: string, value: unknown, groupValue: unknown, first: string) =>
    `drain group "${group}": member "${member}" sets \`${option}\` to ${show(value)}, but the group's \`${option}\` is ` +
    `${show(groupValue)} (from its first member "${first}"): the members share one deadline, one signal owner and one exit, ` +
    `so give \`${option}\` the same value on every member, or set it on the first member only`
)

export const GroupMemberExistsError = createError(
  'FST_GRACEFUL_DRAIN_GROUP_DUPLICATE_MEMBER',
  (group: string, member: string) =>
    `drain group "${group}" already has a member named "${member}": each app's section of the combined report is ` +
    `keyed by its name; give each app its own, e.g. group: { name: '${group}', member: 'admin' }`
)

export const GroupDrainingError = createError(
  'FST_GRACEFUL_DRAIN_GROUP_DRAINING',
  (group: string, member: string) =>
    `"${member}" cannot join drain group "${group}": the group is already draining, so this app would miss its ` +
    'deadline and its report; register every member at startup, before the group can receive a signal'
)

/** The message of whatever was thrown: an Error's message, anything else as a string. */
export const errorMessage = (error: unknown): string => error instanceof Error ? error.message : String(error)
