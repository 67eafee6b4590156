// Whatever blocks the main thread at the end, the process is gone before
// gracePeriod: a watchdog thread armed at the signal ends it (issue 16).
// Here the block is a log pipe nobody reads: pino's exit-time flush retries on
// it for ever, inside process.exit(). The thread is started when the app
// listens, so its boot never takes the drain's CPU.
import t from 'tap'
import { readdirSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { buildApp } from './helpers/in-process.js'
import { runStuckLogApp } from './helpers/stuck-log.js'

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

const GRACE_PERIOD = 3_000

t.test('a log pipe nobody reads cannot keep the process past gracePeriod', async t => {
  // exitMargin 1000: the watchdog fires a quarter of it before gracePeriod, leaving 250 ms for the kill
  // to land on a busy 2-core machine (the derived 300 ms margin of a 3 s grace period leaves 75).
  const { ms, signal, stderr } = await runStuckLogApp(t, { gracePeriod: GRACE_PERIOD, exitMargin: 1_000 })
  // The whole promise: gone before the SIGKILL the kubelet would send at gracePeriod.
  t.ok(ms < GRACE_PERIOD, `gone ${ms} ms after SIGTERM, before gracePeriod (${GRACE_PERIOD} ms)`)
  t.equal(signal, 'SIGKILL', 'ended by the watchdog (status 137), not by the test')
  t.match(stderr, /watchdog/, 'the watchdog said why on stderr')
})
