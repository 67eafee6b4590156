// fastify-cli: `fastify start app.js` installs close-with-grace once the app
// has loaded; at SIGTERM it calls fastify.close() at once and exits 1 after
// 500 ms, cutting the drain. takeOverSignals() removes close-with-grace's
// listener from the plugin's signals (and nothing else), so the drain runs.
// The identification is checked against the real close-with-grace in this
// process; the outcome against the real CLI in a child process.
import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { EventEmitter, once } from 'node:events'
import { get as httpGet, Agent } from 'node:http'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { isCloseWithGraceSignalListener, takeOverSignals, type SignalEmitter } from '../lib/coexistence/fastify-cli.js'

const require = createRequire(import.meta.url)
const closeWithGrace = require('close-with-grace') as (opts: { delay?: number, logger?: unknown }, fn: () => Promise<void>) => { uninstall (): void }

const root = fileURLToPath(new URL('..', import.meta.url))
// What `node_modules/.bin/fastify` runs, started with this Node (the PATH's `node` may be another version).
const cli = fileURLToPath(new URL('../node_modules/fastify-cli/cli.js', import.meta.url))
const fixture = 'test/fixtures/fastify-cli/app.js'
const startArgs = [cli, 'start', '--address', '127.0.0.1', '--log-level', 'info', fixture]

type Listener = (...args: any[]) => void

/** Installs the real close-with-grace on this process; uninstalled at teardown. */
function installCloseWithGrace (t: Test): { uninstall (): void } {
  const installed = closeWithGrace({ delay: 500, logger: false }, async () => {})
  t.teardown(() => installed.uninstall())
  return installed
}

/** Recording logger. */
function recorder (): { lines: Array<{ level: string, obj: any, msg: string }>, log: any } {
  const lines: Array<{ level: string, obj: any, msg: string }> = []
  const at = (level: string) => (obj: any, msg: string) => { lines.push({ level, obj, msg }) }
  return { lines, log: { info: at('info'), warn: at('warn'), debug: at('debug') } }
}

/** close-with-grace's own `onSignal`, taken from a real install and then uninstalled: to put on a stand-in emitter. */
function realOnSignal (): Listener {
  const installed = closeWithGrace({ delay: 500, logger: false }, async () => {})
  const raw = process.rawListeners('SIGTERM').find(isCloseWithGraceSignalListener)
  installed.uninstall()
  if (raw === undefined) throw new Error('close-with-grace\'s SIGTERM listener not found')
  return raw.listener
}

t.test('identification: close-with-grace\'s signal listener, and nothing that merely resembles it', async t => {
  installCloseWithGrace(t)
  const found = process.rawListeners('SIGTERM').filter(isCloseWithGraceSignalListener)
  t.equal(found.length, 1, 'the real close-with-grace install is recognised')
  t.equal(found[0]?.listener.name, 'onSignal')
  t.notOk(process.rawListeners('uncaughtException').some(isCloseWithGraceSignalListener), 'its error listener is not a signal listener')

  // Look-alikes: the same name with another body, the same body added with `on` (close-with-grace always uses once).
  const run = (_: unknown): void => {}
  function onSignal (signal: unknown): void { run({ signal }) }
  const emitter = new EventEmitter()
  emitter.on('SIGTERM', onSignal)
  emitter.once('SIGTERM', function onSignal () { process.exitCode = 1 })
  emitter.once('SIGTERM', () => {})
  t.same(emitter.rawListeners('SIGTERM').map(isCloseWithGraceSignalListener), [false, false, false])
  t.notOk(isCloseWithGraceSignalListener(undefined))
})

