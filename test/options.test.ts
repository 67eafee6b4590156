// Options: resolveOptions() fills every default with `??` (0 is a valid delay),
// never mutates its input, freezes its result, and rejects every bad value at
// registration with a coded error that names the option, the value and the fix.

import t from 'tap'
import { readFile } from 'node:fs/promises'
import Fastify from 'fastify'
import { Registry } from 'prom-client'
import gracefulDrain, { defaults, resolveOptions } from 'fastify-graceful-drain'
import type { GracefulDrainOptions } from 'fastify-graceful-drain'

const INVALID = 'FST_GRACEFUL_DRAIN_INVALID_OPTION'
const BUDGET = 'FST_GRACEFUL_DRAIN_IMPOSSIBLE_BUDGET'

/** Options that install nothing process-wide, so no test leaks a signal handler or exits the runner. */
const quiet = { exit: false, signals: [] } as const

/** Calls resolveOptions with values the types forbid, as a JavaScript caller would. */
const resolveLoose = (input: unknown): ReturnType<typeof resolveOptions> =>
  resolveOptions(input as GracefulDrainOptions)

function caught (fn: () => unknown): Error & { code?: string } {
  try {
    fn()
  } catch (error) {
    return error as Error & { code?: string }
  }
  throw new Error('expected a throw')
}

t.test('every default comes from the `defaults` export', async t => {
  const resolved = resolveOptions()
  t.same(resolveOptions({}), resolved, 'no argument and {} resolve alike')
  t.equal(resolved.gracePeriod, defaults.gracePeriod)
  t.equal(resolved.drainDelay, defaults.drainDelay)
  t.equal(resolved.quietPeriod, defaults.quietPeriod)
  t.equal(resolved.exitMargin, defaults.exitMargin)
  // The closers' share is a tenth of the grace period, capped: 3000 at the default 30 s (test/budget.test.ts).
  t.equal(resolved.closeTimeout, Math.min(defaults.closeTimeout, defaults.gracePeriod / 10))
  t.same(resolved.quietPeriodIgnore, defaults.quietPeriodIgnore)
  t.same(resolved.signals, defaults.signals)
  t.same(resolved.readiness, {
    path: defaults.readinessPath,
    checks: {},
    checkTimeout: defaults.checkTimeout,
    checkCacheTtl: defaults.checkCacheTtl
  })
  t.same(resolved.liveness, {
    path: defaults.livenessPath,
    checks: {},
    checkTimeout: defaults.checkTimeout,
    checkCacheTtl: defaults.checkCacheTtl,
    maxEventLoopDelay: undefined
  }, 'liveness checks and the event-loop check are off unless asked for')
  t.equal(resolved.stallTimeout, defaults.stallTimeout)
  t.equal(resolved.loadBalancerIdleTimeout, undefined)
  t.equal(resolved.takeOverCloseWithGrace, false)
  t.equal(resolved.drainOnCrash, false, 'no crash handler unless asked for')
  t.equal(resolved.healthPort, undefined)
  t.equal(resolved.healthHost, defaults.healthHost)
  t.equal(resolved.preStop, false)
  t.equal(resolved.probeLogLevel, defaults.probeLogLevel)
  t.equal(resolved.exit, true)
  // The quiet-period cap defaults to the delay plus half of what the in-flight drain has left.
  const inFlightWindow = defaults.gracePeriod - defaults.exitMargin - resolved.closeTimeout
  t.equal(resolved.maxDrainDelay, defaults.drainDelay + (inFlightWindow - defaults.drainDelay) / 2)
  t.same(resolveOptions({ preStop: true, healthPort: 9000 }).preStop, { path: defaults.preStopPath, token: undefined })

  // The documented values (docs/design.md, "The budget"); a change to a default must be deliberate.
  t.match(defaults, {
    gracePeriod: 30_000,
    drainDelay: 5_000,
    quietPeriod: 2_000,
    exitMargin: 1_000,
    readinessPath: '/readyz',
    livenessPath: '/livez',
    probeLogLevel: 'silent'
  })
  t.same(defaults.signals, ['SIGTERM', 'SIGINT'])
  t.ok(Object.isFrozen(defaults) && Object.isFrozen(defaults.signals), 'defaults cannot be changed at run time')
})

