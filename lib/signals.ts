import { constants } from 'node:os'
import type { FastifyBaseLogger } from 'fastify'
import { SignalsOwnedError } from './errors.js'

/**
 * Signals are process-wide, so ownership is too: the one place this plugin
 * keeps state outside an instance. Symbol.for() makes two copies of the
 * package (say, a hoisted and a nested one) agree on the same owner.
 */
const OWNER = Symbol.for('fastify-graceful-drain.signal-owner')
type ProcessWithOwner = NodeJS.Process & { [OWNER]?: object }

export interface InstalledSignals {
  /** Listeners for these signals that something else (close-with-grace, fastify-cli, the app) installed first. */
  readonly foreign: ReadonlyArray<{ signal: NodeJS.Signals, listeners: number }>
  uninstall (): void
}

/** The exit code for a process ended because of `signal`: 128 + its number, as shells report it. */
export function signalExitCode (signal: NodeJS.Signals): number {
  return 128 + (constants.signals[signal] ?? 0)
}

/**
 * Throws if another instance owns the signals. Called before the plugin sets
 * anything up, so a refused registration leaves nothing behind (server
 * listeners, metrics in a shared registry) that would make the retry the
 * error recommends (`signals: []`) fail in turn.
 */
export function assertSignalsFree (signals: readonly NodeJS.Signals[]): void {
  if (signals.length > 0 && (process as ProcessWithOwner)[OWNER] !== undefined) throw new SignalsOwnedError(signals.join(', '))
}

/**
 * Installs `onSignal` for each signal. The drain decides what a first and a
 * second signal mean; this module only owns the listeners and their removal.
 */
export function installSignals (
  signals: readonly NodeJS.Signals[],
  onSignal: (signal: NodeJS.Signals) => void
): InstalledSignals {
  const proc = process as ProcessWithOwner
  if (signals.length === 0) return { foreign: [], uninstall () {} }
  assertSignalsFree(signals)
  const owner = {}
  proc[OWNER] = owner

  const foreign = signals
    .map(signal => ({ signal, listeners: process.listenerCount(signal) }))
    .filter(entry => entry.listeners > 0)
  const listener = (signal: NodeJS.Signals): void => onSignal(signal)
  for (const signal of signals) process.on(signal, listener)

  let installed = true
  return {
    foreign,
    uninstall () {
      if (!installed) return
      installed = false
      for (const signal of signals) process.removeListener(signal, listener)
      if (proc[OWNER] === owner) delete proc[OWNER]
    }
  }
}

/** What a signal acts on: one app's drain, or a drain group (group.ts). */
export interface SignalTarget {
  readonly running: boolean
  /** For the log line of a signal that joins a running drain. */
  readonly state?: string
  start (signal: NodeJS.Signals): void
  force (signal: NodeJS.Signals): void
}

/**
 * What a signal means. Only a signal after a signal forces the exit: the
 * SIGTERM that follows a preStop call (or fastify.drain.start()) is the
 * expected one, and joins the drain already running without a second delay.
 */
export function drainOnSignal (target: SignalTarget, log: FastifyBaseLogger): (signal: NodeJS.Signals) => void {
  let signalled = false
  return signal => {
    if (signalled) return target.force(signal)
    signalled = true
    if (target.running) {
      log.info({ signal, state: target.state }, `${signal} received: the drain is already running, continuing it`)
      return
    }
    target.start(signal)
  }
}