t.test('takeOverSignals removes close-with-grace from the given signals only, and says so', async t => {
  const plugin = (): void => {}
  process.on('SIGTERM', plugin)
  process.on('SIGINT', plugin)
  t.teardown(() => { process.removeListener('SIGTERM', plugin); process.removeListener('SIGINT', plugin) })
  installCloseWithGrace(t)
  const before = {
    SIGHUP: process.rawListeners('SIGHUP').filter(isCloseWithGraceSignalListener).length,
    uncaughtException: process.listenerCount('uncaughtException'),
    unhandledRejection: process.listenerCount('unhandledRejection'),
    beforeExit: process.listenerCount('beforeExit')
  }
  const { lines, log } = recorder()

  const takeover = takeOverSignals({ signals: ['SIGTERM', 'SIGINT'], log })
  t.teardown(() => takeover.restore())
  t.same(takeover.removed.map(entry => entry.signal), ['SIGTERM', 'SIGINT'])
  t.same(takeover.kept, [])
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    t.notOk(process.rawListeners(signal).some(isCloseWithGraceSignalListener), `close-with-grace no longer on ${signal}`)
    t.ok(process.listeners(signal).includes(plugin), `the plugin's ${signal} listener stays`)
  }
  t.equal(process.rawListeners('SIGHUP').filter(isCloseWithGraceSignalListener).length, before.SIGHUP, 'SIGHUP left to close-with-grace')
  t.equal(process.listenerCount('uncaughtException'), before.uncaughtException, 'uncaughtException untouched')
  t.equal(process.listenerCount('unhandledRejection'), before.unhandledRejection, 'unhandledRejection untouched')
  t.equal(process.listenerCount('beforeExit'), before.beforeExit, 'beforeExit untouched')
  t.match(lines, [{ level: 'info', obj: { signals: ['SIGTERM', 'SIGINT'], closeWithGraceStillHandles: ['SIGHUP', 'SIGQUIT'] } }])

  t.same(takeOverSignals({ signals: ['SIGTERM', 'SIGINT'] }).removed, [], 'a second call finds nothing more')
})

t.test('a signal with no other listener keeps close-with-grace\'s: Node\'s default action would be worse', async t => {
  const onSignal = realOnSignal()
  const emitter = new EventEmitter()
  const plugin = (): void => {}
  emitter.on('SIGTERM', plugin)
  emitter.once('SIGTERM', onSignal)
  emitter.once('SIGINT', onSignal)
  const { lines, log } = recorder()
  const takeover = takeOverSignals({ signals: ['SIGTERM', 'SIGINT'], log, emitter: emitter as SignalEmitter })
  t.same(takeover.removed.map(entry => entry.signal), ['SIGTERM'])
  t.same(takeover.kept, ['SIGINT'])
  t.same(emitter.listeners('SIGTERM'), [plugin])
  t.same(emitter.listeners('SIGINT'), [onSignal])
  t.match(lines.find(line => line.level === 'warn'), { obj: { signals: ['SIGINT'] } })
})

t.test('nothing to take over: nothing removed, logged at debug only', async t => {
  const emitter = new EventEmitter()
  emitter.on('SIGTERM', () => {})
  const { lines, log } = recorder()
  const takeover = takeOverSignals({ signals: ['SIGTERM'], log, emitter: emitter as SignalEmitter })
  t.same([takeover.removed, takeover.kept], [[], []])
  t.same(lines.map(line => line.level), ['debug'])
})

t.test('restore() puts the listeners back while close-with-grace is armed, never after it was uninstalled', async t => {
  const plugin = (): void => {}
  process.on('SIGTERM', plugin)
  t.teardown(() => process.removeListener('SIGTERM', plugin))

  const armed = installCloseWithGrace(t)
  const first = takeOverSignals({ signals: ['SIGTERM'] })
  first.restore()
  const back = process.rawListeners('SIGTERM').filter(isCloseWithGraceSignalListener)
  t.equal(back.length, 1, 'back on SIGTERM')
  t.equal(back[0]?.listener, first.removed[0]?.listener, 'the same function, added with once')
  first.restore()
  t.equal(process.rawListeners('SIGTERM').filter(isCloseWithGraceSignalListener).length, 1, 'restore() is idempotent')

  // fastify-cli uninstalls close-with-grace in an onClose hook: a handler put back after that would close the app again.
  const second = takeOverSignals({ signals: ['SIGTERM'] })
  armed.uninstall()
  second.restore()
  t.notOk(process.rawListeners('SIGTERM').some(isCloseWithGraceSignalListener), 'not restored once uninstalled')
})

// --- The real `fastify start` ------------------------------------------------

interface LogLine { level: number, msg: string, [key: string]: any }

