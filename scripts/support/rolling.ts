// A rolling deployment replayed through a real load balancer — HAProxy (the
// default) or nginx (scripts/support/nginx.ts) — shared by test/rolling.test.ts
// and test/rolling-nginx.test.ts (the proofs, in CI) and bench/rolling.ts (the
// same scenarios for the peers).
//
// What Kubernetes does when it replaces a pod, step by step:
//   1. the new pod starts and becomes ready: the load balancer routes to it;
//   2. the old pod gets SIGTERM and, in parallel, the endpoints controller
//      removes it: `maintAfterMs` later the load balancer stops routing to it
//      (HAProxy: `maint` on its slot; nginx: a reload without it), because
//      kube-proxy and ingress controllers learn of the removal asynchronously;
//   3. HAProxy's own health checks on /readyz may notice first;
//   4. the kubelet sends SIGKILL `gracePeriod` after SIGTERM if the pod is
//      still there.
// Load runs through all of it; every failed request is counted.

import { setTimeout as sleep } from 'node:timers/promises'
import { startHaproxy } from './haproxy.js'
import type { HealthCheckOptions, LbMode } from './haproxy.js'
import { startLoad } from './load.js'
import type { LoadOptions, LoadResult } from './load.js'

/** One running server process: what the scenario needs from it. */
export interface Instance {
  port: number
  kill: (signal: NodeJS.Signals) => void
  /** Resolves when the process is gone; `ms` since the first kill(). */
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null, ms: number }>
}

/**
 * A load balancer in front of the instances, as the scenario drives it. `R`
 * is what it reports after the load (e.g. nginx's verdict on each failure).
 */
export interface Balancer<R = undefined> {
  /** where the load is sent, e.g. 'http://127.0.0.1:12345' */
  origin: string
  /** what the load must do for this balancer (tell its own error pages apart, send request ids) */
  load?: Pick<LoadOptions, 'classifyResponse' | 'requestIdHeader'>
  /** route to 127.0.0.1:port; resolves once the balancer does */
  add: (port: number) => Promise<void>
  /** the endpoint removal: no new traffic to port; resolves once applied */
  remove: (port: number) => Promise<void>
  /** after the load, before stop(): what the balancer saw; `loadStartedAt` is the load's performance.now() origin */
  report?: (load: LoadResult, loadStartedAt: number) => Promise<R>
  stop: () => Promise<void>
}

export interface RollingOptions<R = undefined> {
  /** HAProxy's mode, when `balancer` is not given */
  mode?: LbMode
  /** requests per second */
  rate: number
  /** starts one instance of the app (a fresh process each time) */
  start: () => Promise<Instance>
  /** SIGTERM → endpoint removal (HAProxy `maint`, nginx reload), ms */
  maintAfterMs: number
  /** HAProxy's health checks on the readiness path, when `balancer` is not given */
  healthCheck?: HealthCheckOptions
  /** starts the load balancer; default HAProxy in `mode` with `healthCheck` */
  balancer?: () => Promise<Balancer<R>>
  /** SIGTERM → SIGKILL, like terminationGracePeriodSeconds */
  gracePeriod: number
  /** successive rollovers (A→B, B→C, ...); default 2 */
  rollovers?: number
  /** load before the first rollover and after the last one, ms; default 1000 */
  settleMs?: number
  /** keep-alive connections of the load pool; default 128 (DEFAULT_CONNECTIONS) */
  connections?: number
  /** called at each step with ms since the load started, to line failures up with the steps */
  onStep?: (step: string, atMs: number) => void
}

export interface OldInstanceExit {
  code: number | null
  signal: NodeJS.Signals | null
  /** SIGTERM → exit, ms */
  ms: number
  /** the scenario had to SIGKILL it at `gracePeriod` */
  killed: boolean
}

export interface RollingResult<R = undefined> {
  load: LoadResult
  exits: OldInstanceExit[]
  /** the balancer's report, when it makes one */
  balancer?: R
}

/**
 * Keep-alive connections of the load, enough that the client is never the
 * bottleneck. Each carries one request at a time, and at 500 req/s the slow
 * tenth alone (50/s × 1.1 s mean) keeps about 55 busy: with 32 the pool's
 * queue grew for as long as the load ran (p50 4.1 s, and the odd request sent
 * 11.7 s in timed out after 10 s, against a single app with no load balancer
 * and no drain). 128 leaves the pool's queue empty (max latency = the
 * slowest request, 2 s).
 */
const DEFAULT_CONNECTIONS = 128

/** Upper bound on the load's duration: it is stopped explicitly well before. */
const LOAD_CAP_MS = 180_000

