/**
 * The drain's life cycle. Pure: no I/O, no timers; the rest of the plugin asks
 * it which transitions are allowed so that a late signal or a second `start()`
 * can never move the drain backwards.
 */
export type DrainState = 'starting' | 'ready' | 'draining' | 'closing' | 'closed'

const next: Record<DrainState, readonly DrainState[]> = {
  starting: ['ready', 'draining', 'closed'],
  ready: ['draining', 'closed'],
  draining: ['closing', 'closed'],
  closing: ['closed'],
  closed: []
}

export class StateMachine {
  #state: DrainState = 'starting'
  readonly #onChange: (from: DrainState, to: DrainState) => void

  constructor (onChange: (from: DrainState, to: DrainState) => void = () => {}) {
    this.#onChange = onChange
  }

  get current (): DrainState {
    return this.#state
  }

  /** True once the drain has begun: the instance will not serve as `ready` again. */
  get isDraining (): boolean {
    return this.#state !== 'starting' && this.#state !== 'ready'
  }

  canMoveTo (to: DrainState): boolean {
    return next[this.#state].includes(to)
  }

  /** Moves to `to` if allowed and reports whether it did. */
  moveTo (to: DrainState): boolean {
    if (!this.canMoveTo(to)) return false
    const from = this.#state
    this.#state = to
    this.#onChange(from, to)
    return true
  }
}
