/** The variants each bench compares, shared by the orchestrators and their server processes. */
export const helloVariants = ['bare', 'plugin', 'http-terminator', 'terminus', 'close-with-grace', 'naive-hooks'] as const
/**
 * `baseline` is the plugin built from another checkout (`--baseline <dir>`: a
 * directory with a built `dist/`, such as a `git worktree` of an older commit),
 * measured in the same run as this tree's: before/after figures without a
 * second sitting on a shared machine. Run only when asked for.
 */
export type HelloVariant = typeof helloVariants[number] | 'baseline'

/**
 * 'exit' is the floor: a process that exits at the signal and lets the kernel close its sockets.
 * 'destroy-all' is the floor for anything written in JavaScript: Node's own
 * `server.closeAllConnections()` (socket.destroy() on each), then exit.
 */
export const drainVariants = ['exit', 'destroy-all', 'plugin', 'http-terminator', 'terminus', 'fastify.close()'] as const
export type DrainVariant = typeof drainVariants[number] | 'baseline'

/** The plugin as the server should load it: this tree's, or the baseline's (BASELINE_DIR). */
export async function loadPlugin (variant: string): Promise<typeof import('fastify-graceful-drain').default> {
  if (variant !== 'baseline') return (await import('fastify-graceful-drain')).default
  const dir = process.env.BASELINE_DIR
  if (dir === undefined || dir === '') throw new Error('the baseline variant needs BASELINE_DIR (bench: --baseline <dir>)')
  return (await import(new URL(`file://${dir.replace(/\/$/, '')}/dist/index.js`).href)).default
}

/** Adds `baseline` right after `plugin` when `--baseline` was given. */
export function withBaseline<T extends string> (chosen: T[], baseline: string | undefined): Array<T | 'baseline'> {
  if (baseline === undefined || chosen.includes('baseline' as T)) return chosen
  const at = chosen.indexOf('plugin' as T)
  return [...chosen.slice(0, at + 1), 'baseline', ...chosen.slice(at + 1)]
}
