// The drain's life cycle: the pure StateMachine's allowed and refused
// transitions, then the same states as a real app shows them on fastify.drain.

import t from 'tap'
import Fastify from 'fastify'
import gracefulDrain from 'fastify-graceful-drain'
import type { DrainState } from 'fastify-graceful-drain'
import { StateMachine } from '../lib/state.js'

const states: DrainState[] = ['starting', 'ready', 'draining', 'closing', 'closed']
// The only forward moves; everything else (backwards, staying, skipping 'draining' after 'ready'
// except to close without a drain) is refused.
const allowed: Record<DrainState, DrainState[]> = {
  starting: ['ready', 'draining', 'closed'],
  ready: ['draining', 'closed'],
  draining: ['closing', 'closed'],
  closing: ['closed'],
  closed: []
}

/** A machine walked to `state` along allowed moves. */
function machineAt (state: DrainState, onChange?: (from: DrainState, to: DrainState) => void): StateMachine {
  const path: Record<DrainState, DrainState[]> = {
    starting: [],
    ready: ['ready'],
    draining: ['ready', 'draining'],
    closing: ['ready', 'draining', 'closing'],
    closed: ['closed']
  }
  const machine = new StateMachine(onChange)
  for (const step of path[state]) machine.moveTo(step)
  return machine
}

t.test('StateMachine: every allowed transition moves and reports the change', async t => {
  const fresh = new StateMachine()
  t.equal(fresh.current, 'starting', 'starts in starting')
  t.equal(fresh.isDraining, false)
  for (const from of states) {
    for (const to of allowed[from]) {
      const changes: Array<[DrainState, DrainState]> = []
      const machine = machineAt(from, (a, b) => changes.push([a, b]))
      changes.length = 0
      t.ok(machine.canMoveTo(to), `${from} → ${to} allowed`)
      t.equal(machine.moveTo(to), true, `${from} → ${to} moves`)
      t.equal(machine.current, to)
      t.same(changes, [[from, to]], `${from} → ${to} reported once`)
    }
  }
})

t.test('StateMachine: every other transition is refused and changes nothing', async t => {
  for (const from of states) {
    for (const to of states.filter(s => !allowed[from].includes(s))) {
      let changes = 0
      const machine = machineAt(from, () => changes++)
      changes = 0
      t.notOk(machine.canMoveTo(to), `${from} → ${to} refused`)
      t.equal(machine.moveTo(to), false, `${from} → ${to} does not move`)
      t.equal(machine.current, from, `${from} → ${to} leaves the state alone`)
      t.equal(changes, 0, `${from} → ${to} reports nothing`)
    }
  }
})

t.test('StateMachine: isDraining is true from draining on, for good', async t => {
  for (const state of states) {
    t.equal(machineAt(state).isDraining, state !== 'starting' && state !== 'ready', state)
  }
})

t.test('a real app: starting → ready → draining → closing → closed', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  // No delay and no quiet period: nothing connects, so the drain runs straight through.
  await app.register(gracefulDrain, { exit: false, signals: [], drainDelay: 0, quietPeriod: 0 })
  let stateInOnClose: DrainState | undefined
  app.addHook('onClose', async instance => { stateInOnClose = instance.drain.state })
  app.get('/', async () => 'ok')

  t.equal(app.drain.state, 'starting', 'registered, not listening')
  await app.ready()
  t.equal(app.drain.state, 'starting', 'ready() is not listening: still starting')
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.equal(app.drain.state, 'ready', 'listening')

  const { signal } = app.drain
  let aborts = 0
  signal.addEventListener('abort', () => aborts++)
  t.equal(signal.aborted, false, 'signal not aborted before the drain')

  const first = app.drain.start('deploy')
  t.equal(app.drain.state, 'draining', 'draining at once, synchronously')
  t.equal(signal.aborted, true, 'signal aborted at the start')
  t.equal(aborts, 1, 'abort event fired once')
  t.match(signal.reason, { message: /drain started: deploy/ }, 'the abort reason names the drain reason')
  t.equal(app.drain.signal, signal, 'the same AbortSignal before and after')

  const second = app.drain.start('again')
  t.equal(second, first, 'start() twice returns the same promise')
  t.equal(app.drain.report, undefined, 'no report while draining')

  const report = await first
  t.equal(app.drain.state, 'closed', 'closed once the report resolves')
  t.equal(stateInOnClose, 'closing', 'the app’s onClose hooks run in the closing phase')
  t.equal(report.reason, 'deploy', 'the first reason wins')
  t.equal(report.exitCode, 0)
  t.equal(app.drain.report, report, 'the report stays readable')
  t.equal(aborts, 1, 'the signal aborted only once')
  t.equal(await app.drain.start('later'), report, 'start() after the end resolves the same report')
  t.equal(app.drain.state, 'closed', 'a later start() does not move a closed drain')
  t.equal(app.server.listening, false, 'the listener is closed')
})

t.test('a drain started before listen goes straight from starting to draining', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(gracefulDrain, { exit: false, signals: [], drainDelay: 0, quietPeriod: 0 })
  await app.ready()
  const report = app.drain.start()
  t.equal(app.drain.state, 'draining')
  t.equal((await report).reason, 'api', 'start() without a reason says api')
  t.equal(app.drain.state, 'closed')
})

t.test('an app closed without a drain ends in closed and leaves its signal alone', async t => {
  const app = Fastify()
  await app.register(gracefulDrain, { exit: false, signals: [] })
  await app.listen({ port: 0, host: '127.0.0.1' })
  await app.close()
  t.equal(app.drain.state, 'closed')
  t.equal(app.drain.signal.aborted, false, 'no drain started, so handlers were not told to stop')
  t.equal(app.drain.report, undefined, 'no drain, no report')
})
