// Compiled with exactOptionalPropertyTypes (this folder's tsconfig.json): apps
// that enable it pass options they hold as `T | undefined` (from config or the
// environment) without a cast, as they can to Fastify's own options.
import { expect, test } from 'tstyche'
import Fastify from 'fastify'
import gracefulDrain from 'fastify-graceful-drain'
import type { GracefulDrainOptions } from 'fastify-graceful-drain'

const fromEnv = (name: string): number | undefined => process.env[name] === undefined ? undefined : Number(process.env[name])

test('every optional option accepts undefined', () => {
  const options: GracefulDrainOptions = {
    gracePeriod: fromEnv('GRACE_PERIOD'),
    drainDelay: fromEnv('DRAIN_DELAY'),
    quietPeriod: undefined,
    quietPeriodIgnore: undefined,
    maxDrainDelay: undefined,
    exitMargin: undefined,
    closeTimeout: undefined,
    signals: undefined,
    readiness: { path: undefined, checks: undefined, checkTimeout: undefined, checkCacheTtl: undefined },
    liveness: { path: undefined, checks: undefined, maxEventLoopDelay: fromEnv('MAX_EVENT_LOOP_DELAY') },
    healthPort: fromEnv('HEALTH_PORT'),
    healthHost: undefined,
    preStop: { path: undefined, token: process.env.PRESTOP_TOKEN },
    probeLogLevel: undefined,
    exit: undefined,
    metrics: { registry: undefined, prefix: undefined },
    stallTimeout: undefined,
    loadBalancerIdleTimeout: fromEnv('LB_IDLE_TIMEOUT'),
    takeOverCloseWithGrace: undefined,
    drainOnCrash: { timeout: undefined }
  }
  expect(Fastify().register(gracefulDrain, options)).type.not.toRaiseError()
})

test('a misspelled option is still a type error', () => {
  expect(Fastify().register(gracefulDrain, { drainDelays: 1000 })).type.toRaiseError()
})
