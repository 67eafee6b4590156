// Issue 16, point 7: pipelined HTTP/1.1 requests across a drain, and probes in absolute form.
//
// Node emits 'request' for every pipelined request as soon as it has parsed it and writes
// the responses in order; a response marked `Connection: close` is its last on that socket,
// so the responses queued behind it are never written although their requests were handled
// (lib/connections/socket-internals.ts, closeAfterResponse). The rule under test: the last
// response on a socket says `Connection: close`, earlier ones do not, and no request is lost.
import t, { type Test } from 'tap'
import { once } from 'node:events'
import type { Socket } from 'node:net'
import { killChild, startChild, type RunningChild } from './helpers/child.js'
import { connectRaw, readResponse, requestHead } from './helpers/http.js'

interface Answer { status: number, connection: string | undefined, body: string }

async function start (test: Test, options: object): Promise<RunningChild> {
  const running = await startChild('app.ts', {
    FIXTURE: JSON.stringify({ trace: true, options: { gracePeriod: 10_000, quietPeriod: 0, closeTimeout: 1000, exitMargin: 500, ...options } })
  })
  test.teardown(() => killChild(running))
  return running
}

const drainStarted = (line: { msg: string }): boolean => line.msg.startsWith('drain started')
const get = (path: string): string => requestHead(path, '\r\n')
const entered = (running: RunningChild, url: string): Promise<unknown> =>
  running.waitForMessage(m => m.event === 'request' && m.url === url)

/**
 * Every response the server writes on `socket` until it ends the socket (the drain does, after
 * its last response), parsed in order. Content-Length framed, as the fixture's JSON answers are.
 */
async function allResponses (socket: Socket): Promise<{ answers: Answer[], endedBy: string }> {
  const chunks: Buffer[] = []
  socket.on('data', (chunk: Buffer) => chunks.push(chunk))
  const endedBy = await new Promise<string>(resolve => {
    socket.once('end', () => resolve('end'))
    socket.once('error', (error: Error & { code?: string }) => resolve(error.code ?? error.message))
  })
  let data = Buffer.concat(chunks)
  const answers: Answer[] = []
  for (;;) {
    const end = data.indexOf('\r\n\r\n')
    if (end === -1) break
    const [statusLine = '', ...lines] = data.subarray(0, end).toString('latin1').split('\r\n')
    const headers = new Map(lines.map(line => [line.slice(0, line.indexOf(':')).toLowerCase(), line.slice(line.indexOf(':') + 1).trim()]))
    const length = Number(headers.get('content-length') ?? 0)
    answers.push({ status: Number(statusLine.split(' ')[1]), connection: headers.get('connection'), body: data.subarray(end + 4, end + 4 + length).toString() })
    data = data.subarray(end + 4 + length)
  }
  return { answers, endedBy }
}

/** One request on a connection of its own, answered and closed: every handler that could run has run by then. */
async function roundTrip (running: RunningChild): Promise<void> {
  const socket = await connectRaw(running)
  const closed = once(socket, 'close')
  const response = readResponse(socket)
  socket.write(requestHead('/', 'Connection: close\r\n\r\n'))
  await response
  await closed
}

t.test('three requests pipelined during the drain: all answered, only the last says Connection: close', async t => {
  const running = await start(t, { drainDelay: 3000 })
  running.kill('SIGTERM')
  await running.waitForLog(drainStarted)
  const socket = await connectRaw(running)
  t.teardown(() => socket.destroy())
  const read = allResponses(socket)
  // The first is slow, so the two behind it are handled (and their answers queued) before it is written.
  socket.write(get('/slow?ms=300') + get('/') + get('/port'))
  const { answers, endedBy } = await read
  t.same(answers.map(a => a.status), [200, 200, 200], 'three requests, three answers: none lost')
  t.same(answers.map(a => a.connection), ['keep-alive', 'keep-alive', 'close'], 'Connection: close on the last response only')
  t.equal(endedBy, 'end', 'the server ended the socket after the last response')
  t.equal((await running.exited).code, 0)
  t.match(running.report(), { requests: { servedDuringDrain: 3, cut: [] } })
})

t.test('a request pipelined behind a response the drain had marked: the mark moves to it, both are answered', async t => {
  const running = await start(t, { drainDelay: 3000 })
  running.kill('SIGTERM')
  await running.waitForLog(drainStarted)
  const socket = await connectRaw(running)
  t.teardown(() => socket.destroy())
  const read = allResponses(socket)
  // The first request is the last on its socket when it arrives, so it is marked Connection: close.
  // Its handler holds its headers back for 800 ms; the second request is written as soon as the
  // first has entered its route, far inside that window.
  socket.write(get('/slow?ms=800'))
  await entered(running, '/slow?ms=800')
  socket.write(get('/port'))
  const { answers, endedBy } = await read
  t.same(answers.map(a => a.status), [200, 200], 'both answered: the one behind the marked response is not lost')
  t.same(answers.map(a => a.connection), ['keep-alive', 'close'])
  t.equal(endedBy, 'end')
  t.equal((await running.exited).code, 0)
})

