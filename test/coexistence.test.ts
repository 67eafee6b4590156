// Other signal handlers in the process: close-with-grace installed before the
// plugin (a hand-written server.js) or after it (fastify-cli's `fastify start`)
// is detected and reported with advice, and the real-signal run shows why.
import t, { type Test } from 'tap'
import { once } from 'node:events'
import { startChild, killChild, type LogLine, type RunningChild } from './helpers/child.js'
import { call } from './helpers/in-process.js'

const options = { drainDelay: 0, quietPeriod: 0 }

type Baseline = Record<'SIGTERM' | 'SIGINT', number>

async function start (t: Test, closeWithGrace?: 'before' | 'after'): Promise<RunningChild & { baseline: Baseline }> {
  const running = await startChild('kubernetes-app.ts', { FIXTURE: JSON.stringify({ options, closeWithGrace }) })
  t.teardown(() => killChild(running))
  // Under tap, children preload @tapjs/processinfo, whose signal-exit adds a SIGTERM listener of its own
  // (harmless: it stands aside when other listeners exist); the fixture reports what was there at its start.
  const message = running.messages.find(m => (m as { baseline?: unknown }).baseline !== undefined) ??
    (await once(running.child, 'message'))[0]
  return Object.assign(running, { baseline: (message as { baseline: Baseline }).baseline })
}

/** Resolves with the first log line matching, waiting on the child's output (or its exit). */
async function logLine (running: RunningChild, match: (line: LogLine) => boolean): Promise<LogLine | undefined> {
  const exited = running.exited.then(() => undefined)
  for (;;) {
    const found = running.logs.find(match)
    if (found !== undefined || running.child.exitCode !== null) return found
    await Promise.race([once(running.child.stdout as NodeJS.EventEmitter, 'data'), exited])
  }
}

const isListenerWarning = (when: 'before' | 'after') => (line: LogLine) =>
  line.level === 40 && line.msg.includes(`listener(s) were installed ${when} fastify-graceful-drain`)

t.test('close-with-grace installed before the plugin is reported at registration, for each signal', async t => {
  const app = await start(t, 'before')
  // The log lines travel on stdout, the port on IPC: wait for the last warning.
  await logLine(app, line => isListenerWarning('before')(line) && line.signal === 'SIGINT')
  const warnings = app.logs.filter(isListenerWarning('before'))
  t.same(warnings.map(line => [line.signal, line.listeners]),
    [['SIGTERM', app.baseline.SIGTERM + 1], ['SIGINT', app.baseline.SIGINT + 1]], 'close-with-grace\'s listener counted')
  t.match(warnings[0]?.msg, /close-with-grace/)
})

t.test('close-with-grace installed after the plugin (fastify-cli\'s order) is reported once the server listens', async t => {
  const app = await start(t, 'after')
  const warning = await logLine(app, isListenerWarning('after'))
  await logLine(app, line => isListenerWarning('after')(line) && line.signal === 'SIGINT')
  t.match(warning, { signal: 'SIGTERM', listeners: 1 })
  t.match(warning?.msg, /fastify start.*close-with-grace/)
  t.equal(app.logs.filter(isListenerWarning('after')).length, 2, 'SIGTERM and SIGINT, once each')
  t.notOk(app.logs.some(line => isListenerWarning('before')(line) && (line.listeners as number) > app.baseline[line.signal as 'SIGTERM']),
    'nothing of close-with-grace\'s reported at registration')
})

t.test('alone, the plugin reports nothing', async t => {
  const app = await start(t)
  await call(`${app.origin}/`)
  app.kill('SIGTERM')
  await app.exited
  t.notOk(app.logs.some(isListenerWarning('after')))
  t.notOk(app.logs.some(line => isListenerWarning('before')(line) && (line.listeners as number) > app.baseline[line.signal as 'SIGTERM']),
    'only what was there before the app started, if anything')
})

// Why the warning matters: the same SIGTERM with a request in flight, with and without close-with-grace.
t.test('a real SIGTERM: alone, the in-flight request completes and the exit is clean; with close-with-grace it is cut', async t => {
  const alone = await start(t)
  const served = call(`${alone.origin}/slow?ms=1500`)
  await logLineAfterRequest(alone)
  alone.kill('SIGTERM')
  t.equal((await served).status, 200)
  t.equal((await alone.exited).code, 0)

  const withCli = await start(t, 'after')
  const cut = call(`${withCli.origin}/slow?ms=1500`).then(res => res.status, () => 'cut')
  await logLineAfterRequest(withCli)
  withCli.kill('SIGTERM')
  const exited = await withCli.exited
  t.equal(exited.code, 1, 'close-with-grace exits 1 after its 500 ms delay')
  t.equal(await cut, 'cut', 'the request in flight was cut')
})

/** The fixture logs each request at info: wait for the one the test just sent. */
async function logLineAfterRequest (running: RunningChild): Promise<void> {
  await logLine(running, line => line.msg === 'incoming request' && (line.req as { url?: string } | undefined)?.url?.startsWith('/slow') === true)
}
