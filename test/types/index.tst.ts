// Type tests of the public types as they ship (dist/*.d.ts, through the
// package's own name): the fastify.drain augmentation, the options, and
// registration with Fastify. Run with `npm run test:types` (tstyche).

import { describe, expect, test } from 'tstyche'
import Fastify from 'fastify'
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { Channel } from 'node:diagnostics_channel'
import gracefulDrain, { defaults, diagnosticsChannels, gracefulDrain as named, resolveOptions } from 'fastify-graceful-drain'
import type {
  CloserOutcome,
  DrainGroupInfo,
  DrainGroupReport,
  DrainReport,
  DrainState,
  GracefulDrain,
  GracefulDrainOptions,
  ResolvedOptions
} from 'fastify-graceful-drain'

const app = Fastify()

describe('fastify.drain', () => {
  test('is declared on every Fastify instance', () => {
    expect<FastifyInstance>().type.toHaveProperty('drain')
    expect(app.drain).type.toBe<GracefulDrain>()
  })

  test('state is the union of the five states', () => {
    expect(app.drain.state).type.toBe<'starting' | 'ready' | 'draining' | 'closing' | 'closed'>()
    expect<DrainState>().type.toBe<'starting' | 'ready' | 'draining' | 'closing' | 'closed'>()
  })

  test('signal, inFlight and report', () => {
    expect(app.drain.signal).type.toBe<AbortSignal>()
    expect(app.drain.inFlight).type.toBe<number>()
    expect(app.drain.report).type.toBe<DrainReport | undefined>()
  })

  test('state, signal, inFlight and report are read-only', () => {
    // TS2540: Cannot assign to '…' because it is a read-only property.
    expect(() => { app.drain.state = 'ready' }).type.toRaiseError(2540)
    expect(() => { app.drain.inFlight = 0 }).type.toRaiseError(2540)
    expect(() => { app.drain.signal = new AbortController().signal }).type.toRaiseError(2540)
    expect(() => { app.drain.report = undefined }).type.toRaiseError(2540)
  })

  test('start(reason?) resolves with the report', () => {
    expect(app.drain.start()).type.toBe<Promise<DrainReport>>()
    expect(app.drain.start).type.toBeCallableWith('deploy')
    expect(app.drain.start).type.not.toBeCallableWith(42)
    expect(app.drain.start).type.not.toBeCallableWith({ reason: 'deploy' })
  })

  test('addCloser(name, fn, { timeout }?)', () => {
    expect(app.drain.addCloser('db', () => {})).type.toBe<void>()
    expect(app.drain.addCloser).type.toBeCallableWith('db', async () => {})
    expect(app.drain.addCloser).type.toBeCallableWith('db', async (signal: AbortSignal) => signal.aborted, { timeout: 2000 })
    expect(app.drain.addCloser).type.toBeCallableWith('db', () => {}, {})
    expect(app.drain.addCloser).type.not.toBeCallableWith(() => {})
    expect(app.drain.addCloser).type.not.toBeCallableWith('db', 'pool.end')
    expect(app.drain.addCloser).type.not.toBeCallableWith('db', () => {}, { timeout: '2s' })
    expect(app.drain.addCloser).type.not.toBeCallableWith('db', () => {}, { timeOut: 2000 })
    expect(app.drain.addCloser).type.not.toBeCallableWith('db', (signal: string) => signal)
    app.drain.addCloser('queue', signal => {
      expect(signal).type.toBe<AbortSignal>()
    })
  })
})

describe('the rest of the public surface', () => {
  test('startupTask(name, task) and healthPort', () => {
    expect(app.drain.startupTask('migrations', Promise.resolve())).type.toBe<void>()
    expect(app.drain.startupTask).type.not.toBeCallableWith('migrations', () => {})
    expect(app.drain.startupTask).type.not.toBeCallableWith(Promise.resolve())
    expect(app.drain.healthPort).type.toBe<number | undefined>()
    expect(() => { app.drain.healthPort = 9000 }).type.toRaiseError(2540)
  })

  test('request.drainSignal is a read-only AbortSignal on every request', () => {
    app.get('/', async request => {
      expect(request.drainSignal).type.toBe<AbortSignal>()
      expect(() => { request.drainSignal = new AbortController().signal }).type.toRaiseError(2540)
      return 'ok'
    })
  })

  test('diagnosticsChannels are node:diagnostics_channel channels', () => {
    expect(diagnosticsChannels.start).type.toBe<Channel>()
    expect(diagnosticsChannels).type.toHaveProperty('exit')
  })
})

