import type { FastifyBaseLogger, FastifyInstance } from 'fastify'

/** The part of the drain an app.close() during it needs. */
export interface ClosingDrain {
  readonly running: boolean
  readonly appClosed: Promise<void>
}

type Close = FastifyInstance['close']

/**
 * `app.close()` called by the app during a drain (or by a library such as
 * close-with-grace) joins the drain instead of cutting it short: Fastify's
 * close() would close the listener at once, refuse the connections the load
 * balancer still sends, and answer 503 on kept-alive ones (docs/design.md,
 * "Traps"). The delay and the in-flight wait go on as planned; the call
 * settles when the drain's own fastify.close() does.
 *
 * Returns Fastify's own close, which only the drain calls from now on.
 */
export function joinAppClose (app: FastifyInstance, drain: ClosingDrain, log: FastifyBaseLogger): () => Promise<void> {
  // Fastify's close() is overloaded (promise, or callback and chaining); both are passed through as they are.
  const close = app.close as unknown as (this: FastifyInstance, callback?: unknown) => unknown
  const original = async (): Promise<void> => { await close.call(app) }
  const joining = function (this: FastifyInstance, callback?: (err?: Error) => void) {
    if (!drain.running) return close.call(this, callback)
    log.info('app.close() during the drain: it joins the drain, which closes the app after the last response')
    if (typeof callback !== 'function') return drain.appClosed
    drain.appClosed.then(() => callback(), callback)
    return this
  }
  app.close = joining as unknown as Close
  return original
}
