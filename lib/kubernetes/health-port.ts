import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { AddressInfo } from 'node:net'
import type { Server } from 'node:http'
import { HealthPortConflictError, HealthPortInUseError } from '../errors.js'

export interface HealthPort {
  /** The port the health listener is bound to (the real one when `healthPort` is 0), once it listens. */
  readonly port: number | undefined
  /** Closes the listener and every connection on it; safe to call more than once. */
  close (): Promise<void>
}

type Listen = (...args: unknown[]) => unknown

/**
 * Serves the probes (and the preStop endpoint) on a listener of their own, a
 * second, bare Fastify instance, served there as on the main port (answered
 * before any hook, probe-first.ts), byte for byte the same. It stays open through the whole drain, after
 * the main listener has closed, so the kubelet reads `draining` instead of
 * "connection refused" (which a liveness probe would count as a failure).
 *
 * It binds just before the main server does, inside the main server's
 * `listen()`: only there is the main port known, so a `healthPort` equal to it
 * and a port already in use reject the app's own `listen()` with a coded
 * error, instead of an EADDRINUSE naming neither option.
 */
export function createHealthPort (
  main: FastifyInstance,
  port: number,
  host: string,
  probeLogLevel: string,
  log: FastifyBaseLogger,
  setup: (health: FastifyInstance) => void
): HealthPort {
  // Everything on this port logs at the probe level ('silent' by default): probes are silent by
  // design, and a preStop token in a query string must not end up in the logs.
  const health = Fastify({ loggerInstance: log.child({}, { level: probeLogLevel }), forceCloseConnections: true })
  setup(health as unknown as FastifyInstance)
  let bound: number | undefined
  let closed = false

  const server = main.server as Server & { listen: Listen }
  const listen = server.listen
  // Fastify calls `server.listen(options)` once per listen() and waits for
  // 'listening' or 'error': an 'error' we emit rejects the app's listen().
  server.listen = function (this: Server, ...args: unknown[]) {
    server.listen = listen
    const requested = requestedPort(args[0])
    if (port !== 0 && requested === port) {
      process.nextTick(() => server.emit('error', new HealthPortConflictError(port)))
      return server
    }
    health.listen({ port, host }).then(() => {
      bound = (health.server.address() as AddressInfo).port
      log.info({ healthPort: bound, healthHost: host }, 'health probes listening on their own port')
      // If the main port cannot be bound, the health listener must not keep the process alive on its own.
      const onError = (): void => { close().catch(() => {}) }
      server.once('error', onError)
      server.once('listening', () => server.removeListener('error', onError))
      listen.apply(server, args)
    }, (error: NodeJS.ErrnoException) => {
      server.emit('error', new HealthPortInUseError(port, host, error.code ?? error.message))
    })
    return server
  }

  async function close (): Promise<void> {
    if (closed) return
    closed = true
    server.listen = listen
    const wasListening = health.server.listening
    await health.close()
    if (wasListening) log.info({ healthPort: bound }, 'health listener closed')
  }

  return {
    get port () { return bound },
    close
  }
}

function requestedPort (options: unknown): number | undefined {
  const value = typeof options === 'object' && options !== null ? (options as { port?: unknown }).port : options
  const port = Number(value)
  return Number.isInteger(port) ? port : undefined
}
