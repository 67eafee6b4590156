// The product's promise as a test: zero failed requests while pods are
// replaced, through a real HAProxy in both load-balancer models:
//   tcp  — kube-proxy: balanced per connection; an established keep-alive
//          connection stays with the old instance after its removal, so only
//          the plugin's `Connection: close` moves that traffic;
//   http — an ingress controller that reuses its own keep-alive connections
//          to the backends (`http-reuse always`).
// Two rollovers (A→B, B→C) per scenario, under fixed-rate load over 128
// keep-alive connections (enough that requests never queue in the client's
// pool, see scripts/support/rolling.ts), 10 % slow requests (0.2–2 s). Any non-200, reset,
// closed-without-response or timeout fails the test, and every old instance
// must exit by itself with code 0 before the SIGKILL.
//
// Timing rule the scenarios follow (README, "The timing rule"): drainDelay must
// cover both the endpoint propagation (maint 300 ms after SIGTERM) and the
// health checks (inter 500 ms × fall 2 = 1 s); 1.5 s does. The late-LB
// scenario breaks that rule on purpose and relies on the quiet period.

import t from 'tap'
import type { Test } from 'tap'
import { requireHaproxy } from '../scripts/support/haproxy.js'
import type { LbMode } from '../scripts/support/haproxy.js'
import { startChild, killChild } from './helpers/child.js'
import type { RunningChild } from './helpers/child.js'
import { runRolling } from '../scripts/support/rolling.js'
import type { RollingResult } from '../scripts/support/rolling.js'
import type { GracefulDrainOptions } from '../lib/index.js'

// Six scenarios of ~15 s each, one after the other, on a shared 2-core machine.
t.setTimeout(360_000)

const GRACE_PERIOD = 10_000

interface Scenario {
  name: string
  mode: LbMode
  rate: number
  options: GracefulDrainOptions
  maintAfterMs: number
  healthCheck: { path: string, interMs: number, fall: number, rise: number }
  late?: boolean
}

// Only gracePeriod and drainDelay are set: everything else is the library's
// derived default for a 10 s grace period (docker stop, Cloud Run, many charts).
const base = { gracePeriod: GRACE_PERIOD }
const scenarios: Scenario[] = []
for (const mode of ['tcp', 'http'] as LbMode[]) {
  // 500 req/s: keep-alive sockets are busy every few ms, so closing an idle
  // one at the wrong moment (the idle-socket race, docs/design.md, "Connections") would cost a request.
  for (const rate of [150, 500]) {
    scenarios.push({
      name: `${mode} mode, ${rate} req/s`,
      mode,
      rate,
      options: { ...base, drainDelay: 1500 },
      maintAfterMs: 300,
      healthCheck: { path: '/readyz', interMs: 500, fall: 2, rise: 2 }
    })
  }
}
for (const mode of ['tcp', 'http'] as LbMode[]) {
  // The load balancer notices after drainDelay: removal at 3 s, health checks
  // every 2 s (fall 2), drainDelay 1 s. Every fixed-delay drain drops requests here.
  // The default quietPeriod (2 s) is what saves these requests: behind a
  // per-connection balancer the clients have left the old instance after about
  // a second (every response said Connection: close), and it then sees only the
  // odd new connection; with a 1 s quiet period about one rollover in twenty
  // lost a request to a gap between two of them.
  scenarios.push({
    name: `${mode} mode, late load balancer`,
    mode,
    rate: 150,
    // Exactly issue 11's case: gracePeriod 10 s and drainDelay 1 s, nothing else set.
    options: { ...base, drainDelay: 1000 },
    maintAfterMs: 3000,
    healthCheck: { path: '/readyz', interMs: 2000, fall: 2, rise: 2 },
    late: true
  })
}

function noFailures (t: Test, result: RollingResult, children: RunningChild[]): void {
  const { load } = result
  t.ok(load.sent > 0, `${load.sent} requests sent`)
  // queuedMax tells a timeout made by the client's own pool (queue > 0) from one made downstream.
  t.equal(load.failed, 0, 'no failed request of any kind', { failures: load.failures, samples: load.samples, queuedMax: load.queuedMax })
  t.equal(load.ok, load.sent, 'every request answered 200')
  t.equal(result.exits.length, 2, 'two rollovers')
  result.exits.forEach((exit, i) => {
    const report = children[i]?.report()
    t.equal(exit.code, 0, `old instance ${i + 1} exited with code 0`, { exit, report })
    t.notOk(exit.killed, `old instance ${i + 1} exited by itself, ${Math.round(exit.ms)} ms after SIGTERM`)
    // The plugin's promise is its own deadline, gracePeriod − exitMargin: the drain is over by then
    // (measured inside the process, so a busy machine's process teardown does not blur it).
    t.ok(report !== undefined && report.durationMs <= report.deadlineMs,
      `old instance ${i + 1} finished its drain by its deadline (${String(report?.durationMs)} ≤ ${String(report?.deadlineMs)} ms)`)
    t.ok(exit.ms < GRACE_PERIOD, `old instance ${i + 1} was gone before the SIGKILL`)
    t.equal(report?.requests?.cut?.length, 0, `old instance ${i + 1} cut no request`, { report })
  })
}

if (requireHaproxy(t)) {
  for (const scenario of scenarios) {
    t.test(scenario.name, async t => {
      const children: RunningChild[] = []
      t.teardown(() => { for (const child of children) killChild(child) })
      const result = await runRolling({
        mode: scenario.mode,
        rate: scenario.rate,
        maintAfterMs: scenario.maintAfterMs,
        healthCheck: scenario.healthCheck,
        gracePeriod: GRACE_PERIOD,
        start: async () => {
          const child = await startChild('rolling-app.ts', { FIXTURE: JSON.stringify({ options: scenario.options }) })
          children.push(child)
          return child
        }
      })
      noFailures(t, result, children)
      // The warning is due when, and only when, traffic arrived after drainDelay: whether it did
      // depends on how the load fell, so the assertion follows the report, not the scenario.
      for (const [i, child] of children.slice(0, 2).entries()) {
        const delay = child.report()?.delay
        // Either warning: "raise drainDelay" when traffic stopped before the cap, or, when arrivals still looked
        // steady at the cap (a few stragglers can), "traffic never went quiet" naming the routes. Both carry lastArrival.
        const warning = child.logs.find(line => line.level === 40 && /requests kept arriving after drainDelay|traffic never went quiet/.test(line.msg))
        const arrivedLate = delay?.lastArrivalMs !== undefined && delay.lastArrivalMs > delay.plannedMs && delay.extendedMs > 50
        if (arrivedLate) {
          t.ok(warning, `old instance ${i + 1}: traffic arrived ${String(delay?.lastArrivalMs)} ms after SIGTERM, past drainDelay: warned`, { delay })
          t.equal(warning?.lastArrival, delay?.lastArrivalMs, `old instance ${i + 1}: the warning gives the figure`)
          t.ok(delay.actualMs > delay.lastArrivalMs, `old instance ${i + 1}: the listener stayed open past it (${JSON.stringify(delay)})`)
        } else {
          t.notOk(warning, `old instance ${i + 1}: nothing arrived after drainDelay: no warning`, { delay })
        }
      }
      if (scenario.late === true) {
        // Honest only if the quiet period did the work at least once in the two rollovers:
        // the balancer removes the pod 3 s after SIGTERM, long after drainDelay (1 s).
        const extended = children.slice(0, 2).some(child => Number(child.report()?.delay?.extendedMs) > 0)
        t.ok(extended, 'the quiet period extended the delay past drainDelay')
      }
    })
  }
}