interface Cli {
  child: ChildProcess
  port: number
  logs: LogLine[]
  stderr: () => string
  waitForLog: (match: (line: LogLine) => boolean) => Promise<LogLine>
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
}

/** `fastify start -a 127.0.0.1 -l info <fixture>` (or `args`) on an ephemeral port; killed by PID at teardown. */
async function startCli (t: Test, config: Record<string, unknown>, args = startArgs): Promise<Cli> {
  const env: NodeJS.ProcessEnv = { ...process.env, FIXTURE: JSON.stringify(config) }
  // fastify-cli reads FASTIFY_* (its options) from the environment: none may leak in from the shell.
  for (const key of Object.keys(env)) if (key.startsWith('FASTIFY_')) delete env[key]
  // `--port 0` is lost to start.js's `opts.port || process.env.PORT || 3000`; PORT is read as the string '0', which listens on a free port.
  env.PORT = '0'
  const child = spawn(process.execPath, args, {
    cwd: root,
    env,
    stdio: ['ignore', 'pipe', 'pipe']
  })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  const logs: LogLine[] = []
  const events = new EventEmitter()
  events.setMaxListeners(0)
  let stderr = ''
  let buffered = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk
    const lines = buffered.split('\n')
    buffered = lines.pop() ?? ''
    for (const line of lines) {
      let parsed: LogLine
      try { parsed = JSON.parse(line) } catch { continue }
      logs.push(parsed)
      events.emit('log', parsed)
    }
  })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  // Both pipes read to their end, so every log line and close-with-grace's last words are in.
  const exited = Promise.all([once(child, 'exit'), once(child.stdout, 'close'), once(child.stderr, 'close')])
    .then(([[code, signal]]) => ({ code: code as number | null, signal: signal as NodeJS.Signals | null }))

  function waitForLog (match: (line: LogLine) => boolean): Promise<LogLine> {
    const seen = logs.find(match)
    if (seen !== undefined) return Promise.resolve(seen)
    return new Promise((resolve, reject) => {
      const onLog = (line: LogLine): void => {
        if (!match(line)) return
        events.off('log', onLog)
        resolve(line)
      }
      events.on('log', onLog)
      exited.then(() => {
        events.off('log', onLog)
        reject(new Error(`fastify start exited before the awaited log line:\n${stderr}`))
      }, reject)
    })
  }

  const listening = await waitForLog(line => /^Server listening at http:\/\/127\.0\.0\.1:\d+$/.test(line.msg))
  return { child, port: Number(listening.msg.split(':').pop()), logs, stderr: () => stderr, waitForLog, exited }
}

type Outcome = { status: number, connection: string | undefined, body: string } | { error: string }

/** GET /slow?ms= over a keep-alive agent, as a real client holds its connections. */
function slowRequest (t: Test, port: number, ms: number): Promise<Outcome> {
  const agent = new Agent({ keepAlive: true })
  t.teardown(() => agent.destroy())
  return new Promise(resolve => {
    const request = httpGet({ host: '127.0.0.1', port, path: `/slow?ms=${ms}`, agent }, res => {
      let body = ''
      res.setEncoding('utf8').on('data', (chunk: string) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, connection: res.headers.connection, body }))
      res.on('error', error => resolve({ error: (error as NodeJS.ErrnoException).code ?? error.message }))
    })
    request.on('error', error => resolve({ error: (error as NodeJS.ErrnoException).code ?? error.message }))
  })
}

const isIncoming = (line: LogLine): boolean => line.msg === 'incoming request' && String(line.req?.url).startsWith('/slow')
const isDrainStarted = (line: LogLine): boolean => line.msg.startsWith('drain started')
const isLateListenerWarning = (line: LogLine): boolean => line.level === 40 && line.msg.includes('installed after fastify-graceful-drain')

// The request outlives close-with-grace's 500 ms by far, and the drain's budget easily holds it.
const SLOW_MS = 3000
const options = { gracePeriod: 15_000, drainDelay: 200, quietPeriod: 0 }

