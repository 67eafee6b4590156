/** The variants each bench compares, shared by the orchestrators and their server processes. */
/**
 * 'bare-again' is a second bare Fastify process: its ratio to 'bare' is what two identical
 * servers measure apart in the same run (the A/A control), the noise any other ratio sits in.
 */
export const helloVariants = ['bare', 'plugin', 'http-terminator', 'terminus', 'close-with-grace', 'naive-hooks', 'bare-again'] as const
/**
 * `baseline:<name>` is the plugin built from another checkout (`--baseline <dir>[,<dir>…]`:
 * directories with a built `dist/`, such as `git worktree`s of older commits, each named by
 * its last path segment), measured in the same run as this tree's: before/after figures
 * without a second sitting on a shared machine. Run only when asked for.
 */
export type Baseline = `baseline:${string}`
export type HelloVariant = typeof helloVariants[number] | Baseline

/**
 * 'exit' is the floor: a process that exits at the signal and lets the kernel close its sockets.
 * 'destroy-all' is the floor for anything written in JavaScript: Node's own
 * `server.closeAllConnections()` (socket.destroy() on each), then exit.
 */
export const drainVariants = ['exit', 'destroy-all', 'plugin', 'http-terminator', 'terminus', 'fastify.close()'] as const
export type DrainVariant = typeof drainVariants[number] | Baseline

export const isBaseline = (variant: string): variant is Baseline => variant.startsWith('baseline:')

/** The plugin as the server should load it: this tree's, or a baseline's (its directory in BASELINE_DIRS). */
export async function loadPlugin (variant: string): Promise<typeof import('fastify-graceful-drain').default> {
  if (!isBaseline(variant)) return (await import('fastify-graceful-drain')).default
  const name = variant.slice('baseline:'.length)
  const dir = (process.env.BASELINE_DIRS ?? '').split(',').find(d => baselineName(d) === name)
  if (dir === undefined) throw new Error(`${variant} needs its directory in BASELINE_DIRS (bench: --baseline <dir>)`)
  return (await import(new URL(`file://${dir.replace(/\/$/, '')}/dist/index.js`).href)).default
}

const baselineName = (dir: string): string => dir.replace(/\/$/, '').split('/').pop() ?? dir

/** Adds a `baseline:<name>` variant per `--baseline` directory, right after `plugin`. */
export function withBaseline<T extends string> (chosen: T[], baseline: string | undefined): Array<T | Baseline> {
  if (baseline === undefined) return chosen
  const added = baseline.split(',').filter(dir => dir !== '').map(dir => `baseline:${baselineName(dir)}` as Baseline)
  const at = chosen.indexOf('plugin' as T)
  return [...chosen.slice(0, at + 1), ...added, ...chosen.slice(at + 1)]
}
