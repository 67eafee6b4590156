/**
 * The plugin's options for the Deployment in deployment.yaml, in one place:
 * app.ts registers them and test/kubernetes-manifests.test.ts checks that the
 * manifest agrees with them (grace period, probe paths and ports, timings).
 * Change a number here and in the manifest together; the test says which.
 */
import type { GracefulDrainOptions } from 'fastify-graceful-drain'

/** The app's port: the container's `http` port, the Service's targetPort. */
export const port = 3000

export const drainOptions = {
  // terminationGracePeriodSeconds: 45. The preStop hook's time counts against it, and the
  // preStop endpoint starts the drain, so the two clocks start together.
  gracePeriod: 45_000,
  // Behind ingress-nginx and kube-proxy, endpoint removal reaches them in 1–5 s; 10 s leaves
  // room for a busy API server, and covers the readiness probe's 2 s × 2 failures (4 s).
  // The quiet-period extension (default 2 s, or gracePeriod / 5 when less) covers the tail, and logs a warning when it had to.
  drainDelay: 10_000,
  // fastify.close() (onClose hooks: pools) and each closer get at most this much.
  closeTimeout: 5_000,
  // Probes and preStop on their own port: not in the Service, open until the exit, so the
  // kubelet reads 'draining'/'closing' instead of a refused connection.
  healthPort: 9000,
  healthHost: '0.0.0.0',
  // The preStop endpoint needs no token here: it is served only on the health port, which the
  // Service does not expose (add a NetworkPolicy or a token if other pods must not reach it).
  preStop: { path: '/prestop' },
  readiness: {
    path: '/readyz',
    // Shorter than the probe's timeoutSeconds (2 s), so a slow check yields a 503 naming it
    // rather than a probe timeout that names nothing.
    checkTimeout: 1_000,
    checkCacheTtl: 1_000
  },
  liveness: { path: '/livez' }
} satisfies GracefulDrainOptions
