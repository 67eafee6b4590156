/**
 * Process plumbing shared by bench/overhead.ts and bench/drain.ts: pinning to
 * cores, starting a TypeScript server and reading its `{ port }` line, and
 * stopping exactly the processes we started, by PID.
 */
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process'
import { once } from 'node:events'
import { availableParallelism, loadavg } from 'node:os'
import { readFileSync } from 'node:fs'

/** Which cores the server and the load generator get, or undefined where the machine cannot separate them. */
export interface Pinning { server: string, load: string }

/**
 * Server on core 0, load generator on the last core, when `taskset` exists
 * and there are at least two cores; otherwise both float (and we say so).
 */
export function pinning (): Pinning | undefined {
  const cores = availableParallelism()
  if (cores < 2) return undefined
  if (spawnSync('taskset', ['-V']).status !== 0) return undefined
  return { server: '0', load: String(cores - 1) }
}

/** `[command, ...args]` wrapped in `taskset -c <cpus>` when a core is given. */
export function pinned (cpus: string | undefined, command: string, args: string[]): [string, string[]] {
  return cpus === undefined ? [command, args] : ['taskset', ['-c', cpus, command, ...args]]
}

export interface Started {
  child: ChildProcess
  pid: number
  /** The handshake line the process printed: `{"port":n}` or `{"ready":true}`. */
  hello: Record<string, unknown>
  /** Lines printed after the handshake. */
  lines: string[]
  stderr: () => string
}

/**
 * Spawns `node [--import tsx] script` (taskset execs node, so the PID is node's)
 * and waits for its handshake line on stdout.
 */
export async function startNode (script: string, options: {
  cpus?: string | undefined
  env?: Record<string, string>
  nodeArgs?: string[]
  ipc?: boolean
}): Promise<Started> {
  const [command, args] = pinned(options.cpus, process.execPath,
    [...(options.nodeArgs ?? []), '--import', 'tsx', script])
  const spawnOptions: SpawnOptions = {
    env: { ...process.env, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe', ...(options.ipc === true ? ['ipc' as const] : [])]
  }
  const child = spawn(command, args, spawnOptions)
  let stderr = ''
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  const lines: string[] = []
  let buffered = ''
  let onHello: ((hello: Record<string, unknown>) => void) | undefined
  let hello: Record<string, unknown> | undefined
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk
    const parts = buffered.split('\n')
    buffered = parts.pop() ?? ''
    for (const line of parts) {
      // Log lines (pino prints JSON too) may come first: the handshake is the line with `port` or `ready`.
      if (hello === undefined && /^\{"(port|ready)":/.test(line)) {
        hello = JSON.parse(line) as Record<string, unknown>
        onHello?.(hello)
      } else {
        lines.push(line)
      }
    }
  })
  const first = await Promise.race([
    new Promise<Record<string, unknown>>(resolve => { onHello = resolve }),
    once(child, 'exit').then(([code]) => { throw new Error(`${script} exited with ${code} before its handshake:\n${stderr}`) })
  ])
  return { child, pid: child.pid as number, hello: first, lines, stderr: () => stderr }
}

/** SIGKILL by PID if still running, and wait for it to be gone. */
export async function stop (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const gone = once(child, 'exit')
  child.kill('SIGKILL')
  await gone
}

/** Median of a non-empty list. */
export function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] as number : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2
}

/**
 * A 95 % interval for the median of `values` (percentile bootstrap, 2,000
 * resamples, seeded so a run prints the same interval for the same samples).
 * It says how far the median of paired ratios can be trusted: a ratio whose
 * interval excludes 1 differs from bare in that run; one whose interval
 * includes it does not.
 */
export function medianInterval (values: number[], resamples = 2000): [number, number] {
  let seed = 0x2545f491
  const random = (): number => {
    // xorshift32: deterministic, good enough to pick indexes.
    seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5
    return (seed >>> 0) / 0x100000000
  }
  const medians: number[] = []
  for (let r = 0; r < resamples; r++) medians.push(median(values.map(() => values[Math.floor(random() * values.length)] as number)))
  medians.sort((a, b) => a - b)
  return [medians[Math.floor(resamples * 0.025)] as number, medians[Math.ceil(resamples * 0.975) - 1] as number]
}

/** The machine, for the figures' header: CPU model, cores, Node, load. */
export function machine (): string {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8')
  const model = /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? 'unknown CPU'
  const kernel = readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim()
  return `${model}, ${availableParallelism()} cores, Linux ${kernel}, Node ${process.version}, load average ${loadavg().map(l => l.toFixed(2)).join(' ')}`
}

/** Installed version of a package, read from its package.json. */
export function version (name: string): string {
  try {
    return (JSON.parse(readFileSync(new URL(`../../node_modules/${name}/package.json`, import.meta.url), 'utf8')) as { version: string }).version
  } catch {
    return 'not installed'
  }
}

/** Formats a table as GitHub markdown. */
export function table (header: string[], rows: Array<Array<string | number>>): string {
  return [
    `| ${header.join(' | ')} |`,
    `| ${header.map(() => '---').join(' | ')} |`,
    ...rows.map(row => `| ${row.join(' | ')} |`)
  ].join('\n')
}