t.test('the README options table lists every option with the same defaults', async t => {
  const table = await readmeOptionsTable()
  if (table === undefined) return t.fail('README.md has no options table')
  // The unknown-option error lists the options resolveOptions() accepts: the table must list exactly those.
  const known = /known options are (.*)$/.exec(caught(() => resolveLoose({ '?': 1 })).message)?.[1]?.split(', ')
  t.same([...table.keys()].sort(), known?.sort(), 'one row per option, no more, no less')
  const expected: Record<string, string[]> = {
    gracePeriod: [String(defaults.gracePeriod)],
    drainDelay: [String(defaults.drainDelay)],
    quietPeriod: [String(defaults.quietPeriod)],
    exitMargin: [String(defaults.exitMargin)],
    closeTimeout: [String(defaults.closeTimeout)],
    signals: defaults.signals.map(signal => `'${signal}'`),
    readiness: [`'${defaults.readinessPath}'`],
    liveness: [`'${defaults.livenessPath}'`],
    healthHost: [`'${defaults.healthHost}'`],
    preStop: ['false'],
    probeLogLevel: [`'${defaults.probeLogLevel}'`],
    exit: ['true']
  }
  for (const [option, values] of Object.entries(expected)) {
    const cell = table.get(option)
    for (const value of values) t.ok(cell?.includes(value), `README: \`${option}\` default is ${value}`, { cell })
  }
  const readinessRow = await readmeRow('readiness')
  t.match(readinessRow, `\`checkTimeout\` ${defaults.checkTimeout}`, 'README: readiness.checkTimeout default')
  t.match(readinessRow, `\`checkCacheTtl\` ${defaults.checkCacheTtl}`, 'README: readiness.checkCacheTtl default')
  t.match(await readmeRow('preStop'), `'${defaults.preStopPath}'`, 'README: preStop.path default')
})

t.test('?? semantics: 0 is a valid drainDelay, quietPeriod and exitMargin', async t => {
  const resolved = resolveOptions({ drainDelay: 0, quietPeriod: 0, exitMargin: 0 })
  t.equal(resolved.drainDelay, 0)
  t.equal(resolved.quietPeriod, 0)
  t.equal(resolved.exitMargin, 0)
  t.match(resolveOptions({ readiness: { checkCacheTtl: 0 } }).readiness, { checkCacheTtl: 0 }, '0 turns the check cache off')
  t.same(resolveOptions({ signals: [] }).signals, [], 'an empty signal list means none, not the default')
  t.equal(resolveOptions({ exit: false }).exit, false)
  t.equal(resolveOptions({ readiness: false }).readiness, false)
  t.equal(resolveOptions({ liveness: false }).liveness, false)
  t.equal(resolveOptions({ healthPort: 0 }).healthPort, 0, 'port 0 (ephemeral) is a port')
})

