import type { FastifyBaseLogger } from 'fastify'
import { InvalidOptionError } from '../errors.js'

/**
 * Work the app must finish before it takes traffic (migrations, cache warm-up,
 * a first connection): `/readyz` says `starting` while any task is pending, and
 * for good if one fails, so the startup probe gives up and the kubelet
 * restarts the pod rather than routing traffic to an app that is not ready.
 */
export class StartupTasks {
  readonly #pending = new Set<string>()
  readonly #failed = new Set<string>()
  readonly #log: FastifyBaseLogger

  constructor (log: FastifyBaseLogger) {
    this.#log = log
  }

  /** True while a task is pending or after one has failed. */
  get blocking (): boolean {
    return this.#pending.size > 0 || this.#failed.size > 0
  }

  add (name: string, task: PromiseLike<unknown>): void {
    if (typeof name !== 'string' || name.trim() === '') {
      throw new InvalidOptionError('startupTask(name)', 'a non-empty string', name)
    }
    if (typeof task?.then !== 'function') {
      throw new InvalidOptionError('startupTask(name, task)', 'a promise', task, 'e.g. startupTask(\'migrations\', migrate())')
    }
    // Two tasks with one name would let the first to settle hide the other.
    const key = this.#pending.has(name) ? `${name}#${this.#pending.size}` : name
    this.#pending.add(key)
    Promise.resolve(task).then(
      () => { this.#pending.delete(key) },
      (error: unknown) => {
        this.#pending.delete(key)
        this.#failed.add(key)
        this.#log.error({ task: key, err: error }, `startup task "${key}" failed: readiness stays 'starting'`)
      }
    )
  }
}
