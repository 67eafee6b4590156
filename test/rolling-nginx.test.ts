// The rolling-restart proof behind a second real load balancer: nginx, as an
// ingress controller runs it (scripts/support/nginx.ts). It keeps its own
// keep-alive pool to the pods (`keepalive 32`), has no health checks, and
// learns of every endpoint change by a reload: the new pod is added by one,
// the old one removed by another `maintAfterMs` after its SIGTERM.
//
// Retries are off (`proxy_next_upstream off`), so any failure between nginx
// and the app reaches the client as a 502/504 and fails the test. With
// nginx's default retries a refused or reset request would be re-sent to the
// new pod and hidden; bench/rolling.ts runs both to show what retries hide,
// the test runs only the setting that hides nothing.
//
// Every request carries an id that nginx logs. A failed request that nginx
// never logged, on a connection that closed under it, never reached nginx's
// HTTP layer, let alone the app: a reload closing the old workers' idle client
// keep-alive connections (about 1 reload in 55 at 150 req/s). Those are counted
// and printed as reload artefacts; everything else must be zero.
//
// Which runs are here and which only in the bench: the library defaults at
// 30 s and at `gracePeriod: 10_000` alone, each at 150 and 500 req/s (the
// promise is "zero failures with the defaults", and 500 req/s is where the
// idle-socket race would show); the late load balancer once, at 150 req/s (as
// in test/rolling.test.ts: the quiet period is what is tested, not the rate);
// and the /metrics scrape once, at 30 s, where the cap is furthest from the
// normal exit so that a scrape holding the drain cannot go unnoticed. The
// peers and nginx's default retries are in `npm run bench:rolling` only: they
// are comparisons, not guarantees.

import t from 'tap'
import type { Test } from 'tap'
import { Client } from 'undici'
import { resolveOptions } from 'fastify-graceful-drain'
import type { GracefulDrainOptions } from '../lib/index.js'
import { startChild, killChild } from './helpers/child.js'
import type { RunningChild } from './helpers/child.js'
import { nginxBalancer, requireNginx } from '../scripts/support/nginx.js'
import type { NginxVerdict } from '../scripts/support/nginx.js'
import { runRolling } from '../scripts/support/rolling.js'
import type { Instance, RollingResult } from '../scripts/support/rolling.js'

// Six runs of 20–38 s one after the other (each starts three app processes):
// 2.5–3.5 min measured on a shared 2-core machine; the same guard as test/rolling.test.ts.
t.setTimeout(360_000)

/** The longest request of the load (scripts/support/rolling.ts: 10 % slow, 0.2–2 s). */
const SLOWEST_REQUEST = 2000

interface Scenario {
  name: string
  rate: number
  options: GracefulDrainOptions
  /** SIGTERM → the reload that removes the old instance, ms */
  maintAfterMs: number
  late?: boolean
  /** scrape GET /metrics on each instance directly, this often (ms) */
  scrapeEveryMs?: number
}

const scenarios: Scenario[] = []
// `{}` is the 30 s default; `{ gracePeriod: 10_000 }` alone must work too (the
// other options derived from it), as `docker stop` and many charts use 10 s.
for (const [label, options] of [['defaults (30 s)', {}], ['gracePeriod 10 s alone', { gracePeriod: 10_000 }]] as const) {
  for (const rate of [150, 500]) {
    scenarios.push({ name: `${label}, ${rate} req/s`, rate, options, maintAfterMs: 300 })
  }
}
// The reload that removes the pod comes after drainDelay: only the quiet
// period keeps the listener open until nginx has stopped sending to it.
scenarios.push({
  name: 'late reload (3 s after SIGTERM, drainDelay 1 s, gracePeriod 10 s), 150 req/s',
  rate: 150,
  options: { gracePeriod: 10_000, drainDelay: 1000 },
  maintAfterMs: 3000,
  late: true
})
// Prometheus scrapes the pod, not the Service: the scrape never stops coming,
// whatever nginx does, and must not count as traffic that holds the drain.
scenarios.push({
  name: 'defaults (30 s) with a /metrics scrape every 250 ms, 150 req/s',
  rate: 150,
  options: { metrics: true },
  maintAfterMs: 300,
  scrapeEveryMs: 250
})

interface Scraper {
  /** performance.now() of each scrape answered 200 */
  answered: number[]
  stop: () => Promise<void>
}

/**
 * GET /metrics every `everyMs` on one keep-alive connection, as Prometheus
 * does, until stop() or `maxScrapes`. A refused scrape (the listener closed)
 * is what Prometheus sees of a pod going away, not a failure.
 */
function startScraper (port: number, everyMs: number, maxScrapes: number): Scraper {
  const client = new Client(`http://127.0.0.1:${port}`, { pipelining: 1, headersTimeout: 5000, bodyTimeout: 5000 })
  const answered: number[] = []
  let stopped = false
  let timer: NodeJS.Timeout | undefined
  let running: Promise<void> = Promise.resolve()
  let count = 0
  const tick = (): void => {
    if (stopped || count++ >= maxScrapes) return
    running = (async () => {
      try {
        const res = await client.request({ path: '/metrics', method: 'GET' })
        await res.body.text()
        if (res.statusCode === 200) answered.push(performance.now())
      } catch {}
      if (!stopped) timer = setTimeout(tick, everyMs)
    })()
  }
  tick()
  return {
    answered,
    async stop () {
      stopped = true
      clearTimeout(timer)
      await running
      await client.destroy()
    }
  }
}

