// As PID 1 of its PID namespace (a container with no init), a process cannot
// SIGKILL itself: the kernel ignores a namespace init's own signals that it has
// no handler for. The drain must work as usual there, the plugin must say at
// listen what its watchdog can and cannot do, and the watchdog must still end a
// main thread stuck in JavaScript (through the inspector). Run in a real PID
// namespace (`unshare --pid --fork`, which needs root); skipped where none can be made.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { killChild, startChild } from './helpers/child.js'
import { buildApp } from './helpers/in-process.js'
import { runStuckLogApp } from './helpers/stuck-log.js'
import { warnIfNamespaceInit } from '../lib/kubernetes/platform.js'
import { resolveOptions } from 'fastify-graceful-drain'

const GRACE_PERIOD = 3_000
const unshare = spawnSync('unshare', ['--pid', '--fork', 'true'])
/** unshare's --kill-child takes the namespace's init with it when the test kills unshare by its PID. */
const AS_PID_1 = ['unshare', '--pid', '--fork', '--kill-child']
const noNamespace = unshare.error !== undefined || unshare.status !== 0
  ? `cannot make a PID namespace here (unshare --pid needs root): ${unshare.error?.message ?? unshare.stderr.toString().trim()}`
  : false

/** The PIDs whose parent is `parent`, from /proc (the namespace's init is unshare's only child). */
function childrenOf (parent: number): number[] {
  const children: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      // The fields after the command name, which is in parentheses and may hold spaces.
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === parent) children.push(Number(entry))
    } catch { /* gone meanwhile */ }
  }
  return children
}

/** The namespace's init, seen from outside: unshare's only child. */
const initOf = (unsharePid: number): number => {
  const [init] = childrenOf(unsharePid)
  if (init === undefined) throw new Error(`unshare (${unsharePid}) has no child`)
  return init
}
const isWarning = (line: { level: number, msg: string, pid?: unknown }): boolean => line.level === 40 && line.pid === 1 && /PID 1/.test(line.msg)

t.test('as PID 1 the plugin warns that its watchdog cannot SIGKILL it, and the drain still ends with 0', { skip: noNamespace }, async t => {
  const running = await startChild('app.ts', { FIXTURE: JSON.stringify({ options: { gracePeriod: 10_000, drainDelay: 0 } }) }, { prefix: AS_PID_1 })
  t.teardown(() => killChild(running))
  // Sent from outside the namespace, as the kubelet's would be.
  process.kill(initOf(running.child.pid as number), 'SIGTERM')
  // Every log line is read once it has exited (startChild waits for stdout's end).
  const exit = await running.exited
  t.equal(exit.code, 0, 'the drain ended the process with 0 (unshare exits with its child\'s code)')
  t.equal(running.report()?.exitCode, 0, 'and logged its report')
  const warning = running.logs.find(isWarning)
  t.ok(warning, 'warned at listen what the watchdog cannot do as PID 1')
  t.match(warning?.msg, /docker run --init/, 'and named the fix')
})

t.test('as PID 1 a log pipe nobody reads still cannot keep the process past gracePeriod', { skip: noNamespace }, async t => {
  // The case of test/watchdog.test.ts, as PID 1: the SIGKILL is ignored there, and the
  // watchdog ends the main thread's retry loop through the main thread's inspector.
  // exitMargin 2000: the watchdog fires 500 ms before gracePeriod. The fallback is slower than a
  // SIGKILL (the inspector is loaded, the main thread interrupted, the process exits normally):
  // 200 ms on a loaded 2-core machine, where the 250 ms that exitMargin 1000 leaves was too close.
  const { ms, code, stderr } = await runStuckLogApp(t, { gracePeriod: GRACE_PERIOD, exitMargin: 2_000 }, { prefix: AS_PID_1, signalled: initOf })
  t.ok(ms < GRACE_PERIOD, `gone ${ms} ms after SIGTERM, before gracePeriod (${GRACE_PERIOD} ms)`)
  t.equal(code, 137, 'ended by the watchdog with 137, as its SIGKILL would have')
  t.match(stderr, /watchdog/, 'the watchdog said why on stderr')
})

t.test('no warning where the watchdog is not armed or can SIGKILL', async t => {
  const warned: string[] = []
  const log = { warn: (_: unknown, msg: string) => { warned.push(msg) } } as any
  warnIfNamespaceInit(log, resolveOptions({}), 4242)
  warnIfNamespaceInit(log, resolveOptions({ exit: false }), 1)
  t.same(warned, [], 'not PID 1, or exit: false (no watchdog)')
  warnIfNamespaceInit(log, resolveOptions({}), 1)
  t.equal(warned.length, 1, 'PID 1 with the default exit: warned')
  // Wired at listen: an app that would exit (the watchdog armed), in this process, which is not PID 1.
  const { app, logs } = await buildApp(t, { exit: true })
  await app.listen({ port: 0, host: '127.0.0.1' })
  await app.close()
  t.ok(logs.some(line => /drain budget/.test(line.msg)), 'the listen-time lines were logged')
  t.notOk(logs.some(line => /PID 1/.test(line.msg)), 'and no PID 1 warning among them')
})
