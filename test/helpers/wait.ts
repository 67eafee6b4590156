// Waiting on a child fixture's events, never by polling: its IPC messages and
// its log lines (re-checked on every chunk of stdout).
import { once } from 'node:events'
import type { LogLine, RunningChild } from './child.js'

const exitedEarly = (running: RunningChild, what: string): Promise<never> =>
  running.exited.then(({ code }) => { throw new Error(`the app exited (code ${code}) while the test waited for ${what}`) })

/** The first IPC message (already received or to come) that matches. */
export function waitForMessage<T = unknown> (running: RunningChild, match: (message: any) => boolean): Promise<T> {
  const found = running.messages.find(match)
  if (found !== undefined) return Promise.resolve(found as T)
  let onMessage = (_m: unknown): void => {}
  const received = new Promise<T>(resolve => {
    onMessage = m => { if (match(m)) resolve(m as T) }
    running.child.on('message', onMessage)
  })
  return Promise.race([received, exitedEarly(running, 'a message')]).finally(() => running.child.off('message', onMessage))
}

/** The first log line (already logged or to come) that matches. */
export async function waitForLog (running: RunningChild, match: (line: LogLine) => boolean): Promise<LogLine> {
  const stdout = running.child.stdout
  if (stdout === null) throw new Error('the child has no stdout pipe')
  const early = exitedEarly(running, 'a log line')
  early.catch(() => {})
  for (;;) {
    const found = running.logs.find(match)
    if (found !== undefined) return found
    // startChild's parser listens first, so the logs are up to date when this resolves.
    await Promise.race([once(stdout, 'data'), early])
  }
}
