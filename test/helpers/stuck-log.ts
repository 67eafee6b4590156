import type { Test } from 'tap'
import { once } from 'node:events'
import { performance } from 'node:perf_hooks'
import { startFixture } from './child.js'

export interface StuckLogExit {
  /** ms from SIGTERM to the process's exit. */
  ms: number
  code: number | null
  signal: NodeJS.Signals | null
  stderr: string
}

/**
 * Runs test/fixtures/stuck-log-app.ts with a stdout pipe this test never reads
 * (it fills and stays full), sends SIGTERM to `signalled(pid)` once it listens,
 * and measures until it is gone. Kills it at three times `gracePeriod`, the
 * test's own bound: without the watchdog it never exits by itself.
 * `prefix` runs it under another command (unshare, for PID 1).
 */
export async function runStuckLogApp (t: Test, options: { gracePeriod: number, exitMargin: number },
  { prefix, signalled = pid => pid }: { prefix?: readonly string[], signalled?: (pid: number) => number } = {}): Promise<StuckLogExit> {
  const child = startFixture('stuck-log-app.ts', { FIXTURE: JSON.stringify({ options: { ...options, drainDelay: 200 } }) }, prefix)
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  child.stdout?.pause()
  let stderr = ''
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  const exited = once(child, 'exit')
  const [message] = await once(child, 'message') as [{ port: number }]
  t.ok(message.port > 0, 'listening, with its log pipe full')

  const signalledAt = performance.now()
  process.kill(signalled(child.pid as number), 'SIGTERM')
  const timeout = setTimeout(() => child.kill('SIGKILL'), options.gracePeriod * 3)
  const [code, signal] = await exited as [number | null, NodeJS.Signals | null]
  clearTimeout(timeout)
  const ms = Math.round(performance.now() - signalledAt)
  t.comment(`SIGTERM → gone: ${ms} ms (${String(code ?? signal)})`)
  return { ms, code, signal, stderr }
}
