// A rolling deployment replayed through a real HAProxy, shared by
// test/rolling.test.ts (the proof, in CI) and bench/rolling.ts (the same
// scenario for the peers).
//
// What Kubernetes does when it replaces a pod, step by step:
//   1. the new pod starts and becomes ready: its slot is made routable;
//   2. the old pod gets SIGTERM and, in parallel, the endpoints controller
//      removes it: `maint` on its slot `maintAfterMs` later (kube-proxy and
//      ingress controllers learn of the removal asynchronously);
//   3. the load balancer's own health checks on /readyz may notice first;
//   4. the kubelet sends SIGKILL `gracePeriod` after SIGTERM if the pod is
//      still there.
// Load runs through all of it; every failed request is counted.

import { setTimeout as sleep } from 'node:timers/promises'
import { startHaproxy } from './haproxy.js'
import type { HealthCheckOptions, LbMode } from './haproxy.js'
import { startLoad } from './load.js'
import type { LoadResult } from './load.js'

/** One running server process: what the scenario needs from it. */
export interface Instance {
  port: number
  kill: (signal: NodeJS.Signals) => void
  /** Resolves when the process is gone; `ms` since the first kill(). */
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null, ms: number }>
}

export interface RollingOptions {
  mode: LbMode
  /** requests per second */
  rate: number
  /** starts one instance of the app (a fresh process each time) */
  start: () => Promise<Instance>
  /** SIGTERM → endpoint removal (`maint`), ms */
  maintAfterMs: number
  /** HAProxy's health checks on the readiness path */
  healthCheck: HealthCheckOptions
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

export interface RollingResult {
  load: LoadResult
  exits: OldInstanceExit[]
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

export async function runRolling (opts: RollingOptions): Promise<RollingResult> {
  const rollovers = opts.rollovers ?? 2
  const settleMs = opts.settleMs ?? 1000
  const started: Instance[] = []
  const gone = new WeakSet<Instance>()
  const hap = await startHaproxy({ mode: opts.mode, slots: 2, healthCheck: opts.healthCheck })
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
    let old = await launch()
    let oldSlot = 1
    await hap.setServer(oldSlot, old.port)
    loadStart = performance.now()
    load = startLoad({
      origin: `http://127.0.0.1:${hap.port}`,
      rate: opts.rate,
      durationMs: LOAD_CAP_MS,
      connections: opts.connections ?? DEFAULT_CONNECTIONS,
      slowFraction: 0.1,
      slowMs: [200, 2000],
      classifyResponse: haproxyOwn503
    })
    // Scenario time, not a race guard: every keep-alive connection of the pool
    // is open and in use when the first rollover begins.
    await sleep(settleMs)

    const exits: OldInstanceExit[] = []
    for (let i = 0; i < rollovers; i++) {
      const next = await launch()
      const nextSlot = oldSlot === 1 ? 2 : 1
      await hap.setServer(nextSlot, next.port)
      step(`s${nextSlot} ready`)

      old.kill('SIGTERM')
      step(`s${oldSlot} SIGTERM`)
      let killed = false
      const kubelet = setTimeout(() => { killed = true; old.kill('SIGKILL') }, opts.gracePeriod)
      // The endpoints controller: removal reaches the load balancer this much later.
      const removal = sleep(opts.maintAfterMs).then(async () => { await hap.maint(oldSlot); step(`s${oldSlot} maint`) })
      removal.catch(() => {}) // awaited below; this only keeps a failure from being unhandled meanwhile
      const exit = await old.exited
      clearTimeout(kubelet)
      step(`s${oldSlot} exited`)
      // A server that exits before its removal still gets removed (as in Kubernetes).
      await removal
      exits.push({ ...exit, killed })
      old = next
      oldSlot = nextSlot
    }
    await sleep(settleMs)
    return { load: await load.stop(), exits }
  } finally {
    await load?.stop()
    for (const instance of started) {
      if (!gone.has(instance)) {
        instance.kill('SIGKILL')
        await instance.exited.catch(() => {})
      }
    }
    await hap.stop()
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