t.test('the input is never mutated and the result is frozen', async t => {
  const check = async (): Promise<boolean> => true
  const input: GracefulDrainOptions = {
    gracePeriod: 20_000,
    drainDelay: 2_000,
    signals: ['SIGTERM', 'SIGTERM'],
    readiness: { path: '/ready', checks: { db: check } },
    liveness: { path: '/alive' },
    preStop: { token: 'a'.repeat(24) }
  }
  const before = JSON.stringify(input)
  deepFreeze(input)
  const resolved = resolveOptions(input) // a write to the frozen input would throw here
  t.equal(JSON.stringify(input), before, 'input unchanged')
  t.same(input.signals, ['SIGTERM', 'SIGTERM'], 'duplicates are dropped from the result only')
  t.same(resolved.signals, ['SIGTERM'])
  t.not(resolved.signals, input.signals, 'the result does not share the caller’s array')
  t.ok(Object.isFrozen(resolved), 'result frozen')
  t.ok(Object.isFrozen(resolved.signals), 'signals frozen')
  t.ok(resolved.readiness !== false && Object.isFrozen(resolved.readiness) && Object.isFrozen(resolved.readiness.checks),
    'readiness and its checks frozen')
  t.ok(resolved.liveness !== false && Object.isFrozen(resolved.liveness), 'liveness frozen')
  t.ok(resolved.preStop !== false && Object.isFrozen(resolved.preStop), 'preStop frozen')
  t.equal(resolved.readiness !== false && resolved.readiness.checks.db, check, 'checks are kept as given')
})

