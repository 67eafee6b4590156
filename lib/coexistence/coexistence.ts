import type { FastifyBaseLogger, FastifyInstance } from 'fastify'

/**
 * Signal handlers installed after the plugin registered: fastify-cli's
 * `fastify start` installs close-with-grace once the app's plugins have
 * loaded, so the check at registration cannot see it. On the first SIGTERM it
 * calls `fastify.close()` at once (new requests on keep-alive connections get
 * 503, the listener closes before load balancers have noticed) and exits 1
 * after its delay (500 ms by default), which cuts the drain short. Checked
 * again when the server listens, and reported once.
 */
export function warnAboutLateSignalListeners (
  app: FastifyInstance,
  signals: readonly NodeJS.Signals[],
  foreignAtInstall: ReadonlyArray<{ signal: NodeJS.Signals, listeners: number }>,
  log: FastifyBaseLogger
): void {
  if (signals.length === 0) return
  app.addHook('onListen', async () => {
    for (const signal of signals) {
      const before = foreignAtInstall.find(entry => entry.signal === signal)?.listeners ?? 0
      // One listener per signal is ours.
      const late = process.listenerCount(signal) - 1 - before
      if (late <= 0) continue
      log.warn({ signal, listeners: late }, `${late} other ${signal} listener(s) were installed after fastify-graceful-drain ` +
        '(fastify-cli\'s `fastify start` installs close-with-grace): it calls fastify.close() at the first signal and exits ' +
        'after its delay, cutting the drain short; start the app from your own entry file in production (see the Kubernetes guide)')
    }
  })
}
