import { ImpossibleBudgetError, InvalidOptionError, type GracefulDrainError } from './errors.js'

/**
 * The time options, resolved together because they split one budget:
 *
 *   signal ─ drainDelay ─ (quiet period, up to maxDrainDelay) ─ in-flight ─┬─ closeTimeout ─ exitMargin ─┤ gracePeriod
 *                                                                cut here ─┘
 *
 * Options the user did not set are derived from `gracePeriod`, so that any
 * grace period works with the defaults; options the user did set are honoured
 * exactly, and only a combination of set values that cannot fit is an error.
 * (docs/design.md, "The budget")
 */
export interface Budget {
  readonly gracePeriod: number
  readonly drainDelay: number
  readonly quietPeriod: number
  readonly maxDrainDelay: number
  readonly exitMargin: number
  readonly closeTimeout: number
  /** The time options the user set; the others were derived from `gracePeriod`. */
  readonly given: readonly BudgetOption[]
}

export type BudgetOption = 'gracePeriod' | 'drainDelay' | 'quietPeriod' | 'maxDrainDelay' | 'exitMargin' | 'closeTimeout'

/**
 * Each derived value is a share of `gracePeriod`, capped at what a 30–60 s
 * grace period gets. The shares of the three reservations add up to 45 %, so
 * with nothing else set the in-flight drain always keeps more than half the budget.
 */
export const budgetDefaults = Object.freeze({
  gracePeriod: 30_000,
  /** Covers endpoint propagation behind kube-proxy and most ingress controllers. */
  drainDelay: { cap: 5_000, share: 1 / 4 },
  /** Behind a per-connection balancer a 1 s gap still lost a request in 1 rollover of 34 (test/rolling.test.ts). */
  quietPeriod: { cap: 2_000, share: 1 / 5 },
  /** The closers usually need milliseconds: a small reservation, not the requests' time. */
  closeTimeout: { cap: 5_000, share: 1 / 10 },
  /** The report, the logger flush and process.exit(). */
  exitMargin: { cap: 1_000, share: 1 / 10 }
})

/** Less than this left by the set values gives the derived reservations and the in-flight drain nothing to work with. */
const MIN_LEFT_MS = 10

type Input = Partial<Record<BudgetOption, unknown>>

function milliseconds (name: string, value: unknown, { positive = false } = {}): number | undefined {
  if (value === undefined) return undefined
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || (positive && value === 0)) {
    throw new InvalidOptionError(name, `a finite number of milliseconds ${positive ? '> 0' : '≥ 0'}`, value,
      `e.g. ${name}: ${example(name)}${name === 'gracePeriod' ? '' : ', or leave it unset to derive it from gracePeriod'}`)
  }
  return value
}

function example (name: string): number {
  const value = (budgetDefaults as Record<string, number | { cap: number }>)[name] ?? 10_000
  return typeof value === 'number' ? value : value.cap
}

const derive = (gracePeriod: number, { cap, share }: { cap: number, share: number }): number =>
  Math.min(cap, Math.floor(gracePeriod * share))

