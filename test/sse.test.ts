// Server-sent events and long polls across a drain: handlers end their
// responses when fastify.drain.signal aborts (SSE with a retry hint), what a
// handler leaves open is destroyed at the budget, and a client that never
// reads cannot hold the process past its deadline.
import t, { type Test } from 'tap'
import http from 'node:http'
import net from 'node:net'
import { once } from 'node:events'
import { killChild, startChild, type RunningChild } from './helpers/child.js'

const base = { gracePeriod: 4000, drainDelay: 300, quietPeriod: 0, closeTimeout: 500, exitMargin: 200 }

async function start (t: Test, options: object = {}): Promise<RunningChild> {
  const running = await startChild('protocols.ts', { FIXTURE: JSON.stringify({ options: { ...base, ...options } }) })
  t.teardown(() => killChild(running))
  return running
}

interface Streamed { status: number, headers: http.IncomingHttpHeaders, body: Promise<string> }

/** A GET whose body is read to its end (or its cut) while the test goes on. */
async function open (t: Test, running: RunningChild, path: string): Promise<Streamed> {
  const req = http.get(`${running.origin}${path}`, { agent: false })
  t.teardown(() => req.destroy())
  const [res] = await once(req, 'response') as [http.IncomingMessage]
  const body = new Promise<string>((resolve, reject) => {
    let text = ''
    res.setEncoding('utf8').on('data', (chunk: string) => { text += chunk })
    res.on('end', () => resolve(text))
    res.on('error', reject)
    res.on('close', () => { if (!res.complete) reject(new Error(`cut after ${JSON.stringify(text)}`)) })
  })
  body.catch(() => {})
  return { status: res.statusCode ?? 0, headers: res.headers, body }
}

t.test('an event stream ends on fastify.drain.signal with a retry hint; exit 0', async t => {
  const running = await start(t)
  const stream = await open(t, running, '/sse')
  t.equal(stream.headers['content-type'], 'text/event-stream', 'an event stream')
  running.kill('SIGTERM')
  const body = await stream.body
  t.match(body, /^: connected\n\n/, 'the stream was open before the drain')
  t.match(body, /retry: 2000\nevent: drain\ndata: reconnect\n\n$/, 'and ends with a retry hint, so the client reconnects (elsewhere)')
  const exit = await running.exited
  t.equal(exit.code, 0, 'exit 0')
  t.same(running.report()?.eventStreams, { total: 1, closedGracefully: 1, destroyed: 0 }, 'report: one event stream, closed gracefully')
})

t.test('a long poll answers when fastify.drain.signal aborts, with Connection: close; exit 0', async t => {
  const running = await start(t)
  const req = http.get(`${running.origin}/poll`, { agent: new http.Agent({ keepAlive: true }) })
  t.teardown(() => req.destroy())
  await running.waitForMessage(m => m.entered === 'poll')
  running.kill('SIGTERM')
  const [res] = await once(req, 'response') as [http.IncomingMessage]
  let body = ''
  for await (const chunk of res.setEncoding('utf8')) body += chunk
  t.equal(res.statusCode, 200, 'answered, not cut')
  t.same(JSON.parse(body), { events: [], reconnect: true }, 'with an empty result: poll again')
  t.equal(res.headers.connection, 'close', 'Connection: close, so the next poll goes to a new connection (elsewhere)')
  const exit = await running.exited
  t.equal(exit.code, 0, 'exit 0')
  t.same(running.report()?.requests.cut, [], 'nothing cut')
})

t.test('an event stream its handler never ends is destroyed at the budget; exit 1', async t => {
  const running = await start(t)
  const stream = await open(t, running, '/sse?mode=ignore')
  running.kill('SIGTERM')
  await t.rejects(stream.body, /cut after|aborted/, 'the stream is cut')
  const exit = await running.exited
  t.equal(exit.code, 1, 'exit 1: a request was cut')
  t.ok(exit.ms < base.gracePeriod + 1500, `exited ${Math.round(exit.ms)} ms after SIGTERM, before the grace period`)
  t.comment(`event stream whose handler ignores the drain signal: SIGTERM → exit ${Math.round(exit.ms)} ms (gracePeriod ${base.gracePeriod})`)
  const report = running.report()
  t.same(report?.eventStreams, { total: 1, closedGracefully: 0, destroyed: 1 }, 'report: the event stream was destroyed')
  t.same(report?.requests.cut, ['GET /sse'], 'report: names the route')
})

t.test('an event stream to a client that never reads (full socket buffers) cannot hold the process', async t => {
  const running = await start(t)
  const socket = net.connect(running.port, '127.0.0.1')
  t.teardown(() => socket.destroy())
  await once(socket, 'connect')
  socket.on('error', () => {})
  socket.write('GET /sse?mode=flood HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
  // Never read: the kernel buffers on both sides fill and the handler's writes back up.
  socket.pause()
  await running.waitForMessage(m => m.entered === 'sse-flood')
  running.kill('SIGTERM')
  const exit = await running.exited
  t.equal(exit.code, 1, 'exit 1: its end could never be delivered, so it was cut')
  t.ok(exit.ms < base.gracePeriod + 1500, `exited ${Math.round(exit.ms)} ms after SIGTERM, before the grace period`)
  t.comment(`event stream to a client that never reads: SIGTERM → exit ${Math.round(exit.ms)} ms (gracePeriod ${base.gracePeriod})`)
  const report = running.report()
  t.same(report?.eventStreams, { total: 1, closedGracefully: 0, destroyed: 1 }, 'report: the event stream was destroyed')
  t.same(report?.requests.cut, ['GET /sse'], 'report: names the route')
})

t.test('examples/sse.ts: its event stream and long poll end on SIGTERM, and it exits 0', async t => {
  const running = await startChild('../../examples/sse.ts', { PORT: '0', DRAIN_DELAY_MS: '200', GRACE_PERIOD_MS: '10000' })
  t.teardown(() => killChild(running))
  const events = await open(t, running, '/events')
  const poll = new Promise<http.IncomingMessage>((resolve, reject) => {
    const req = http.get(`${running.origin}/poll`, { agent: false }, resolve).on('error', reject)
    t.teardown(() => req.destroy())
  })
  await running.waitForLog(line => (line.req as { url?: string } | undefined)?.url === '/poll')
  running.kill('SIGTERM')
  let polled = ''
  for await (const chunk of (await poll).setEncoding('utf8')) polled += chunk
  t.same(JSON.parse(polled), { events: [] }, 'the long poll answers at once: nothing yet, poll again')
  t.match(await events.body, /retry: \d+\nevent: goodbye\ndata: server draining\n\n$/, 'the stream says goodbye with a retry hint')
  t.equal((await running.exited).code, 0, 'exit 0')
  t.same(running.report()?.eventStreams, { total: 1, closedGracefully: 1, destroyed: 0 }, 'report: the stream closed gracefully')
})
