// request.drainSignal: one AbortSignal for every request, aborted shortly
// before the drain's budget for in-flight requests runs out, so a handler can
// cancel its upstream call and answer instead of having its socket cut.
import t from 'tap'
import http from 'node:http'
import { once } from 'node:events'
import { performance } from 'node:perf_hooks'
import Fastify from 'fastify'
import gracefulDrain, { resolveOptions } from 'fastify-graceful-drain'
import { killChild, startChild } from './helpers/child.js'
import { requestSignalAt } from '../lib/protocols/request-signal.js'

const options = { gracePeriod: 4000, drainDelay: 300, quietPeriod: 0, closeTimeout: 500, exitMargin: 200 }

t.test('a handler cancels its slow upstream call on request.drainSignal and answers 503 before the budget; exit 0', async t => {
  // The slow upstream: it reads the request and never answers.
  let upstreamRequest: http.IncomingMessage | undefined
  const upstream = http.createServer(req => { upstreamRequest = req })
  t.teardown(() => { upstream.closeAllConnections(); upstream.close() })
  upstream.listen(0, '127.0.0.1')
  await once(upstream, 'listening')
  const address = upstream.address() as { port: number }
  const upstreamCalled = once(upstream, 'request')

  const running = await startChild('protocols.ts', {
    FIXTURE: JSON.stringify({ upstream: `http://127.0.0.1:${address.port}`, options })
  })
  t.teardown(() => killChild(running))
  const req = http.get(`${running.origin}/upstream`, { agent: false })
  t.teardown(() => req.destroy())
  await upstreamCalled
  // Not once(): the aborted request also emits 'error' (ECONNRESET), which would reject it.
  const upstreamClosed = new Promise(resolve => upstreamRequest?.on('error', () => {}).on('close', resolve))
  const killedAt = performance.now()
  running.kill('SIGTERM')

  const [res] = await once(req, 'response') as [http.IncomingMessage]
  const answeredAfter = performance.now() - killedAt
  let body = ''
  for await (const chunk of res.setEncoding('utf8')) body += chunk
  t.equal(res.statusCode, 503, 'the handler answered 503')
  t.ok(res.complete, 'the response arrived in full')
  t.match(JSON.parse(body), { error: /upstream call cancelled/ }, 'with its message')
  t.equal(res.headers['retry-after'], '1', 'and a Retry-After')
  const fireAt = requestSignalAt(resolveOptions(options))
  // A lower bound cannot flake: the signal is timed from the drain start, which follows the kill.
  t.ok(answeredAfter >= fireAt, `only once the signal fired, ${Math.round(fireAt)} ms into the drain (answered at ${Math.round(answeredAfter)} ms)`)

  await upstreamClosed
  t.pass('the upstream call was aborted: its connection closed')
  t.same(await running.waitForMessage(m => m.upstreamAborted !== undefined), { upstreamAborted: 'AbortError' }, 'undici rejected with an AbortError')
  const exit = await running.exited
  t.equal(exit.code, 0, 'exit 0: nothing was cut')
  t.same(running.report()?.requests.cut, [], 'the report names no cut request')
})

t.test('request.drainSignal is one shared signal, unaborted until the drain budget runs low', async t => {
  const app = Fastify()
  await app.register(gracefulDrain, { ...options, exit: false, signals: [] })
  const seen: AbortSignal[] = []
  app.get('/', async request => {
    seen.push(request.drainSignal)
    return { aborted: request.drainSignal.aborted }
  })
  t.teardown(() => app.close())
  t.same((await app.inject('/')).json(), { aborted: false }, 'not aborted before a drain')
  await app.inject('/')
  t.equal(seen[0], seen[1], 'the same signal for every request: nothing is created per request')
  t.not(seen[0], app.drain.signal, 'not fastify.drain.signal, which aborts at the drain start')

  const report = app.drain.start('test')
  t.notOk(seen[0]?.aborted, 'still not aborted when the drain starts')
  await report
  t.ok(seen[0]?.aborted, 'aborted by the end of the drain')
  t.equal((seen[0]?.reason as Error).name, 'AbortError', 'with an AbortError, as fetch and undici expect')
})

t.test('the margin: 1 s before the in-flight budget ends, or a tenth of it if that is shorter', async t => {
  // At the 30 s default the closers' share is derived: 3000 (budget.ts).
  t.equal(requestSignalAt(resolveOptions({})), 30_000 - 1_000 - 3_000 - 1_000, 'defaults: 1 s before gracePeriod − exitMargin − closeTimeout')
  t.equal(requestSignalAt(resolveOptions(options)), 3300 - 330, 'a 3.3 s budget: 330 ms before its end')
})
