// Self-test of the HAProxy + load-generator helpers against plain node:http
// servers (no plugin involved): steady load through HAProxy fails nothing, and
// a slot in maintenance gets no new traffic while the other keeps serving.

import t from 'tap'
import type { Test } from 'tap'
import { createServer } from 'node:http'
import type { Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { requireHaproxy, startHaproxy } from '../scripts/support/haproxy.js'
import type { LbMode } from '../scripts/support/haproxy.js'
import { startLoad } from '../scripts/support/load.js'
import type { LoadResult } from '../scripts/support/load.js'

interface Backend { server: Server, port: number, hits: () => number }

async function startBackend (): Promise<Backend> {
  let hits = 0
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x')
    if (url.pathname === '/readyz') {
      res.end('ok')
      return
    }
    hits++
    if (url.pathname === '/slow') {
      const ms = Math.min(Number(url.searchParams.get('ms') ?? 0), 5000)
      setTimeout(() => res.end('slow'), ms)
      return
    }
    res.end('fast')
  })
  // longer than any test: a keep-alive race with HAProxy/undici is not what this tests
  server.keepAliveTimeout = 60_000
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { server, port: (server.address() as AddressInfo).port, hits: () => hits }
}

async function stopBackend (b: Backend): Promise<void> {
  await new Promise<void>((resolve) => {
    b.server.close(() => resolve())
    b.server.closeAllConnections()
  })
}

function noFailures (t: Test, r: LoadResult, what: string): void {
  t.equal(r.failed, 0, `${what}: no failed requests`, { failures: r.failures, samples: r.samples })
  t.equal(r.ok, r.sent, `${what}: every request answered 200`)
}

if (requireHaproxy(t)) {
  for (const mode of ['tcp', 'http'] as LbMode[]) {
    t.test(`${mode} mode: steady load, then slot 1 in maintenance`, async (t) => {
      const a = await startBackend()
      const b = await startBackend()
      t.teardown(() => stopBackend(a))
      t.teardown(() => stopBackend(b))
      const hap = await startHaproxy({
        mode,
        slots: 2,
        healthCheck: { path: '/readyz', interMs: 500, fall: 2, rise: 2 }
      })
      t.teardown(() => hap.stop())

      await hap.setServer(1, a.port)
      await hap.setServer(2, b.port)
      const states = await hap.state()
      t.same(states.map((s) => [s.slot, s.port, s.routable]), [[1, a.port, true], [2, b.port, true]], 'both slots routable')

      const origin = `http://127.0.0.1:${hap.port}`
      const r1 = await startLoad({ origin, rate: 100, durationMs: 2000, slowMs: [100, 600] }).done
      t.equal(r1.sent, 200, 'open loop sent rate * duration requests')
      noFailures(t, r1, 'both slots')
      t.ok(a.hits() > 0 && b.hits() > 0, `roundrobin used both backends (${a.hits()}/${b.hits()})`)

      await hap.maint(1)
      const aBefore = a.hits()
      const bBefore = b.hits()
      // a new pool = new client connections; in tcp mode connections that were
      // already established to slot 1 would legitimately stay there
      const r2 = await startLoad({ origin, rate: 100, durationMs: 1500, slowMs: [100, 600] }).done
      noFailures(t, r2, 'slot 1 in maintenance')
      t.equal(a.hits() - aBefore, 0, 'no new traffic to the slot in maintenance')
      t.equal(b.hits() - bBefore, r2.sent, 'all traffic went to slot 2')
      t.ok(r2.latency.max >= 100 && r2.latency.p50 < 100, `latency looks sane ${JSON.stringify(r2.latency)}`)
    })
  }

  t.test('without health checks, stop() is idempotent and kills the process', async (t) => {
    const a = await startBackend()
    t.teardown(() => stopBackend(a))
    const hap = await startHaproxy({ mode: 'http', slots: 1, healthCheck: false })
    t.notMatch(hap.config, /httpchk/, 'no health check configured')
    await hap.setServer(1, a.port)
    const r = await startLoad({ origin: `http://127.0.0.1:${hap.port}`, rate: 200, durationMs: 10_000, maxRequests: 20, slowFraction: 0 }).done
    t.equal(r.sent, 20, 'maxRequests bounds the run')
    noFailures(t, r, 'single slot')

    await hap.maint(1)
    const down = await startLoad({ origin: `http://127.0.0.1:${hap.port}`, rate: 100, durationMs: 1000, maxRequests: 5 }).done
    t.same(down.failures, { 'status 503': 5 }, 'failures are reported, classified by kind')

    await hap.stop()
    await hap.stop()
    t.throws(() => process.kill(hap.pid, 0), { code: 'ESRCH' }, 'haproxy process is gone')
  })
}