/** HAProxy with two slots that take turns: the new instance gets the free one, the removal puts the old one's in `maint`. */
export async function haproxyBalancer (mode: LbMode, healthCheck: HealthCheckOptions): Promise<Balancer> {
  const hap = await startHaproxy({ mode, slots: 2, healthCheck })
  const slotOf = new Map<number, number>() // port → slot
  return {
    origin: `http://127.0.0.1:${hap.port}`,
    load: { classifyResponse: haproxyOwn503 },
    async add (port) {
      const used = new Set(slotOf.values())
      const slot = [1, 2].find(s => !used.has(s))
      if (slot === undefined) throw new Error('haproxy: both slots are in use')
      await hap.setServer(slot, port)
      slotOf.set(port, slot)
    },
    async remove (port) {
      const slot = slotOf.get(port)
      if (slot === undefined) throw new Error(`haproxy: no slot routes to port ${port}`)
      await hap.maint(slot)
      slotOf.delete(port)
    },
    stop: async () => await hap.stop()
  }
}

export async function runRolling<R = undefined> (opts: RollingOptions<R>): Promise<RollingResult<R>> {
  const rollovers = opts.rollovers ?? 2
  const settleMs = opts.settleMs ?? 1000
  const started: Instance[] = []
  const gone = new WeakSet<Instance>()
  const startBalancer = opts.balancer ?? (async () => {
    if (opts.mode === undefined || opts.healthCheck === undefined) throw new Error('runRolling: give either `balancer` or HAProxy\'s `mode` and `healthCheck`')
    // Without `report`, a Balancer<undefined> is a Balancer<R> for any R.
    return await haproxyBalancer(opts.mode, opts.healthCheck) as unknown as Balancer<R>
  })
  const lb = await startBalancer()
  let load: ReturnType<typeof startLoad> | undefined
  let loadStart = 0
  const step = (name: string): void => opts.onStep?.(name, Math.round(performance.now() - loadStart))
  try {
    const launch = async (): Promise<Instance> => {
      const instance = await opts.start()
      started.push(instance)
      instance.exited.then(() => gone.add(instance), () => gone.add(instance))
      return instance
    }
    const name = (i: number): string => String.fromCharCode(65 + i) // A, B, C, ...
    let old = await launch()
    await lb.add(old.port)
    loadStart = performance.now()
    load = startLoad({
      origin: lb.origin,
      rate: opts.rate,
      durationMs: LOAD_CAP_MS,
      connections: opts.connections ?? DEFAULT_CONNECTIONS,
      slowFraction: 0.1,
      slowMs: [200, 2000],
      ...lb.load
    })
    // Scenario time, not a race guard: every keep-alive connection of the pool
    // is open and in use when the first rollover begins.
    await sleep(settleMs)

    const exits: OldInstanceExit[] = []
    for (let i = 0; i < rollovers; i++) {
      const next = await launch()
      await lb.add(next.port)
      step(`${name(i + 1)} ready`)

      old.kill('SIGTERM')
      step(`${name(i)} SIGTERM`)
      let killed = false
      const kubelet = setTimeout(() => { killed = true; old.kill('SIGKILL') }, opts.gracePeriod)
      // The endpoints controller: removal reaches the load balancer this much later.
      const leaving = old
      const removal = sleep(opts.maintAfterMs).then(async () => { await lb.remove(leaving.port); step(`${name(i)} removed`) })
      removal.catch(() => {}) // awaited below; this only keeps a failure from being unhandled meanwhile
      const exit = await old.exited
      clearTimeout(kubelet)
      step(`${name(i)} exited`)
      // A server that exits before its removal still gets removed (as in Kubernetes).
      await removal
      exits.push({ ...exit, killed })
      old = next
    }
    await sleep(settleMs)
    const result = await load.stop()
    return { load: result, exits, balancer: await lb.report?.(result, loadStart) }
  } finally {
    await load?.stop()
    for (const instance of started) {
      if (!gone.has(instance)) {
        instance.kill('SIGKILL')
        await instance.exited.catch(() => {})
      }
    }
    await lb.stop()
  }
}

/**
 * HAProxy's own 503 page, as opposed to a 503 from the app: in http mode, with
 * `retries 0`, HAProxy answers it when it cannot connect to the server it
 * picked (connection refused) or has no server left.
 */
export function haproxyOwn503 (statusCode: number, body: string): string | undefined {
  return statusCode === 503 && body.includes('<h1>503 Service Unavailable</h1>') ? 'status 503 (haproxy)' : undefined
}

/** Failure kinds grouped as the benchmark table shows them. */
export const FAILURE_COLUMNS = ['503', 'refused', 'reset', 'closed', '502', 'timeout', 'other'] as const
export type FailureColumn = typeof FAILURE_COLUMNS[number]

export function failureColumn (kind: string): FailureColumn {
  if (kind === 'status 503') return '503'
  if (kind === 'status 502') return '502'
  // Behind HAProxy a refused backend connection reaches the client as HAProxy's 503 (http) or a closed socket (tcp).
  if (kind === 'ECONNREFUSED' || kind === 'status 503 (haproxy)') return 'refused'
  if (kind === 'ECONNRESET' || kind === 'socket closed (ECONNRESET)') return 'reset'
  if (kind.startsWith('socket closed') || kind === 'EPIPE' || kind === 'UND_ERR_CLOSED') return 'closed'
  if (kind === 'timeout') return 'timeout'
  return 'other'
}