describe('background work, crashes and checks', () => {
  test('track(name, work) returns the work\'s result; a function gets an AbortSignal', () => {
    expect(app.drain.track('n', Promise.resolve(42))).type.toBe<Promise<number>>()
    expect(app.drain.track('s', async (signal: AbortSignal) => signal.aborted)).type.toBe<Promise<boolean>>()
    expect(app.drain.track('x', 42)).type.toRaiseError()
  })

  test('drainOnCrash, liveness checks and the other new options', () => {
    expect({ drainOnCrash: true }).type.toBeAssignableTo<GracefulDrainOptions>()
    expect({ drainOnCrash: { timeout: 3000 } }).type.toBeAssignableTo<GracefulDrainOptions>()
    expect({ liveness: { checks: { db: async () => true }, maxEventLoopDelay: 1000 } }).type.toBeAssignableTo<GracefulDrainOptions>()
    expect({ stallTimeout: 2000, loadBalancerIdleTimeout: 60_000, takeOverCloseWithGrace: true }).type.toBeAssignableTo<GracefulDrainOptions>()
    expect({ drainOnCrash: 'yes' }).type.not.toBeAssignableTo<GracefulDrainOptions>()
  })

  test('the report\'s background work and crash', () => {
    expect<DrainReport['background']>().type.toBe<{ total: number, settled: number, abandoned: string[] } | undefined>()
    expect<DrainReport['crash']>().type.toBe<{ error: string, origin: string } | undefined>()
  })
})

describe('DrainReport', () => {
  test('the figures the README documents', () => {
    const report = {} as DrainReport
    expect(report.reason).type.toBe<string>()
    expect(report.signal).type.toBe<NodeJS.Signals | undefined>()
    expect(report.exitCode).type.toBe<number>()
    expect(report.forced).type.toBe<boolean>()
    expect(report.phases.draining).type.toBe<number>()
    expect(report.phases.closed).type.toBe<number | undefined>()
    expect(report.requests.cut).type.toBe<string[]>()
    expect(report.requests.servedDuringDrain).type.toBe<number>()
    expect(report.connections.destroyed).type.toBe<number>()
    expect(report.closers).type.toBe<CloserOutcome[]>()
    expect<CloserOutcome['outcome']>().type.toBe<'ok' | 'error' | 'timeout' | 'skipped'>()
  })
})

describe('GracefulDrainOptions', () => {
  test('every option is optional', () => {
    expect<{}>().type.toBeAssignableTo<GracefulDrainOptions>()
    expect(resolveOptions).type.toBeCallableWith()
    expect(resolveOptions).type.toBeCallableWith({})
  })

  test('accepts the documented shapes', () => {
    expect(resolveOptions).type.toBeCallableWith({
      gracePeriod: 30_000,
      drainDelay: 0,
      quietPeriod: 0,
      maxDrainDelay: 10_000,
      exitMargin: 1_000,
      closeTimeout: 5_000,
      signals: ['SIGTERM', 'SIGINT'],
      readiness: { path: '/ready', checks: { db: async () => true, cache: () => false }, checkTimeout: 500, checkCacheTtl: 0 },
      liveness: { path: '/alive' },
      healthPort: 9000,
      healthHost: '0.0.0.0',
      preStop: { path: '/prestop', token: 'a-long-enough-secret-token' },
      probeLogLevel: 'info',
      exit: false
    })
    expect(resolveOptions).type.toBeCallableWith({ readiness: false, liveness: false, preStop: true, exit: true })
    expect(resolveOptions).type.toBeCallableWith({ exit: (code: number, report: DrainReport) => {} })
    expect(resolveOptions).type.toBeCallableWith({ exit: async () => {} })
  })

  test('accepts read-only signal lists, such as defaults.signals or an `as const` array', () => {
    expect(resolveOptions).type.toBeCallableWith({ signals: defaults.signals })
    expect(resolveOptions).type.toBeCallableWith({ signals: ['SIGTERM'] as const })
  })

  test('rejects wrong types', () => {
    expect(resolveOptions).type.not.toBeCallableWith({ gracePeriod: '30000' })
    expect(resolveOptions).type.not.toBeCallableWith({ drainDelay: '5s' })
    expect(resolveOptions).type.not.toBeCallableWith({ quietPeriod: null })
    expect(resolveOptions).type.not.toBeCallableWith({ exitMargin: true })
    expect(resolveOptions).type.not.toBeCallableWith({ closeTimeout: [5000] })
    expect(resolveOptions).type.not.toBeCallableWith({ signals: 'SIGTERM' })
    expect(resolveOptions).type.not.toBeCallableWith({ signals: ['SIGFOO'] })
    expect(resolveOptions).type.not.toBeCallableWith({ readiness: true })
    expect(resolveOptions).type.not.toBeCallableWith({ readiness: { checks: { db: 'SELECT 1' } } })
    expect(resolveOptions).type.not.toBeCallableWith({ liveness: '/livez' })
    expect(resolveOptions).type.not.toBeCallableWith({ healthPort: '9000' })
    expect(resolveOptions).type.not.toBeCallableWith({ preStop: '/prestop' })
    expect(resolveOptions).type.not.toBeCallableWith({ exit: 1 })
    expect(resolveOptions).type.not.toBeCallableWith({ exit: (code: string) => {} })
  })

  test('rejects unknown option names', () => {
    expect(resolveOptions).type.not.toBeCallableWith({ drainDelays: 5000 })
    expect(resolveOptions).type.not.toBeCallableWith({ gracePeriodSeconds: 30 })
    expect(resolveOptions).type.not.toBeCallableWith({ readiness: { url: '/readyz' } })
  })

  test('resolveOptions() returns the frozen, filled-in options', () => {
    const resolved = resolveOptions()
    expect(resolved).type.toBe<ResolvedOptions>()
    expect(resolved.drainDelay).type.toBe<number>()
    expect(resolved.signals).type.toBe<readonly NodeJS.Signals[]>()
    expect(() => { resolved.drainDelay = 0 }).type.toRaiseError(2540)
  })
})