t.test('in flight at SIGTERM, all three pipelined requests unanswered: the last one carries Connection: close', async t => {
  const running = await start(t, { drainDelay: 500 })
  const socket = await connectRaw(running)
  t.teardown(() => socket.destroy())
  const read = allResponses(socket)
  socket.write(get('/slow?ms=1500') + get('/slow?ms=1501') + get('/slow?ms=1502'))
  await Promise.all(['/slow?ms=1500', '/slow?ms=1501', '/slow?ms=1502'].map(url => entered(running, url)))
  running.kill('SIGTERM')
  const { answers, endedBy } = await read
  t.same(answers.map(a => a.status), [200, 200, 200])
  t.same(answers.map(a => a.connection), ['keep-alive', 'keep-alive', 'close'])
  t.equal(endedBy, 'end')
  t.equal((await running.exited).code, 0)
  t.match(running.report(), { requests: { inFlightAtStart: 3, cut: [] } })
})

t.test('in flight at SIGTERM, the first slow and the two behind it already answered: none is lost', async t => {
  // The case. The two fast answers went out (queued) with keep-alive before the drain,
  // so no response can carry Connection: close now: marking the slow first one would make Node
  // drop the two behind it. The socket is ended after the last response instead, once the
  // listener is closed, and the exit is clean.
  const running = await start(t, { drainDelay: 500 })
  const socket = await connectRaw(running)
  t.teardown(() => socket.destroy())
  const read = allResponses(socket)
  socket.write(get('/slow?ms=2000') + get('/') + get('/port'))
  await Promise.all(['/slow?ms=2000', '/', '/port'].map(url => entered(running, url)))
  // The two fast handlers have written their answers once the server has been round its loop.
  await roundTrip(running)
  running.kill('SIGTERM')
  const { answers, endedBy } = await read
  t.same(answers.map(a => a.status), [200, 200, 200], 'all three answered')
  t.not(answers[0]?.connection, 'close', 'the slow first response is not marked: two responses follow it')
  t.equal(endedBy, 'end', 'the server ended the socket after the last one (the listener was closed by then)')
  t.equal((await running.exited).code, 0)
  t.match(running.report(), { requests: { cut: [] }, connections: { destroyed: 0 } })
})

t.test('a probe in absolute form (GET http://host/readyz) is a probe: not work, not traffic', async t => {
  // quietPeriod set: traffic after drainDelay would extend the delay, and be counted as served.
  const running = await start(t, { drainDelay: 1000, quietPeriod: 1000 })
  const socket = await connectRaw(running)
  t.teardown(() => socket.destroy())
  socket.on('error', () => {})
  const probe = async (): Promise<Answer> => {
    const response = readResponse(socket)
    socket.write('GET http://127.0.0.1/readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
    const { status, headers, body } = await response
    return { status, connection: headers.connection as string | undefined, body }
  }
  const before = await probe()
  t.equal(before.status, 200, 'Fastify routes it to the readiness probe')
  running.kill('SIGTERM')
  await running.waitForLog(drainStarted)
  const during = await probe()
  t.match(during, { status: 503, connection: 'close' }, 'during the drain: not ready, and told to close')
  t.match(JSON.parse(during.body), { status: 'draining' })
  t.equal((await running.exited).code, 0)
  t.match(running.report(), {
    requests: { servedDuringDrain: 0, cut: [] },
    // A probe is not traffic: the delay ends at drainDelay, not a quiet period after the probe.
    delay: { endedBy: 'delay' },
    connections: { destroyed: 0 }
  })
})

t.test('a client that pipelines and hangs up: the requests queued behind the first stop counting as in flight', async t => {
  // Node emits 'close' only on the response it is writing; the two queued behind it never emit
  // anything. Counted in flight for ever, they would hold every later quiet period to its cap.
  const running = await start(t, { drainDelay: 500 })
  const socket = await connectRaw(running)
  socket.on('error', () => {})
  socket.write(get('/slow?ms=400') + get('/slow?ms=401') + get('/slow?ms=402'))
  await Promise.all(['/slow?ms=400', '/slow?ms=401', '/slow?ms=402'].map(url => entered(running, url)))
  const gone = once(socket, 'close')
  socket.destroy()
  await gone
  // The server has seen the hang-up once it has been round its loop a few times: a whole
  // connection, request and answer on another socket take that many turns.
  await roundTrip(running)
  const probe = await connectRaw(running)
  t.teardown(() => probe.destroy())
  const state = readResponse(probe)
  probe.write(requestHead('/state', 'Connection: close\r\n\r\n'))
  t.equal(JSON.parse((await state).body).inFlight, 1, 'only the /state request itself is in flight')
  running.kill('SIGTERM')
  t.equal((await running.exited).code, 0)
})