function noFailures (t: Test, scenario: Scenario, result: RollingResult<NginxVerdict>, children: RunningChild[]): void {
  const { load } = result
  const verdict = result.balancer
  if (verdict === undefined) throw new Error('nginx made no report')
  const artefacts = verdict.reloadArtefacts
  t.ok(load.sent > 0, `${load.sent} requests sent`)
  t.equal(verdict.failures.length, 0, 'no failed request between nginx and the app, nor of any other kind but a reload artefact', {
    failures: verdict.failures.slice(0, 20), upstreamErrors: verdict.upstreamErrors, queuedMax: load.queuedMax
  })
  t.equal(load.ok + artefacts.length, load.sent, 'every other request answered 200')
  // Not the plugin's to prevent: printed so that they stay visible.
  t.comment(`${scenario.name}: ${artefacts.length} reload artefact(s) in ${verdict.reloads.length} reloads` +
    (artefacts.length === 0 ? '' : `: ${JSON.stringify(artefacts.map(a => ({ kind: a.kind, at: a.at, failedAt: a.failedAt })))}, reloads ${JSON.stringify(verdict.reloads)}`))

  const resolved = resolveOptions(scenario.options)
  t.equal(result.exits.length, 2, 'two rollovers')
  result.exits.forEach((exit, i) => {
    const report = children[i]?.report()
    t.equal(exit.code, 0, `old instance ${i + 1} exited with code 0`, { exit, report })
    t.notOk(exit.killed, `old instance ${i + 1} exited by itself, ${Math.round(exit.ms)} ms after SIGTERM`)
    t.ok(exit.ms < resolved.gracePeriod, `old instance ${i + 1} exited before the kill at ${resolved.gracePeriod} ms`)
    // The plugin's own deadline is gracePeriod − exitMargin, measured from the signal in the process.
    t.ok(report !== undefined && report.durationMs < report.deadlineMs, `old instance ${i + 1} finished before its deadline`, { report })
    t.same(report?.requests?.cut, [], `old instance ${i + 1} cut no request`)
  })
}

if (requireNginx(t)) {
  for (const scenario of scenarios) {
    t.test(scenario.name, async t => {
      const resolved = resolveOptions(scenario.options)
      const children: RunningChild[] = []
      const scrapers: Scraper[] = []
      const sigtermAt: number[] = []
      t.teardown(async () => {
        for (const child of children) killChild(child)
        for (const scraper of scrapers) await scraper.stop()
      })
      const start = async (): Promise<Instance> => {
        const child = await startChild('rolling-app.ts', { FIXTURE: JSON.stringify({ options: scenario.options }) })
        const index = children.push(child) - 1
        if (scenario.scrapeEveryMs !== undefined) {
          // bounded by the grace period: no instance lives longer than that once drained
          const scraper = startScraper(child.port, scenario.scrapeEveryMs, Math.ceil(120_000 / scenario.scrapeEveryMs))
          scrapers[index] = scraper
          child.exited.then(async () => { await scraper.stop() }, () => {})
        }
        return {
          port: child.port,
          exited: child.exited,
          kill (signal) {
            if (signal === 'SIGTERM') sigtermAt[index] ??= performance.now()
            child.kill(signal)
          }
        }
      }
      const result = await runRolling<NginxVerdict>({
        rate: scenario.rate,
        maintAfterMs: scenario.maintAfterMs,
        gracePeriod: resolved.gracePeriod,
        balancer: async () => await nginxBalancer({ retries: false }),
        start
      })
      noFailures(t, scenario, result, children)

      if (scenario.late === true) {
        // Honest only if the quiet period did the work: nginx kept sending
        // after drainDelay, and the listener stayed open past the reload.
        for (const [i, child] of children.slice(0, 2).entries()) {
          const delay = child.report()?.delay
          t.ok(delay?.extendedMs > 0, `old instance ${i + 1}: the quiet period extended the delay`, { delay })
          t.ok(delay?.actualMs > scenario.maintAfterMs, `old instance ${i + 1}: the listener stayed open past the reload at ${scenario.maintAfterMs} ms`, { delay })
        }
      }

      if (scenario.scrapeEveryMs !== undefined) {
        // Without the scrape, the listener closes at drainDelay: nginx stops
        // routing at the reload (maintAfterMs plus ~0.1 s), the slowest request
        // then still in flight ends SLOWEST_REQUEST later, and the quiet period
        // runs out quietPeriod after that — before drainDelay at the defaults.
        // In-flight requests and the exit add at most another SLOWEST_REQUEST
        // and a second of noise. A scrape that counted as traffic would keep
        // the listener open to the cap (maxDrainDelay), so the exit would come
        // after it: the bound must be below the cap for the test to tell.
        const bound = Math.max(resolved.drainDelay, scenario.maintAfterMs + SLOWEST_REQUEST + resolved.quietPeriod) + SLOWEST_REQUEST + 1000
        t.ok(bound < resolved.maxDrainDelay, `the bound (${bound} ms) is below the cap (${resolved.maxDrainDelay} ms)`)
        for (const [i, exit] of result.exits.entries()) {
          const delay = children[i]?.report()?.delay
          const sigterm = sigtermAt[i] ?? Infinity
          const scrapedDuringDrain = scrapers[i]?.answered.filter(at => at > sigterm).length ?? 0
          t.ok(scrapedDuringDrain >= 4, `old instance ${i + 1}: ${scrapedDuringDrain} scrapes answered during the drain`)
          t.ok(exit.ms < bound, `old instance ${i + 1}: SIGTERM→exit ${Math.round(exit.ms)} ms, below ${bound} ms (cap ${resolved.maxDrainDelay} ms)`, { delay })
          t.ok(delay?.actualMs < resolved.maxDrainDelay, `old instance ${i + 1}: the listener closed at ${String(delay?.actualMs)} ms, not held to the cap`, { delay })
        }
      }
    })
  }
}
