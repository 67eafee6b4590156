import { fork, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { performance } from 'node:perf_hooks'

export interface LogLine {
  level: number
  msg: string
  [key: string]: unknown
}

export interface RunningChild {
  child: ChildProcess
  port: number
  origin: string
  /** Parsed pino lines printed so far. */
  logs: LogLine[]
  /** IPC messages received after the port handshake. */
  messages: unknown[]
  /** Sends `signal` and records when, so `exited` can say how long the exit took. */
  kill (signal: NodeJS.Signals): void
  /** Resolves when the process is gone: its exit code, signal and ms since the first kill(). */
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null, ms: number }>
  /** The drain report line, once logged. */
  report (): Record<string, any> | undefined
}

const fixtures = fileURLToPath(new URL('../fixtures/', import.meta.url))

/**
 * Forks a TypeScript fixture with an IPC channel, waits for its `{ port }`
 * handshake and collects its JSON log lines. The fixtures import the built
 * package, so the tests exercise what ships.
 */
export async function startChild (fixture: string, env: Record<string, string> = {}): Promise<RunningChild> {
  const child = fork(fixtures + fixture, {
    execArgv: ['--import', 'tsx'],
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc']
  })
  const logs: LogLine[] = []
  const messages: unknown[] = []
  let stderr = ''
  let buffered = ''
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk
    const lines = buffered.split('\n')
    buffered = lines.pop() ?? ''
    for (const line of lines) {
      try { logs.push(JSON.parse(line)) } catch { /* not a log line */ }
    }
  })
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  let killedAt: number | undefined
  const exited = once(child, 'exit').then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
    ms: killedAt === undefined ? NaN : performance.now() - killedAt
  }))
  const port = await new Promise<number>((resolve, reject) => {
    child.on('message', function onMessage (message: any) {
      if (typeof message?.port === 'number') {
        child.off('message', onMessage)
        child.on('message', m => messages.push(m))
        resolve(message.port)
      }
    })
    exited.then(({ code }) => reject(new Error(`fixture ${fixture} exited with ${code} before listening:\n${stderr}`)), reject)
  })
  return {
    child,
    port,
    origin: `http://127.0.0.1:${port}`,
    logs,
    messages,
    kill (signal) {
      killedAt ??= performance.now()
      child.kill(signal)
    },
    exited,
    report () {
      return logs.find(line => line.drainReport !== undefined)?.drainReport as Record<string, any> | undefined
    }
  }
}

/** Teardown: kill by PID whatever is still running. */
export function killChild (running: RunningChild | undefined): void {
  if (running !== undefined && running.child.exitCode === null && running.child.signalCode === null) {
    running.child.kill('SIGKILL')
  }
}
