// Whatever blocks the main thread at the end, the process is gone before
// gracePeriod: a watchdog thread armed at the signal ends it (issue 16).
// Here the block is a log pipe nobody reads: pino's exit-time flush retries on
// it for ever, inside process.exit(). The thread is started when the app
// listens, so its boot never takes the drain's CPU.
import t from 'tap'
import { fork } from 'node:child_process'
import { once } from 'node:events'
import { readdirSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { buildApp } from './helpers/in-process.js'

/** This process's threads (Linux). */
function threads (): Set<string> {
  return new Set(readdirSync('/proc/self/task'))
}

t.test('the watchdog thread is started when the app listens, and ends when the app closes without a drain',
  { skip: process.platform !== 'linux' && 'reads /proc/self/task' }, async t => {
    const before = threads()
    // exit: true, so the drain would end the process: the only case the watchdog is for. No drain is started here.
    const { app } = await buildApp(t, { exit: true })
    t.equal([...threads()].filter(id => !before.has(id)).length, 0, 'no thread before listen')
    await app.listen({ port: 0, host: '127.0.0.1' })
    const started = [...threads()].filter(id => !before.has(id))
    t.equal(started.length, 1, 'one thread once listening')
    await app.close()
    // The thread ends on its own message loop: wait for it, bounded (a thread exit is not an event here).
    const id = started[0] as string
    for (let i = 0; i < 200 && threads().has(id); i++) await sleep(10)
    t.notOk(threads().has(id), 'gone after close()')
  })

const fixture = fileURLToPath(new URL('./fixtures/stuck-log-app.ts', import.meta.url))
const GRACE_PERIOD = 3_000

t.test('a log pipe nobody reads cannot keep the process past gracePeriod', async t => {
  const child = fork(fixture, {
    execArgv: ['--import', 'tsx'],
    // exitMargin 1000: the watchdog fires half of it before gracePeriod, leaving 500 ms for the kill
    // to land on a busy 2-core machine (the derived 300 ms margin of a 3 s grace period leaves 150).
    env: { ...process.env, FIXTURE: JSON.stringify({ options: { gracePeriod: GRACE_PERIOD, drainDelay: 200, exitMargin: 1_000 } }) },
    // stdout is a pipe this test never reads: it fills and stays full.
    stdio: ['ignore', 'pipe', 'pipe', 'ipc']
  })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  child.stdout?.pause()
  let stderr = ''
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  const exited = once(child, 'exit')
  const [message] = await once(child, 'message') as [{ port: number }]
  t.ok(message.port > 0, 'listening, with its log pipe full')

  const signalledAt = performance.now()
  child.kill('SIGTERM')
  // The test's own bound, far past the grace period: without the watchdog the child never exits by itself.
  const timeout = setTimeout(() => child.kill('SIGKILL'), GRACE_PERIOD * 3)
  const [code, signal] = await exited as [number | null, NodeJS.Signals | null]
  clearTimeout(timeout)
  const ms = Math.round(performance.now() - signalledAt)
  t.comment(`SIGTERM → gone: ${ms} ms (${String(code ?? signal)})`)
  // The whole promise: gone before the SIGKILL the kubelet would send at gracePeriod.
  t.ok(ms < GRACE_PERIOD, `gone ${ms} ms after SIGTERM, before gracePeriod (${GRACE_PERIOD} ms)`)
  t.equal(signal, 'SIGKILL', 'ended by the watchdog (status 137), not by the test')
  t.match(stderr, /watchdog/, 'the watchdog said why on stderr')
})
