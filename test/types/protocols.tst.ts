// Type tests of what the protocol modules add to the public types:
// request.drainSignal on every request, and the per-kind counts in the report.

import { describe, expect, test } from 'tstyche'
import Fastify from 'fastify'
import type { FastifyRequest } from 'fastify'
import type { DrainReport, LongLivedCounts } from 'fastify-graceful-drain'

describe('request.drainSignal', () => {
  test('is a read-only AbortSignal on every request', () => {
    expect<FastifyRequest['drainSignal']>().type.toBe<AbortSignal>()
    Fastify().get('/', async request => {
      expect(request.drainSignal).type.toBe<AbortSignal>()
      // @ts-expect-error read-only: one signal shared by every request
      request.drainSignal = new AbortController().signal
    })
  })
})

describe('the drain report', () => {
  test('counts HTTP/2 sessions, WebSockets and event streams, each optional', () => {
    expect<DrainReport['http2Sessions']>().type.toBe<LongLivedCounts | undefined>()
    expect<DrainReport['webSockets']>().type.toBe<LongLivedCounts | undefined>()
    expect<DrainReport['eventStreams']>().type.toBe<LongLivedCounts | undefined>()
    expect<LongLivedCounts>().type.toBe<{ total: number, closedGracefully: number, destroyed: number }>()
  })
})
