// As PID 1 of its PID namespace (a container with no init), a process cannot
// SIGKILL itself: the kernel ignores a namespace init's own signals that it has
// no handler for. The drain must work as usual there, the plugin must say at
// listen what its watchdog can and cannot do, and the watchdog must still end a
// main thread stuck in JavaScript (through the inspector). Run in a real PID
// namespace (`unshare --pid --fork`, which needs root); skipped where none can be made.
import t from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import type { Readable } from 'node:stream'
import { readdirSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import Fastify from 'fastify'
import gracefulDrain from 'fastify-graceful-drain'

const fixture = fileURLToPath(new URL('./fixtures/app.ts', import.meta.url))
const stuckLogFixture = fileURLToPath(new URL('./fixtures/stuck-log-app.ts', import.meta.url))
const GRACE_PERIOD = 3_000
const unshare = spawnSync('unshare', ['--pid', '--fork', 'true'])
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

t.test('as PID 1 the plugin warns that its watchdog cannot SIGKILL it, and the drain still ends with 0', { skip: noNamespace }, async t => {
  const child = spawn('unshare', ['--pid', '--fork', '--kill-child', process.execPath, '--import', 'tsx', fixture], {
    env: { ...process.env, FIXTURE: JSON.stringify({ options: { gracePeriod: 10_000, drainDelay: 0 } }) },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc']
  })
  // unshare's --kill-child takes the namespace's init with it.
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  const exited = once(child, 'exit')
  // The whole stdout, read to its end: the report is the last line the process writes.
  const stdout = child.stdout as Readable
  const stdoutEnded = once(stdout, 'end')
  const logs: Array<Record<string, any>> = []
  const lineArrived = new EventTarget()
  let buffered = ''
  stdout.setEncoding('utf8').on('data', (chunk: string) => {
    const lines = (buffered + chunk).split('\n')
    buffered = lines.pop() ?? ''
    for (const line of lines) { try { logs.push(JSON.parse(line)) } catch { /* not a log line */ } }
    lineArrived.dispatchEvent(new Event('line'))
  })
  const [hello] = await once(child, 'message') as [{ port?: number }]
  t.ok(typeof hello.port === 'number', 'the app listens inside the namespace')

  // Logged at listen, on stdout, which may be read after the IPC message.
  const isWarning = (line: Record<string, any>): boolean => line.level === 40 && line.pid === 1 && /PID 1/.test(line.msg)
  while (!logs.some(isWarning) && !logs.some(line => /drain budget/.test(line.msg ?? ''))) await once(lineArrived, 'line')
  const warning = logs.find(isWarning)
  t.ok(warning, 'warned at listen what the watchdog cannot do as PID 1')
  t.match(warning?.msg, /docker run --init/, 'and named the fix')

  // Sent from outside the namespace, as the kubelet's would be.
  const [init] = childrenOf(child.pid as number)
  t.ok(init !== undefined, 'found the namespace\'s init from outside')
  process.kill(init as number, 'SIGTERM')
  const [code] = await exited as [number | null]
  await stdoutEnded
  t.equal(code, 0, 'the drain ended the process with 0 (unshare exits with its child\'s code)')
  t.ok(logs.some(line => line.drainReport?.exitCode === 0), 'and logged its report')
})

t.test('as PID 1 a log pipe nobody reads still cannot keep the process past gracePeriod', { skip: noNamespace }, async t => {
  // The case of test/watchdog.test.ts, as PID 1: the SIGKILL is ignored there, and the
  // watchdog ends the main thread's retry loop through the main thread's inspector.
  const child = spawn('unshare', ['--pid', '--fork', '--kill-child', process.execPath, '--import', 'tsx', stuckLogFixture], {
    // exitMargin 2000: the watchdog fires 500 ms before gracePeriod. The fallback is slower than a
    // SIGKILL (the inspector is loaded, the main thread interrupted, the process exits normally):
    // 200 ms on a loaded 2-core machine, where the 250 ms that exitMargin 1000 leaves was too close.
    env: { ...process.env, FIXTURE: JSON.stringify({ options: { gracePeriod: GRACE_PERIOD, drainDelay: 200, exitMargin: 2_000 } }) },
    // stdout is a pipe this test never reads: it fills and stays full.
    stdio: ['ignore', 'pipe', 'pipe', 'ipc']
  })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  child.stdout?.pause()
  let stderr = ''
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  const exited = once(child, 'exit')
  const [message] = await once(child, 'message') as [{ port: number }]
  t.ok(message.port > 0, 'listening as PID 1, with its log pipe full')

  const [init] = childrenOf(child.pid as number)
  const signalledAt = performance.now()
  process.kill(init as number, 'SIGTERM')
  // The test's own bound, far past the grace period: unshare --kill-child takes the init with it.
  const timeout = setTimeout(() => child.kill('SIGKILL'), GRACE_PERIOD * 3)
  const [code] = await exited as [number | null]
  clearTimeout(timeout)
  const ms = Math.round(performance.now() - signalledAt)
  t.comment(`SIGTERM → gone: ${ms} ms (${String(code)})`)
  t.ok(ms < GRACE_PERIOD, `gone ${ms} ms after SIGTERM, before gracePeriod (${GRACE_PERIOD} ms)`)
  t.equal(code, 137, 'ended by the watchdog with 137, as its SIGKILL would have')
  t.match(stderr, /watchdog/, 'the watchdog said why on stderr')
})

t.test('no warning where the watchdog is not armed or can SIGKILL', async t => {
  const { warnIfNamespaceInit } = await import('../lib/kubernetes/platform.js')
  const { resolveOptions } = await import('fastify-graceful-drain')
  const warned: string[] = []
  const log = { warn: (_: unknown, msg: string) => { warned.push(msg) } } as any
  warnIfNamespaceInit(log, resolveOptions({}), 4242)
  warnIfNamespaceInit(log, resolveOptions({ exit: false }), 1)
  t.same(warned, [], 'not PID 1, or exit: false (no watchdog)')
  warnIfNamespaceInit(log, resolveOptions({}), 1)
  t.equal(warned.length, 1, 'PID 1 with the default exit: warned')
  // The app's own registration logs nothing of the kind here, where this process is not PID 1.
  const app = Fastify()
  await app.register(gracefulDrain, { exit: false, signals: [] })
  await app.close()
})