// Every bad value: [option path, input, the value as the message shows it, a fix the message must give].
const numberOptions = ['gracePeriod', 'drainDelay', 'quietPeriod', 'exitMargin', 'closeTimeout', 'maxDrainDelay'] as const
const cases: Array<[string, Record<string, unknown>, string, string]> = []
for (const name of numberOptions) {
  cases.push(
    [name, { [name]: '5000' }, '"5000"', `e.g. ${name}:`],
    [name, { [name]: -1 }, '-1', `e.g. ${name}:`],
    [name, { [name]: Number.NaN }, 'NaN', `e.g. ${name}:`],
    [name, { [name]: Number.POSITIVE_INFINITY }, 'Infinity', `e.g. ${name}:`],
    [name, { [name]: null }, 'null', `e.g. ${name}:`]
  )
}
cases.push(
  ['gracePeriod', { gracePeriod: 0 }, '0', 'e.g. gracePeriod: 30000'],
  ['closeTimeout', { closeTimeout: 0 }, '0', 'e.g. closeTimeout: 5000'],
  ['maxDrainDelay', { drainDelay: 5000, maxDrainDelay: 4000 }, '4000', 'or leave it unset'],
  ['maxDrainDelay', { maxDrainDelay: 26_000 }, '26000', 'or leave it unset'],
  ['quietPeriodIgnore', { quietPeriodIgnore: '/metrics' }, '"/metrics"', "e.g. quietPeriodIgnore: ['/metrics']"],
  ['quietPeriodIgnore[1]', { quietPeriodIgnore: ['/metrics', 'status'] }, '"status"', "e.g. quietPeriodIgnore[1]: '/metrics'"],
  ['readiness.checkTimeout', { readiness: { checkTimeout: 0 } }, '0', 'e.g. readiness.checkTimeout: 1000'],
  ['readiness.checkCacheTtl', { readiness: { checkCacheTtl: -5 } }, '-5', 'e.g. readiness.checkCacheTtl: 1000'],
  ['signals', { signals: 'SIGTERM' }, '"SIGTERM"', "signals: ['SIGTERM', 'SIGINT']"],
  ['signals', { signals: ['SIGTERM', 'SIGFOO'] }, '"SIGFOO"', "signals: ['SIGTERM', 'SIGINT']"],
  ['signals', { signals: ['sigterm'] }, '"sigterm"', "signals: ['SIGTERM', 'SIGINT']"],
  ['signals', { signals: ['SIGKILL'] }, '"SIGKILL"', 'catchable'],
  ['signals', { signals: ['SIGSTOP'] }, '"SIGSTOP"', 'catchable'],
  ['signals', { signals: [15] }, '15', "signals: ['SIGTERM', 'SIGINT']"],
  ['readiness', { readiness: '/readyz' }, '"/readyz"', 'an object { path, checks } or false'],
  ['readiness', { readiness: true }, 'true', 'an object { path, checks } or false'],
  ['readiness.path', { readiness: { path: 'readyz' } }, '"readyz"', "e.g. readiness.path: '/readyz'"],
  ['readiness.checks', { readiness: { checks: [() => true] } }, '[null]', 'an object of named async functions'],
  ['readiness.checks.db', { readiness: { checks: { db: true } } }, 'true', 'a function returning a boolean'],
  ['liveness', { liveness: true }, 'true', 'an object { path, checks } or false'],
  ['liveness.checks.db', { liveness: { checks: { db: 1 } } }, '1', 'a function returning a boolean'],
  ['liveness.maxEventLoopDelay', { liveness: { maxEventLoopDelay: 0 } }, '0', 'e.g. liveness.maxEventLoopDelay: 10000'],
  // A misspelled nested key is an error, as a misspelled top-level one is.
  ['readiness.pathh', { readiness: { pathh: '/ready' } }, '"/ready"', 'readiness takes path, checks, checkTimeout, checkCacheTtl'],
  ['liveness.check', { liveness: { check: {} } }, '{}', 'liveness takes path, checks'],
  ['preStop.tokn', { preStop: { tokn: 'a'.repeat(16), token: 'a'.repeat(16) } }, '"aaaaaaaaaaaaaaaa"', 'preStop takes path, token'],
  ['metrics.prefx', { metrics: { prefx: 'x_' } }, '"x_"', 'metrics takes registry, prefix'],
  ['drainOnCrash.timeuot', { drainOnCrash: { timeuot: 1 } }, '1', 'drainOnCrash takes timeout'],
  ['drainOnCrash', { drainOnCrash: 'yes' }, '"yes"', 'true, false or an object { timeout }'],
  ['drainOnCrash.timeout', { drainOnCrash: { timeout: 60_000 } }, '60000', 'at most gracePeriod − exitMargin − closeTimeout (26000)'],
  ['stallTimeout', { stallTimeout: 0 }, '0', 'e.g. stallTimeout: 2000'],
  ['loadBalancerIdleTimeout', { loadBalancerIdleTimeout: -1 }, '-1', 'e.g. loadBalancerIdleTimeout: 60000'],
  ['takeOverCloseWithGrace', { takeOverCloseWithGrace: 'yes' }, '"yes"', 'true or false'],
  ['liveness.path', { liveness: { path: 42 } }, '42', "e.g. liveness.path: '/livez'"],
  ['healthPort', { healthPort: -1 }, '-1', 'e.g. healthPort: 9000'],
  ['healthPort', { healthPort: 65_536 }, '65536', 'e.g. healthPort: 9000'],
  ['healthPort', { healthPort: 80.5 }, '80.5', 'e.g. healthPort: 9000'],
  ['healthPort', { healthPort: '9000' }, '"9000"', 'e.g. healthPort: 9000'],
  ['healthHost', { healthHost: '' }, '""', "e.g. healthHost: '0.0.0.0'"],
  ['healthHost', { healthHost: 127 }, '127', "e.g. healthHost: '0.0.0.0'"],
  ['preStop', { preStop: '/prestop' }, '"/prestop"', 'true, false or an object { path, token }'],
  ['preStop', { preStop: true }, 'true', 'set healthPort or a token'],
  ['preStop.path', { preStop: { path: 'stop', token: 'a'.repeat(16) } }, '"stop"', "e.g. preStop.path: '/prestop'"],
  ['preStop.token', { preStop: { token: 'short' } }, '"a 5-character string"', 'openssl rand -hex 24'],
  ['preStop.token', { preStop: { token: 1234 } }, '1234', 'openssl rand -hex 24'],
  ['probeLogLevel', { probeLogLevel: 'verbose' }, '"verbose"', 'one of silent, fatal, error, warn, info, debug, trace'],
  ['probeLogLevel', { probeLogLevel: 30 }, '30', 'one of silent'],
  ['exit', { exit: 'yes' }, '"yes"', 'true, false or a function'],
  ['exit', { exit: 0 }, '0', 'true, false or a function'],
  ['drainDelays', { drainDelays: 1000 }, '1000', 'known options are gracePeriod, drainDelay'],
  ['options', null as unknown as Record<string, unknown>, 'null', 'an object'],
  // Values JSON cannot render still show up readably in the message.
  ['exit', { exit: 10n }, '10n', 'true, false or a function'],
  ['healthHost', { healthHost: Symbol('host') }, 'Symbol(host)', "e.g. healthHost: '0.0.0.0'"],
  ['probeLogLevel', { probeLogLevel: function level () {} }, 'function level', 'one of silent'],
  ['liveness.path', { liveness: { path: circular() } }, '[object Object]', "e.g. liveness.path: '/livez'"]
)

