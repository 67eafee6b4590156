// Longer than 150 lines: finding close-with-grace's listener among the process's, and putting it
// back exactly as it was when the app closes without a drain, are one job with one set of traps.
/**
 * Taking SIGTERM and SIGINT over from close-with-grace, which `fastify start`
 * (fastify-cli) and the server.js of `fastify eject` install around the app.
 *
 * close-with-grace listens with `process.once(signal, onSignal)` on SIGTERM,
 * SIGINT and (since 2.1) nine more signals. At the first signal it calls the
 * app's close callback — `fastify.close()` in fastify-cli — at once, and exits
 * 1 when that has not finished within its delay (fastify-cli: 500 ms, `-g` /
 * `FASTIFY_CLOSE_GRACE_DELAY`). That cuts the drain: the listener closes before
 * load balancers have noticed, keep-alive requests get Fastify's 503, and the
 * in-flight requests die with the process. No delay fixes it, because the
 * close itself comes too early.
 *
 * fastify-cli installs close-with-grace after the app's plugins have loaded and
 * before `ready()`/`listen()` (start.js: register, then closeWithGrace, then
 * listen), so the takeover runs in an `onReady` hook: by then the listeners
 * exist, whichever way the app was started.
 *
 * What is removed, and only that: close-with-grace's signal handler on the
 * signals the plugin handles itself. It is recognised by what close-with-grace
 * defines (every release from 1.0 to 2.5 alike): a listener added with
 * `process.once`, a function named `onSignal` whose whole body is
 * `run({ signal })`. Anything else on those signals stays, and a signal is
 * never left without a listener (Node's default action would kill the process
 * outright). close-with-grace keeps every other job: its other signals,
 * `uncaughtException` and `unhandledRejection` (a crash still closes the app
 * and exits 1), `beforeExit`, and its `uninstall()` (removing a listener that is
 * already gone does nothing).
 */
import type { FastifyBaseLogger } from 'fastify'

type Listener = (...args: any[]) => void

/** What the takeover needs of `process`; any EventEmitter will do in tests. */
export type SignalEmitter = Pick<NodeJS.EventEmitter, 'rawListeners' | 'listeners' | 'listenerCount' | 'removeListener' | 'once'>

export interface TakeOverSignalsOptions {
  /** The signals the plugin handles itself (its `signals` option): close-with-grace is removed from these only. */
  readonly signals: readonly NodeJS.Signals[]
  /** Says what was taken over (info), or that nothing was found (debug). */
  readonly log?: Pick<FastifyBaseLogger, 'info' | 'warn' | 'debug'> | undefined
  /** @default process */
  readonly emitter?: SignalEmitter | undefined
}

export interface TakenOverListener {
  readonly signal: NodeJS.Signals
  /** close-with-grace's `onSignal`, as it was passed to `process.once`. */
  readonly listener: Listener
}

export interface SignalTakeover {
  /** close-with-grace's listeners removed, one entry per signal and listener. */
  readonly removed: readonly TakenOverListener[]
  /** Signals on which close-with-grace's listener was left because nothing else listens there. */
  readonly kept: readonly NodeJS.Signals[]
  /**
   * Puts the removed listeners back (with `once`, as close-with-grace added
   * them), for when the plugin stops handling the signals without a drain
   * (the app closed on its own). Only listeners whose close-with-grace is still
   * armed — the same handler still listens on another of its signals — come
   * back: one whose close-with-grace has run or was uninstalled (fastify-cli
   * does so in an onClose hook) would close the app a second time. Idempotent.
   */
  restore (): void
}

/** The whole of close-with-grace's `onSignal`, whitespace and an optional semicolon aside. */
const ON_SIGNAL_SOURCE = /^function onSignal\s*\(\s*signal\s*\)\s*\{\s*run\(\s*\{\s*signal\s*\}\s*\);?\s*\}$/

