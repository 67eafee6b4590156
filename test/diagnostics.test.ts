// diagnostics_channel: what an APM agent subscribed to the plugin's channels
// sees during a drain, clean and forced, and the message shapes it relies on.
import t, { type Test } from 'tap'
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { once } from 'node:events'
import { diagnosticsChannels } from 'fastify-graceful-drain'
import { buildApp, call } from './helpers/in-process.js'

const names = ['start', 'phase', 'forced', 'exit'] as const

/** Subscribes to every channel for the length of the test; returns what was published, in order. */
function record (t: Test): Array<[string, any]> {
  const seen: Array<[string, any]> = []
  for (const name of names) {
    const onMessage = (message: unknown): void => { seen.push([name, message]) }
    subscribe(`fastify-graceful-drain:${name}`, onMessage)
    t.teardown(() => { unsubscribe(`fastify-graceful-drain:${name}`, onMessage) })
  }
  return seen
}

t.test('the channels are exported under their documented names', async t => {
  t.same(Object.keys(diagnosticsChannels).sort(), [...names].sort())
  for (const name of names) t.equal(diagnosticsChannels[name].name, `fastify-graceful-drain:${name}`)
})

t.test('a clean drain publishes start, each phase and exit, and no forced close', async t => {
  const seen = record(t)
  const { app } = await buildApp(t, { drainDelay: 50, quietPeriod: 0, gracePeriod: 10_000 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const report = await app.drain.start('deploy')
  t.same(seen.map(([name, message]) => name === 'phase' ? `phase:${message.phase}` : name), [
    'start', 'phase:draining', 'phase:closing', 'phase:resourcesClosing', 'phase:closed', 'exit'
  ])
  const start = seen[0]?.[1]
  t.match(start, {
    reason: 'deploy',
    signal: undefined,
    startedAt: report.startedAt,
    deadlineMs: 9_000,
    drainDelay: 50,
    gracePeriod: 10_000,
    inFlight: 0,
    openConnections: Number
  })
  const phases = seen.filter(([name]) => name === 'phase').map(([, message]) => message)
  for (const message of phases) t.type(message.elapsedMs, 'number')
  t.ok(phases.every((message, i) => i === 0 || message.elapsedMs >= (phases[i - 1]?.elapsedMs ?? 0)), 'elapsedMs never goes back')
  const exit = seen.at(-1)?.[1]
  t.match(exit, { exitCode: 0, forced: false, durationMs: report.durationMs })
  t.equal(exit.report, report, 'the exit message carries the drain report')
})

t.test('a forced drain publishes what was still open, and the report names it', async t => {
  const seen = record(t)
  const { app } = await buildApp(t, { drainDelay: 0, quietPeriod: 0, gracePeriod: 2_500, closeTimeout: 1_000, exitMargin: 500 })
  app.get('/hang', () => new Promise(() => {}))
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address() as { port: number }
  const hang = call(`http://127.0.0.1:${address.port}/hang`).catch(() => 'cut')
  while (app.drain.inFlight === 0) await once(app.server, 'request')
  const report = await app.drain.start()
  const forced = seen.filter(([name]) => name === 'forced').map(([, message]) => message)
  t.equal(forced.length, 1, 'one forced message')
  t.match(forced[0], { elapsedMs: Number, inFlight: 1, openConnections: 1 })
  t.ok((forced[0]?.elapsedMs ?? 0) >= 900, 'published when the in-flight budget ran out')
  t.match(seen.at(-1)?.[1], { exitCode: 1, forced: true })
  t.same(report.requests.cut, ['GET /hang'])
  t.equal(await hang, 'cut')
})

t.test('without subscribers nothing is built or published', async t => {
  for (const name of names) t.equal(diagnosticsChannels[name].hasSubscribers, false, `${name} has no subscribers`)
  const { app } = await buildApp(t, { drainDelay: 0, quietPeriod: 0 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.equal((await app.drain.start()).exitCode, 0)
})
