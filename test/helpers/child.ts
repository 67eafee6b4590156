import { fork, spawn, type ChildProcess } from 'node:child_process'
import { EventEmitter, once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { performance } from 'node:perf_hooks'

export interface LogLine {
  level: number
  msg: string
  time: number
  [key: string]: unknown
}

export interface ExitInfo {
  code: number | null
  signal: NodeJS.Signals | null
  /** ms from the first kill() to the exit. */
  ms: number
}

export interface RunningChild {
  child: ChildProcess
  port: number
  /** `https://` when the fixture serves TLS. */
  origin: string
  https: boolean
  /** Parsed pino lines printed so far. */
  logs: LogLine[]
  /** IPC messages received after the port handshake. */
  messages: unknown[]
  /** Sends `signal` and records when, so `exited` can say how long the exit took. */
  kill (signal: NodeJS.Signals): void
  /** Resolves when the process is gone: its exit code, signal and ms since the first kill(). */
  exited: Promise<ExitInfo>
  /** The drain report line, once logged. */
  report (): Record<string, any> | undefined
  /** Resolves with the first log line (already printed or still to come) that matches; rejects if the child exits first. */
  waitForLog (match: (line: LogLine) => boolean): Promise<LogLine>
  /** The same for IPC messages. */
  waitForMessage (match: (message: any) => boolean): Promise<any>
}

const fixtures = fileURLToPath(new URL('../fixtures/', import.meta.url))

/**
 * Forks a TypeScript fixture with an IPC channel, waits for its `{ port }`
 * handshake and collects its JSON log lines. The fixtures import the built
 * package, so the tests exercise what ships.
 */
export async function startChild (fixture: string, env: Record<string, string> = {},
  { prefix }: { prefix?: readonly string[] } = {}): Promise<RunningChild> {
  const child = startFixture(fixture, env, prefix)
  const logs: LogLine[] = []
  const messages: unknown[] = []
  // 'log' and 'message' events let tests wait on what the child says instead of sleeping.
  const events = new EventEmitter()
  events.setMaxListeners(0)
  let stderr = ''
  let buffered = ''
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk
    const lines = buffered.split('\n')
    buffered = lines.pop() ?? ''
    for (const line of lines) {
      let parsed: LogLine
      try { parsed = JSON.parse(line) } catch { continue /* not a log line */ }
      logs.push(parsed)
      events.emit('log', parsed)
    }
  })
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  let killedAt: number | undefined
  const exited = once(child, 'exit').then(async ([code, signal]) => {
    const exitedAt = performance.now()
    await stdoutDrained(child)
    return {
      code: code as number | null,
      signal: signal as NodeJS.Signals | null,
      ms: killedAt === undefined ? NaN : exitedAt - killedAt
    }
  })
  const handshake = await new Promise<{ port: number, https?: boolean }>((resolve, reject) => {
    child.on('message', function onMessage (message: any) {
      if (typeof message?.port === 'number') {
        child.off('message', onMessage)
        child.on('message', m => { messages.push(m); events.emit('message', m) })
        resolve(message)
      }
    })
    exited.then(({ code }) => reject(new Error(`fixture ${fixture} exited with ${code} before listening:\n${stderr}`)), reject)
  })

  function waitFor<T> (kind: 'log' | 'message', seen: T[], match: (item: T) => boolean): Promise<T> {
    const found = seen.find(match)
    if (found !== undefined) return Promise.resolve(found)
    return new Promise((resolve, reject) => {
      const onItem = (item: T): void => {
        if (!match(item)) return
        events.off(kind, onItem)
        resolve(item)
      }
      events.on(kind, onItem)
      exited.then(() => {
        events.off(kind, onItem)
        reject(new Error(`fixture ${fixture} exited before the awaited ${kind}:\n${stderr}`))
      }, reject)
    })
  }

  const https = handshake.https === true
  return {
    child,
    port: handshake.port,
    https,
    origin: `${https ? 'https' : 'http'}://127.0.0.1:${handshake.port}`,
    logs,
    messages,
    kill (signal) {
      killedAt ??= performance.now()
      child.kill(signal)
    },
    exited,
    report () {
      return logs.find(line => line.drainReport !== undefined)?.drainReport as Record<string, any> | undefined
    },
    waitForLog: match => waitFor('log', logs, match),
    waitForMessage: match => waitFor('message', messages, match)
  }
}

/**
 * Starts a TypeScript fixture with its stdout and stderr piped and an IPC
 * channel. `prefix` runs it under another command (`unshare --pid --fork` for
 * PID 1), which passes the IPC channel on: Node reads it from the environment.
 */
export function startFixture (fixture: string, env: Record<string, string> = {}, prefix: readonly string[] = []): ChildProcess {
  const options = { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] as Array<'ignore' | 'pipe' | 'ipc'> }
  const [command, ...args] = prefix
  if (command === undefined) return fork(fixtures + fixture, { execArgv: ['--import', 'tsx'], ...options })
  return spawn(command, [...args, process.execPath, '--import', 'tsx', fixtures + fixture], options)
}

/**
 * 'exit' can come before the last stdout chunk (the report line) is read; wait
 * for the pipe's end so every log line is in `logs`. Bounded, because a
 * grandchild that inherited the pipe (a database server) may hold it open.
 */
async function stdoutDrained (child: ChildProcess): Promise<void> {
  const stdout = child.stdout
  if (stdout === null || stdout.readableEnded || stdout.destroyed) return
  let timer: NodeJS.Timeout | undefined
  await Promise.race([
    once(stdout, 'close').catch(() => {}),
    new Promise<void>(resolve => { timer = setTimeout(resolve, 2000) })
  ])
  clearTimeout(timer)
}

/** Teardown: kill by PID whatever is still running. */
export function killChild (running: RunningChild | undefined): void {
  if (running !== undefined && running.child.exitCode === null && running.child.signalCode === null) {
    running.child.kill('SIGKILL')
  }
}