function circular (): object {
  const value: Record<string, unknown> = {}
  value.self = value
  return value
}

t.test('every bad value fails with a coded TypeError naming the option, the value and the fix', async t => {
  for (const [option, input, shown, fix] of cases) {
    const error = caught(() => resolveLoose(input))
    const label = `${option} = ${shown}`
    t.type(error, TypeError, `${label}: TypeError`)
    t.equal(error.code, INVALID, `${label}: code`)
    t.equal(error.name, 'GracefulDrainError', `${label}: name`)
    t.match(error.message, `\`${option}\``, `${label}: names the option`)
    t.match(error.message, `got ${shown}`, `${label}: shows the value given`)
    t.match(error.message, fix, `${label}: says what to do`)
  }
})

t.test('an impossible budget of values the user set is a RangeError that names them and proposes numbers that fit', async t => {
  const input = { gracePeriod: 10_000, drainDelay: 5_000, closeTimeout: 4_000, exitMargin: 1_000 }
  const error = caught(() => resolveOptions(input))
  t.type(error, RangeError)
  t.equal(error.code, BUDGET)
  for (const part of ['`drainDelay` (5000, set)', '`closeTimeout` (4000, set)', '`exitMargin` (1000, set)', '`gracePeriod` (10000, set)']) {
    t.match(error.message, part)
  }
  t.match(error.message, /set gracePeriod: 13000 \(and terminationGracePeriodSeconds: 13\), or drainDelay: 2500/)
  // The two numbers it proposes really fit.
  t.equal(resolveOptions({ ...input, gracePeriod: 13_000 }).gracePeriod, 13_000)
  t.equal(resolveOptions({ ...input, drainDelay: 2_500 }).drainDelay, 2_500)

  const unsetGrace = caught(() => resolveOptions({ drainDelay: 30_000 }))
  t.equal(unsetGrace.code, BUDGET, 'a delay as long as the default grace period')
  t.match(unsetGrace.message, '`gracePeriod` (30000, the default)', 'says the grace period was not set')
  t.match(unsetGrace.message, 'derived from gracePeriod and shrunk to fit: `closeTimeout`, `exitMargin`', 'names the derived values')
  // Set values that leave 10 ms or more still fit: the derived reservations shrink around them.
  t.equal(resolveOptions({ ...input, exitMargin: 990 }).gracePeriod, 10_000)
})

t.test('registration rejects bad options with the coded error', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await t.rejects(async () => await app.register(gracefulDrain, { ...quiet, drainDelay: -1 }), {
    code: INVALID,
    message: /`drainDelay` must be a finite number of milliseconds ≥ 0; got -1/
  })
  const budget = Fastify()
  t.teardown(() => budget.close())
  await t.rejects(async () => await budget.register(gracefulDrain, { ...quiet, gracePeriod: 1_000, drainDelay: 1_000 }), { code: BUDGET })
})

t.test('registering twice on one app is a clear error', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  app.register(gracefulDrain, quiet)
  await t.rejects(async () => await app.register(gracefulDrain, quiet), {
    code: 'FST_GRACEFUL_DRAIN_ALREADY_REGISTERED',
    message: /already registered .*register it once, at the root/
  })
})