t.test('without the takeover, fastify start cuts the in-flight request and exits 1 (the problem)', async t => {
  const app = await startCli(t, { options })
  const response = slowRequest(t, app.port, SLOW_MS)
  await app.waitForLog(isIncoming)
  app.child.kill('SIGTERM')
  const [outcome, exit] = await Promise.all([response, app.exited])
  t.match(outcome, { error: /ECONNRESET|socket hang up/ }, 'the in-flight request is cut')
  t.equal(exit.code, 1, 'close-with-grace exits 1')
  t.match(app.stderr(), /killed by timeout \(500ms\)/, 'by close-with-grace\'s timer')
  t.notOk(app.logs.some(line => line.drainReport !== undefined), 'the drain never finished')
  t.ok(app.logs.some(isLateListenerWarning), 'the plugin warned about it')
})

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  t.test(`with the takeover, fastify start drains on ${signal}: the request completes with Connection: close, exit 0`, async t => {
    const app = await startCli(t, { options, takeOver: true })
    const takenOver = app.logs.find(line => line.msg.startsWith('took the signals over from close-with-grace'))
    t.match(takenOver, { signals: ['SIGTERM', 'SIGINT'], closeWithGraceStillHandles: ['SIGHUP'] }, 'the takeover is logged before listening')
    const response = slowRequest(t, app.port, SLOW_MS)
    await app.waitForLog(isIncoming)
    app.child.kill(signal)
    const [outcome, exit] = await Promise.all([response, app.exited])
    t.same(outcome, { status: 200, connection: 'close', body: '{"slow":true}' }, 'the in-flight request completes, told to close')
    t.same(exit, { code: 0, signal: null }, 'exit 0')
    const report = app.logs.find(line => line.drainReport !== undefined)?.drainReport
    t.match(report, { reason: signal, exitCode: 0, forced: false, requests: { inFlightAtStart: 1, cut: [] } }, 'the drain report is logged')
    t.notMatch(app.stderr(), /killed by timeout/, 'close-with-grace never fired')
    t.notOk(app.logs.some(isLateListenerWarning), 'no warning: nothing is left to cut the drain')
  })
}

t.test('with the takeover, a second SIGTERM still forces the exit (128 + 15)', async t => {
  const app = await startCli(t, { options: { ...options, drainDelay: 5000 }, takeOver: true })
  const response = slowRequest(t, app.port, SLOW_MS)
  await app.waitForLog(isIncoming)
  app.child.kill('SIGTERM')
  await app.waitForLog(isDrainStarted)
  app.child.kill('SIGTERM')
  const [outcome, exit] = await Promise.all([response, app.exited])
  t.same(exit, { code: 143, signal: null }, 'exit 143 at once')
  t.match(outcome, { error: /ECONNRESET|socket hang up/ }, 'the request was still running when the process went')
  t.ok(app.logs.some(line => line.msg.startsWith('second signal during the drain')), 'the plugin forced it')
  t.notMatch(app.stderr(), /second SIGTERM, exiting|killed by timeout/, 'not close-with-grace')
})

t.test('with the takeover, close-with-grace keeps the signals the plugin does not handle (SIGHUP)', async t => {
  const app = await startCli(t, { options, takeOver: true })
  app.child.kill('SIGHUP')
  const exit = await app.exited
  t.same(exit, { code: 0, signal: null }, 'close-with-grace closed the app and exited 0')
  t.notOk(app.logs.some(isDrainStarted), 'no drain: SIGHUP is not the plugin\'s')
})

t.test('the server.js of `fastify eject` (close-with-grace installed before the plugin): the takeover works there too', async t => {
  const app = await startCli(t, { options, takeOver: true }, ['test/fixtures/fastify-cli/server.js'])
  t.match(app.logs.find(line => line.msg.startsWith('took the signals over')), { signals: ['SIGTERM', 'SIGINT'] })
  const response = slowRequest(t, app.port, SLOW_MS)
  await app.waitForLog(isIncoming)
  app.child.kill('SIGTERM')
  const [outcome, exit] = await Promise.all([response, app.exited])
  t.same(outcome, { status: 200, connection: 'close', body: '{"slow":true}' }, 'the in-flight request completes, told to close')
  t.same(exit, { code: 0, signal: null }, 'exit 0')
  t.match(app.logs.find(line => line.drainReport !== undefined)?.drainReport, { reason: 'SIGTERM', exitCode: 0, requests: { cut: [] } })
})
