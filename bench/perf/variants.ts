/** The variants each bench compares, shared by the orchestrators and their server processes. */
export const helloVariants = ['bare', 'plugin', 'http-terminator', 'terminus', 'close-with-grace', 'naive-hooks'] as const
export type HelloVariant = typeof helloVariants[number]

/**
 * 'exit' is the floor: a process that exits at the signal and lets the kernel close its sockets.
 * 'destroy-all' is the floor for anything written in JavaScript: Node's own
 * `server.closeAllConnections()` (socket.destroy() on each), then exit.
 */
export const drainVariants = ['exit', 'destroy-all', 'plugin', 'http-terminator', 'terminus', 'fastify.close()'] as const
export type DrainVariant = typeof drainVariants[number]