/** Resolves the six time options; throws a coded error when the values set cannot fit. */
export function resolveBudget (input: Input): Budget {
  const given = (Object.keys(budgetDefaults) as BudgetOption[]).concat('maxDrainDelay')
    .filter(name => input[name] !== undefined)
  const gracePeriod = milliseconds('gracePeriod', input.gracePeriod, { positive: true }) ?? budgetDefaults.gracePeriod
  const set = {
    drainDelay: milliseconds('drainDelay', input.drainDelay),
    closeTimeout: milliseconds('closeTimeout', input.closeTimeout, { positive: true }),
    exitMargin: milliseconds('exitMargin', input.exitMargin)
  }
  const reserved = Object.values(set).reduce<number>((sum, value) => sum + (value ?? 0), 0)
  if (gracePeriod - reserved < MIN_LEFT_MS) throw impossible(gracePeriod, set, given.includes('gracePeriod'))

  // The derived parts share what the set ones leave, and take at most half of
  // it, so the in-flight drain always keeps the other half.
  const derived = {
    drainDelay: set.drainDelay === undefined ? derive(gracePeriod, budgetDefaults.drainDelay) : 0,
    closeTimeout: set.closeTimeout === undefined ? derive(gracePeriod, budgetDefaults.closeTimeout) : 0,
    exitMargin: set.exitMargin === undefined ? derive(gracePeriod, budgetDefaults.exitMargin) : 0
  }
  const room = (gracePeriod - reserved) / 2
  const sum = derived.drainDelay + derived.closeTimeout + derived.exitMargin
  const scale = sum > room ? room / sum : 1
  const drainDelay = set.drainDelay ?? Math.floor(derived.drainDelay * scale)
  // closeTimeout must stay > 0: it bounds fastify.close().
  const closeTimeout = set.closeTimeout ?? Math.max(1, Math.floor(derived.closeTimeout * scale))
  const exitMargin = set.exitMargin ?? Math.floor(derived.exitMargin * scale)
  const quietPeriod = milliseconds('quietPeriod', input.quietPeriod) ?? derive(gracePeriod, budgetDefaults.quietPeriod)

  // In-flight requests are cut when only the closers' share and the exit margin are left.
  const inFlightEnd = gracePeriod - exitMargin - closeTimeout
  // By default the quiet-period extension may take at most half of what the delay leaves,
  // so slow requests keep the rest.
  const maxDrainDelay = milliseconds('maxDrainDelay', input.maxDrainDelay) ?? drainDelay + (inFlightEnd - drainDelay) / 2
  if (maxDrainDelay < drainDelay || maxDrainDelay >= inFlightEnd) {
    throw new InvalidOptionError('maxDrainDelay', `a number from drainDelay (${drainDelay}) to below ` +
      `gracePeriod − exitMargin − closeTimeout (${inFlightEnd})`, maxDrainDelay, 'or leave it unset for the default')
  }
  return Object.freeze({ gracePeriod, drainDelay, quietPeriod, maxDrainDelay, exitMargin, closeTimeout, given: Object.freeze(given) })
}

/** When in-flight requests are cut, in ms after the signal: only the closers' share and the exit margin are left. */
export function inFlightEnd (budget: Budget): number {
  return budget.gracePeriod - budget.exitMargin - budget.closeTimeout
}

/**
 * Only values the user set can be impossible. The message says which were
 * set, which were derived, and proposes numbers that fit: the same values
 * under a longer grace period, or the largest one made smaller.
 */
function impossible (gracePeriod: number, set: Record<'drainDelay' | 'closeTimeout' | 'exitMargin', number | undefined>,
  gracePeriodGiven: boolean): GracefulDrainError {
  const parts = Object.entries(set).filter((entry): entry is [string, number] => entry[1] !== undefined)
  const reserved = parts.reduce((sum, [, value]) => sum + value, 0)
  // Leave the in-flight drain at least a second, or a quarter of the grace period.
  const inFlight = Math.max(1_000, Math.ceil(gracePeriod / 4))
  const raiseTo = Math.ceil((reserved + inFlight) / 1_000) * 1_000
  const [largest, largestValue] = parts.reduce((a, b) => (b[1] > a[1] ? b : a))
  const lowerTo = Math.max(0, Math.floor(largestValue - (reserved - gracePeriod) - inFlight))
  const raise = `set gracePeriod: ${raiseTo} (and terminationGracePeriodSeconds: ${raiseTo / 1000})`
  const fix = lowerTo > 0 ? `${raise}, or ${largest}: ${lowerTo}` : raise
  const terms = parts.map(([name, value]) => `\`${name}\` (${value}, set)`).join(' + ')
  const derived = Object.entries(set).filter(([, value]) => value === undefined).map(([name]) => `\`${name}\``)
  return new ImpossibleBudgetError(terms, `\`gracePeriod\` (${gracePeriod}, ${gracePeriodGiven ? 'set' : 'the default'})`,
    derived.join(', '), fix)
}