t.test('a child context cannot register it again under the root’s registration', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(gracefulDrain, quiet)
  await t.rejects(async () => await app.register(async child => { await child.register(gracefulDrain, quiet) }), {
    code: 'FST_GRACEFUL_DRAIN_ALREADY_REGISTERED'
  })
})

t.test('one app per process owns the signals; closing it releases them', async t => {
  const before = { SIGTERM: process.listenerCount('SIGTERM'), SIGINT: process.listenerCount('SIGINT') }
  const first = Fastify()
  await first.register(gracefulDrain, { exit: false })
  t.equal(process.listenerCount('SIGTERM'), before.SIGTERM + 1, 'first app listens to SIGTERM')
  t.equal(process.listenerCount('SIGINT'), before.SIGINT + 1, 'first app listens to SIGINT')

  const second = Fastify()
  t.teardown(() => second.close())
  const connectionListeners = second.server.listenerCount('connection')
  const registry = new Registry()
  await t.rejects(async () => await second.register(gracefulDrain, { exit: false, metrics: { registry } }), {
    code: 'FST_GRACEFUL_DRAIN_SIGNALS_OWNED',
    message: /already handles SIGTERM, SIGINT.*pass `signals: \[\]`/
  })
  t.equal(process.listenerCount('SIGTERM'), before.SIGTERM + 1, 'the refused app added no signal listener')
  // Regression: the refusal used to come after the tracker and the metrics were set up.
  t.equal(second.server.listenerCount('connection'), connectionListeners, 'nor a server listener')
  t.same(registry.getMetricsAsArray(), [], 'nor a metric in the shared registry')

  // The fix the error message gives works, with the same registry.
  const withoutSignals = Fastify()
  await withoutSignals.register(gracefulDrain, { ...quiet, metrics: { registry } })
  t.pass('an app with signals: [] registers beside the owner')
  await withoutSignals.close()

  await first.close()
  t.equal(process.listenerCount('SIGTERM'), before.SIGTERM, 'SIGTERM listener removed on close')
  t.equal(process.listenerCount('SIGINT'), before.SIGINT, 'SIGINT listener removed on close')

  const third = Fastify()
  await third.register(gracefulDrain, { exit: false })
  t.equal(process.listenerCount('SIGTERM'), before.SIGTERM + 1, 'ownership released: a new app owns the signals')
  await third.close()
  t.equal(process.listenerCount('SIGTERM'), before.SIGTERM)
})

function deepFreeze<T> (value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const inner of Object.values(value)) deepFreeze(inner)
    Object.freeze(value)
  }
  return value
}

async function readme (): Promise<string> {
  return await readFile(new URL('../README.md', import.meta.url), 'utf8').catch(() => '')
}

/** The README options table's default column, keyed by option; undefined while there is no table. */
async function readmeOptionsTable (): Promise<Map<string, string> | undefined> {
  const lines = (await readme()).split('\n')
  const header = lines.findIndex(line => /^\|\s*option\s*\|/i.test(line))
  if (header === -1) return undefined
  const cells = (line: string): string[] => line.split(/(?<!\\)\|/).slice(1, -1).map(cell => cell.trim())
  const column = cells(lines[header] ?? '').findIndex(cell => cell.toLowerCase() === 'default')
  const rows = new Map<string, string>()
  for (const line of lines.slice(header + 2)) {
    if (!line.startsWith('|')) break
    const row = cells(line)
    const option = /^`(\w+)`$/.exec(row[0] ?? '')?.[1]
    // 30_000, 30 000 and 30,000 all read as 30000.
    if (option !== undefined) rows.set(option, (row[column] ?? '').replace(/(\d)[_ ,](?=\d{3})/g, '$1'))
  }
  return rows
}

async function readmeRow (option: string): Promise<string | undefined> {
  return (await readme()).split('\n').find(line => line.startsWith(`| \`${option}\` |`))
}
