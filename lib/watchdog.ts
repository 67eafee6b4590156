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
 * As PID 1 of a PID namespace (a container with no init) the kernel ignores
 * that SIGKILL; the thread then has the main thread's inspector run
 * `process.reallyExit(137)`, which it does between two steps of a JavaScript
 * loop but not inside a blocked system call (kubernetes/platform.ts warns).
 *
 * The thread is started ahead of the signal, when the app starts listening
 * (standbyWatchdog(), only when the drain is to end the process), and waits
 * idle for a deadline. Booting a worker is a whole Node environment, 60–80 ms
 * of CPU on a small VM: started at the signal, it was paid for by the drain
 * (on a pod's one core, 90 ms more from SIGTERM to exit with 10,000 idle
 * connections), and again at exit by a drain shorter than the boot, since
 * process.exit() waits for the thread. Started at listen, at normal priority,
 * it is paid once at startup and an idle thread ends within a few ms at exit
 * (booted at nice 19 to spare the drain, its end at exit was starved: 17 ms
 * more at 1,000 connections). The price is one idle thread, about 10 MB of
 * RSS. It is unref'd, so it never keeps the process alive by itself.
 */
export interface Watchdog {
  /** Stops the watchdog: the drain ended without exiting the process (`exit: false` or a function). */
  disarm (): void
}

// Plain JavaScript, evaluated in the worker: the package ships no second entry point for it.
// It waits for its deadline, then for that time; 'disarm' ends it.
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads')
const { writeSync } = require('node:fs')
parentPort.on('message', message => {
  if (message === 'disarm') return process.exit(0)
  // An absolute time, not a delay: the message's own trip must not push it back.
  setTimeout(() => {
    // One line on stderr, written without blocking: its reader may be as stuck as stdout's.
    try { writeSync(2, message.line + '\\n') } catch {}
    process.kill(process.pid, 'SIGKILL')
    // Still here: PID 1 of a PID namespace, whose own SIGKILL the kernel ignores. The main
    // thread's inspector runs a message between two JavaScript steps of a loop (not during
    // a blocked system call): end the process from there, skipping the 'exit' listeners.
    try {
      const session = new (require('node:inspector').Session)()
      session.connectToMainThread()
      session.post('Runtime.evaluate', { expression: 'process.reallyExit(137)' })
    } catch {}
  }, Math.max(0, message.at - (performance.timeOrigin + performance.now())))
})
`

/** A started watchdog thread, waiting for its deadline. */
interface Thread { worker: Worker | undefined }

/** The thread started ahead of the signal, shared by every app of the process that holds it. */
let standby: Thread | undefined
let holders = 0

/**
 * Starts the watchdog thread now, for a drain to arm later (armExitWatchdog).
 * Returns the release: the last holder to release it (an app closing without a
 * drain) ends the thread, unless a drain has taken it.
 */
export function standbyWatchdog (): () => void {
  holders++
  standby ??= startThread()
  let released = false
  return () => {
    if (released) return
    released = true
    if (--holders > 0 || standby === undefined) return
    end(standby)
    standby = undefined
  }
}

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

/**
 * Arms the watchdog to end the process `delayMs` from now, on the standby
 * thread if there is one (it is taken: one deadline per thread), else on a new
 * one. `line` is the JSON log line it writes to stderr first (best effort:
 * that pipe may be full too).
 */
export function armWatchdog (delayMs: number, line: string): Watchdog {
  const thread = standby ?? startThread()
  standby = undefined
  thread.worker?.postMessage({ at: performance.timeOrigin + performance.now() + Math.max(0, delayMs), line })
  return { disarm: () => end(thread) }
}

function end (thread: Thread): void {
  // A message, not terminate(): the thread exits at once if it is idle, and a terminate()
  // racing its boot is what process.exit() would then have to wait for.
  thread.worker?.postMessage('disarm')
  thread.worker = undefined
}

function startThread (): Thread {
  try {
    const worker = new Worker(WORKER_SOURCE, { eval: true, stdout: false, stderr: false })
    worker.unref()
    // A worker that cannot run (no threads left, a sandbox) must not crash the drain: the main-thread guards remain.
    worker.on('error', () => {})
    return { worker }
  } catch {
    return { worker: undefined }
  }
}
