// The `group` option in one process without signals: validation, the coded
// errors of joining, start() on any member, the exit function called once,
// and a group that dissolves when its apps close without a drain.
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import gracefulDrain, { resolveOptions, type DrainReport, type GracefulDrainOptions } from 'fastify-graceful-drain'

const quick = { drainDelay: 0, quietPeriod: 0, gracePeriod: 5000 } as const

async function app (options: GracefulDrainOptions): Promise<FastifyInstance> {
  const instance = Fastify()
  await instance.register(gracefulDrain, options)
  return instance
}

const listeners = (): number => process.listenerCount('SIGTERM')

t.test('the option is validated like the others', async t => {
  t.same(resolveOptions({ group: 'web' }).group, { name: 'web', member: undefined })
  t.same(resolveOptions({ group: { name: 'web', member: 'admin' } }).group, { name: 'web', member: 'admin' })
  t.equal(resolveOptions({}).group, undefined)
  for (const group of [42, '', '  ', { name: '' }, { member: 'admin' }, { name: 'web', member: 7 }, { name: 'web', nam: 'x' }, ['web']]) {
    t.throws(() => resolveOptions({ group } as never), { code: 'FST_GRACEFUL_DRAIN_INVALID_OPTION', message: /`group/ }, JSON.stringify(group))
  }
})

t.test('a member with another gracePeriod is refused, naming both values, and leaves nothing behind', async t => {
  const before = listeners()
  const first = await app({ ...quick, exit: false, group: { name: 'budget', member: 'public' }, gracePeriod: 10_000 })
  t.teardown(() => first.close())
  t.equal(listeners(), before + 1, 'the group owns SIGTERM, once')
  const second = Fastify()
  t.teardown(() => second.close())
  await t.rejects(async () => await second.register(gracefulDrain, { group: { name: 'budget', member: 'admin' }, gracePeriod: 20_000 }), {
    code: 'FST_GRACEFUL_DRAIN_GROUP_MISMATCH',
    message: /member "admin" sets `gracePeriod` to 20000, but the group's `gracePeriod` is 10000 \(from its first member "public"\)/
  })
  t.equal(listeners(), before + 1, 'no listener added by the refused app')
  // The same value, or none, is fine; and so is `signals: []`, what the old way passed.
  const same = await app({ group: { name: 'budget', member: 'admin' }, gracePeriod: 10_000, signals: [] })
  await same.close()
  await t.rejects(async () => await app({ group: { name: 'budget', member: 'other' }, signals: ['SIGUSR2'] }), { code: 'FST_GRACEFUL_DRAIN_GROUP_MISMATCH', message: /`signals`/ })
  await t.rejects(async () => await app({ group: { name: 'budget', member: 'other' }, exit: true }), { code: 'FST_GRACEFUL_DRAIN_GROUP_MISMATCH', message: /`exit` to true.* is false/ })
})

t.test('two members with the same name are refused', async t => {
  const first = await app({ ...quick, exit: false, group: { name: 'names', member: 'api' } })
  t.teardown(() => first.close())
  await t.rejects(async () => await app({ group: { name: 'names', member: 'api' } }), {
    code: 'FST_GRACEFUL_DRAIN_GROUP_DUPLICATE_MEMBER',
    message: /drain group "names" already has a member named "api"/
  })
  // Unnamed members are numbered by registration order.
  const unnamed = await app({ group: 'names' })
  t.equal(unnamed.drain.group?.member, 'app-2')
  t.same(first.drain.group?.members, ['api', 'app-2'])
  await unnamed.close()
})

t.test('start() on any member drains the whole group: one start, one report, the exit function once', async t => {
  const before = listeners()
  const calls: Array<{ code: number, report: DrainReport, group: unknown }> = []
  const exit = (code: number, report: DrainReport, group?: unknown): void => { calls.push({ code, report, group }) }
  const publicApp = await app({ ...quick, exit, group: { name: 'api-start', member: 'public' } })
  const adminApp = await app({ group: { name: 'api-start', member: 'admin' } })
  await publicApp.listen({ port: 0, host: '127.0.0.1' })
  await adminApp.listen({ port: 0, host: '127.0.0.1' })
  const adminReport = await adminApp.drain.start('deploy')
  const publicReport = await publicApp.drain.start()
  t.equal(publicApp.drain.state, 'closed', 'the other member drained too')
  t.equal(publicReport.reason, 'deploy', 'with the reason of the call that started the group')
  t.equal(publicReport.startedAt, adminReport.startedAt)
  t.equal(publicReport.deadlineMs, adminReport.deadlineMs)
  await t.resolveMatch(new Promise(resolve => setImmediate(resolve)).then(() => calls.length), 1, 'the exit function is called once')
  t.equal(calls[0]?.code, 0)
  const group = publicApp.drain.group?.report
  t.equal(calls[0]?.group, group, 'with the combined report')
  t.same(Object.keys(group?.apps ?? {}), ['public', 'admin'])
  t.equal(group?.apps.admin?.exitCode, 0)
  t.equal(listeners(), before, 'the group\'s signal listeners are gone after its drain')
  // The name is free again.
  const again = await app({ ...quick, exit: false, group: 'api-start' })
  await again.close()
})

t.test('apps that close without a drain leave the group; the last one dissolves it', async t => {
  const before = listeners()
  const a = await app({ ...quick, exit: false, group: { name: 'leave', member: 'a' } })
  const b = await app({ group: { name: 'leave', member: 'b' } })
  await a.close()
  t.equal(listeners(), before + 1, 'the group still owns the signals while b is in it')
  t.same(b.drain.group?.members, ['b'])
  await b.close()
  t.equal(listeners(), before, 'gone with the last member')
  const c = await app({ ...quick, exit: false, group: { name: 'leave', member: 'a' } })
  t.same(c.drain.group?.members, ['a'], 'a new group of the same name')
  await c.close()
})
