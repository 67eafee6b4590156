import { readdirSync } from 'node:fs'
import { setPriority } from 'node:os'
import { Worker } from 'node:worker_threads'

/**
 * The last guard of the deadline, on a thread of its own (docs/design.md, "The budget").
 *
 * Every other timer of the drain runs on the main thread, so a main thread
 * that never comes back — pino's exit-time flush retrying on a log pipe nobody
 * reads, a synchronous loop in a hook or a closer — would keep the process
 * until the kubelet's SIGKILL. A worker's timer still fires then. It ends the
 * process with SIGKILL, because nothing gentler can: `process.exit()` in a
 * worker ends only the worker, and a catchable signal waits for the blocked
 * main thread. The exit status is therefore 137 (128 + SIGKILL), what the
 * kubelet's own kill would have shown, but before the grace period is over.
 *
 * The worker starts at the signal, not at startup, so a healthy process pays
 * nothing for it; it is unref'd, so it never keeps the process alive by itself.
 */
export interface Watchdog {
  /** Stops the watchdog: the drain ended without exiting the process (`exit: false` or a function). */
  disarm (): void
}

// Plain JavaScript, evaluated in the worker: the package ships no second entry point for it.
const WORKER_SOURCE = `
const { workerData } = require('node:worker_threads')
const { writeSync } = require('node:fs')
// An absolute time, not a delay: the worker's own start-up (tens of ms, more on a busy machine) must not push it back.
setTimeout(() => {
  // One line on stderr, written without blocking: its reader may be as stuck as stdout's.
  try { writeSync(2, workerData.line + '\\n') } catch {}
  process.kill(process.pid, 'SIGKILL')
}, Math.max(0, workerData.at - (performance.timeOrigin + performance.now())))
`

/**
 * When the watchdog fires, for a drain (or a drain group) that started at
 * `startedAt` (monotonic): a quarter of the exit margin before `gracePeriod`.
 * A healthy exit is done by then with half the margin to spare (the report at
 * the deadline, gracePeriod − exitMargin, then the logger flush bounded to a
 * quarter of the margin, exit.ts exitFlushTimeout), and the kill still lands
 * before the kubelet's.
 */
export function watchdogAt (startedAt: number, options: { gracePeriod: number, exitMargin: number }): number {
  return startedAt + options.gracePeriod - options.exitMargin / 4
}

/**
 * Arms the watchdog of a drain that ends the process: it fires at `at`
 * (monotonic, see watchdogAt) with one fatal log line naming `who`.
 */
export function armExitWatchdog (at: number, who: Record<string, string>): Watchdog {
  return armWatchdog(at - performance.now(), JSON.stringify({
    level: 60,
    time: Date.now(),
    plugin: 'fastify-graceful-drain',
    ...who,
    msg: 'watchdog: the main thread did not end the process by its deadline (a blocked event loop, a full log pipe): ending it with SIGKILL'
  }))
}

/** This process's threads (Linux: /proc/self/task), or undefined where they cannot be listed. */
function threadIds (): Set<string> | undefined {
  try {
    return new Set(readdirSync('/proc/self/task'))
  } catch {
    return undefined
  }
}

/**
 * Booting a worker is a whole Node environment: 60–80 ms of CPU on a small VM,
 * which on a pod's one core was taken from the drain itself (90 ms more from
 * SIGTERM to exit with 10,000 idle connections and no delay; bench/README.md).
 * The new thread (the one that was not there before `new Worker()`, which
 * starts it synchronously) gets the lowest priority, nice 19: it boots on time
 * when the main thread waits (the drain is mostly waiting) or on another core,
 * and takes a 1.4 % share of a core the drain keeps busy. Its timer then needs
 * microseconds, which even that share gives it within one scheduling period.
 * Linux only; elsewhere the worker runs at normal priority.
 */
function yieldToTheDrain (before: Set<string> | undefined): void {
  if (before === undefined) return
  const started = [...threadIds() ?? []].filter(id => !before.has(id))
  // Exactly one new thread, or none is touched: another thread started at the same moment would be a guess.
  if (started.length !== 1) return
  try {
    setPriority(Number(started[0]), 19)
  } catch {}
}

/**
 * Arms the watchdog to end the process `delayMs` from now. `line` is the JSON
 * log line it writes to stderr first (best effort: that pipe may be full too).
 */
export function armWatchdog (delayMs: number, line: string): Watchdog {
  let worker: Worker | undefined
  try {
    const at = performance.timeOrigin + performance.now() + Math.max(0, delayMs)
    const before = threadIds()
    worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { at, line }, stdout: false, stderr: false })
    yieldToTheDrain(before)
    worker.unref()
    // A worker that cannot run (no threads left, a sandbox) must not crash the drain: the main-thread guards remain.
    worker.on('error', () => {})
  } catch {
    worker = undefined
  }
  return {
    disarm () {
      worker?.terminate().catch(() => {})
      worker = undefined
    }
  }
}