/**
 * Whether `raw` (an entry of `process.rawListeners(signal)`) is the signal
 * handler of close-with-grace: added with `once` (so the raw entry is Node's
 * wrapper, which carries the original as `.listener`), named `onSignal`,
 * its source exactly close-with-grace's.
 */
export function isCloseWithGraceSignalListener (raw: unknown): raw is Listener & { listener: Listener } {
  if (typeof raw !== 'function') return false
  const listener = (raw as { listener?: unknown }).listener
  if (typeof listener !== 'function' || listener === raw || listener.name !== 'onSignal') return false
  let source: string
  try {
    source = Function.prototype.toString.call(listener)
  } catch {
    return false
  }
  return ON_SIGNAL_SOURCE.test(source.trim())
}

/**
 * Every signal close-with-grace has ever listened on (2.1+; 1.x and 2.0: SIGTERM
 * and SIGINT). Used only to tell whether a removed handler's close-with-grace
 * is still armed, and to say in the log what it still handles.
 */
const CLOSE_WITH_GRACE_SIGNALS: readonly NodeJS.Signals[] = [
  'SIGHUP', 'SIGINT', 'SIGQUIT', 'SIGILL', 'SIGTRAP', 'SIGABRT', 'SIGBUS', 'SIGFPE', 'SIGSEGV', 'SIGUSR2', 'SIGTERM'
]

function signalsListenedBy (emitter: SignalEmitter, listener: Listener): NodeJS.Signals[] {
  return CLOSE_WITH_GRACE_SIGNALS.filter(signal => emitter.listeners(signal).includes(listener))
}

/**
 * Removes close-with-grace's listener from each of `signals`, so that the
 * plugin's own listener is the one that decides what the signal means: the
 * drain, then `fastify.close()` (which runs fastify-cli's onClose hook, where
 * it uninstalls the rest of close-with-grace), then the exit with the drain's
 * code; and a second signal exits at once with 128 + its number. Call it once
 * close-with-grace is installed (an `onReady` hook); calling it again only
 * removes what has been added since.
 */
export function takeOverSignals (options: TakeOverSignalsOptions): SignalTakeover {
  const emitter = options.emitter ?? process
  const log = options.log
  const removed: TakenOverListener[] = []
  const kept: NodeJS.Signals[] = []

  for (const signal of new Set(options.signals)) {
    const raws = emitter.rawListeners(signal)
    const ours = raws.filter(isCloseWithGraceSignalListener)
    if (ours.length === 0) continue
    // Without any other listener, Node's default action would end the process at the signal: worse than close-with-grace.
    if (raws.length - ours.length === 0) {
      kept.push(signal)
      continue
    }
    for (const raw of ours) {
      emitter.removeListener(signal, raw.listener)
      removed.push({ signal, listener: raw.listener })
    }
  }

  if (removed.length > 0) {
    const listeners = [...new Set(removed.map(entry => entry.listener))]
    const stillHandled = [...new Set(listeners.flatMap(listener => signalsListenedBy(emitter, listener)))]
    log?.info({ signals: [...new Set(removed.map(entry => entry.signal))], closeWithGraceStillHandles: stillHandled },
      'took the signals over from close-with-grace (fastify-cli): the drain handles them; close-with-grace still handles ' +
      'its other signals, uncaught exceptions and unhandled rejections')
  }
  if (kept.length > 0) {
    log?.warn({ signals: kept }, 'close-with-grace is the only listener for these signals, so it was left in place: it will ' +
      'close the app at once and exit after its delay')
  }
  if (removed.length === 0 && kept.length === 0) {
    log?.debug({ signals: options.signals }, 'no close-with-grace signal listener to take over')
  }

  let restored = false
  return {
    removed,
    kept,
    restore () {
      if (restored) return
      restored = true
      for (const { signal, listener } of removed) {
        if (emitter.listeners(signal).includes(listener)) continue
        const elsewhere = signalsListenedBy(emitter, listener).filter(other => other !== signal)
        if (elsewhere.length === 0) continue
        emitter.once(signal, listener)
      }
    }
  }
}