describe('registration with Fastify', () => {
  test('the default and the named export are the same plugin', () => {
    // The plugin, carrying the CommonJS shape's properties (require() returns it with every runtime export).
    expect(gracefulDrain).type.toBeAssignableTo<FastifyPluginAsync<GracefulDrainOptions>>()
    expect(gracefulDrain.default).type.toBe<FastifyPluginAsync<GracefulDrainOptions>>()
    expect(gracefulDrain.resolveOptions).type.toBe(resolveOptions)
    expect(named).type.toBe(gracefulDrain)
  })

  test('registers with or without options', () => {
    expect(app.register).type.toBeCallableWith(gracefulDrain)
    expect(app.register).type.toBeCallableWith(gracefulDrain, { gracePeriod: 30_000, drainDelay: 5_000 })
    expect(app.register).type.toBeCallableWith(named, { exit: false, signals: [] })
  })

  test('register() checks the options against GracefulDrainOptions', () => {
    expect(app.register).type.not.toBeCallableWith(gracefulDrain, { drainDelay: '5000' })
    expect(app.register).type.not.toBeCallableWith(gracefulDrain, { signals: ['SIGFOO'] })
  })

  test('the group option: a name, or { name, member }', () => {
    expect(resolveOptions).type.toBeCallableWith({ group: 'web' })
    expect(resolveOptions).type.toBeCallableWith({ group: { name: 'web', member: 'admin' } })
    expect(resolveOptions).type.toBeCallableWith({ group: { name: 'web' } })
    expect(resolveOptions).type.not.toBeCallableWith({ group: 42 })
    expect(resolveOptions).type.not.toBeCallableWith({ group: { member: 'admin' } })
    expect(resolveOptions).type.not.toBeCallableWith({ group: { name: 'web', members: 'admin' } })
    expect(resolveOptions().group).type.toBe<Readonly<{ name: string, member: string | undefined }> | undefined>()
  })

  test('fastify.drain.group and the combined report', () => {
    expect(app.drain.group).type.toBe<DrainGroupInfo | undefined>()
    expect(() => { app.drain.group = undefined }).type.toRaiseError(2540)
    const info = {} as DrainGroupInfo
    expect(info.member).type.toBe<string>()
    expect(info.members).type.toBe<readonly string[]>()
    expect(info.report).type.toBe<DrainGroupReport | undefined>()
    const report = {} as DrainGroupReport
    expect(report.exitCode).type.toBe<number>()
    expect(report.apps.admin?.closers).type.toBe<CloserOutcome[] | undefined>()
    expect(report.apps.admin?.addresses).type.toBe<string[] | undefined>()
  })

  test('in a group, the exit function also receives the combined report', async () => {
    await app.register(gracefulDrain, {
      group: 'web',
      exit: (code, report, group) => {
        expect(report).type.toBe<DrainReport>()
        expect(group).type.toBe<DrainGroupReport | undefined>()
      }
    })
  })

  test('the exit function receives the code and the report', async () => {
    await app.register(gracefulDrain, {
      exit: (code, report) => {
        expect(code).type.toBe<number>()
        expect(report).type.toBe<DrainReport>()
      }
    })
  })
})
