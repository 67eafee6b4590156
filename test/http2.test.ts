// HTTP/2 across a drain, h2c and TLS (ALPN, with the HTTP/1.1 fallback): every
// session gets GOAWAY at the drain start, its open streams finish, new
// sessions are still served during the delay, what is open at the budget is
// destroyed, and a peer that ignores GOAWAY cannot hold the process.
import t, { type Test } from 'tap'
import http2 from 'node:http2'
import https from 'node:https'
import net from 'node:net'
import tls from 'node:tls'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { killChild, startChild, type RunningChild } from './helpers/child.js'

const ca = readFileSync(new URL('./fixtures/tls/cert.pem', import.meta.url))
const base = { gracePeriod: 4000, drainDelay: 300, quietPeriod: 0, closeTimeout: 500, exitMargin: 200 }
const drainStarted = (line: { msg: string }): boolean => line.msg.startsWith('drain started')

type Mode = 'h2c' | 'tls'

async function start (t: Test, mode: Mode, options: object = {}): Promise<RunningChild> {
  const running = await startChild('protocols.ts', { FIXTURE: JSON.stringify({ http2: mode, options: { ...base, ...options } }) })
  t.teardown(() => killChild(running))
  return running
}

function connect (t: Test, running: RunningChild, mode: Mode): http2.ClientHttp2Session {
  const session = http2.connect(`${mode === 'tls' ? 'https' : 'http'}://127.0.0.1:${running.port}`, mode === 'tls' ? { ca } : {})
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  return session
}

interface Answer { status: number, headers: http2.IncomingHttpHeaders, body: string }

function get (session: http2.ClientHttp2Session, path: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ':path': path })
    let headers: http2.IncomingHttpHeaders = {}
    let body = ''
    stream.setEncoding('utf8')
    stream.on('response', h => { headers = h })
    stream.on('data', (chunk: string) => { body += chunk })
    // Node's client ends a stream the server destroyed with a NO_ERROR GOAWAY as if it had finished: no status, then.
    stream.on('end', () => headers[':status'] === undefined
      ? reject(new Error('stream ended without a response'))
      : resolve({ status: Number(headers[':status']), headers, body }))
    stream.on('error', reject)
    // A stream cut by the server's session.destroy() closes without 'end' or 'error'.
    stream.on('close', () => reject(new Error(`stream closed before its end (RST code ${stream.rstCode ?? 'none'})`)))
  })
}

for (const mode of ['h2c', 'tls'] as const) {
  t.test(`${mode}: an in-flight stream completes with 200 after GOAWAY, new sessions are served during the delay, exit 0`, async t => {
    // Long enough for a new session inside the delay, even on a loaded machine.
    const running = await start(t, mode, { drainDelay: 1500 })
    // Node drops a Connection header on an HTTP/2 response, but says so on stderr: watch for that too.
    let stderr = ''
    running.child.stderr?.on('data', (chunk: string) => { stderr += chunk })
    const session = connect(t, running, mode)
    const goaway = once(session, 'goaway')
    // Long enough to still be open when the drain starts, even if the signal is slow to arrive.
    const inFlight = get(session, '/slow?ms=2000')
    await running.waitForMessage(m => m.entered === 'slow')
    running.kill('SIGTERM')

    const [code] = await goaway
    t.equal(code, http2.constants.NGHTTP2_NO_ERROR, 'the client sees GOAWAY, NO_ERROR, at the drain start')

    // The load balancer may still route here during the delay: a new session is served.
    await running.waitForLog(drainStarted)
    const late = connect(t, running, mode)
    const lateGoaway = once(late, 'goaway')
    const served = await get(late, '/')
    t.equal(served.status, 200, 'a session opened during the delay is served')
    t.equal(JSON.parse(served.body).httpVersion, '2.0', 'over HTTP/2')
    await lateGoaway
    t.pass('and told to go away after its first stream')

    const answer = await inFlight
    t.equal(answer.status, 200, 'the stream open at the drain start completes')
    t.same(JSON.parse(answer.body), { slow: true }, 'with its whole body')
    t.notOk('connection' in answer.headers, 'no Connection header: it is forbidden in HTTP/2')

    const exit = await running.exited
    t.notMatch(stderr, /connection header/i, 'and nobody tried to set one (Node warns when it drops it)')
    t.equal(exit.code, 0, 'exit 0: nothing was cut')
    const report = running.report()
    t.same(report?.http2Sessions, { total: 2, closedGracefully: 2, destroyed: 0 }, 'report: both sessions closed gracefully')
    t.same(report?.requests.cut, [], 'no request cut')
    t.equal(report?.requests.inFlightAtStart, 1, 'the stream was in flight at the drain start')
  })

  t.test(`${mode}: streams still open at the budget are destroyed, each counted as cut; exit 1 before the deadline`, async t => {
    const running = await start(t, mode)
    const session = connect(t, running, mode)
    const outcome = (path: string): Promise<string> => get(session, path).then(() => 'answered', (error: Error) => error.message)
    const hung = [outcome('/hang'), outcome('/hang')]
    // A stream that finishes on the same session must not be counted as cut, nor hide the others.
    t.equal((await get(session, '/slow?ms=50')).status, 200, 'a third stream on the session completes')
    await running.waitForMessage(m => m.entered === 'hang')
    running.kill('SIGTERM')
    t.same(await Promise.all(hung).then(results => results.filter(result => result === 'answered')), [], 'the hung streams are cut')
    const exit = await running.exited
    t.equal(exit.code, 1, 'exit 1: something was cut')
    // gracePeriod − exitMargin is 3.8 s; the 1.5 s slack only absorbs a loaded machine (tsx start, 2 cores).
    t.ok(exit.ms < base.gracePeriod + 1500, `exited ${Math.round(exit.ms)} ms after SIGTERM, before the grace period`)
    t.comment(`${mode} streams open at the budget: SIGTERM → exit ${Math.round(exit.ms)} ms (gracePeriod ${base.gracePeriod})`)
    const report = running.report()
    t.same(report?.http2Sessions, { total: 1, closedGracefully: 0, destroyed: 1 }, 'report: the session was destroyed')
    t.same(report?.requests.cut, ['GET /hang', 'GET /hang'], 'report: names each cut stream, not the one that completed')
  })

  t.test(`${mode}: a peer that ignores GOAWAY and keeps opening streams cannot hold the process`, async t => {
    const running = await start(t, mode)
    const peer = await hostilePeer(running, mode)
    t.teardown(() => peer.socket.destroy())
    await running.waitForMessage(m => m.entered === 'slow')
    running.kill('SIGTERM')
    const exit = await running.exited
    t.ok(peer.goaways > 0, `the peer was sent GOAWAY (${peer.goaways} frames) and ignored it`)
    t.ok(peer.opened > peer.openedBeforeGoaway, `it kept opening streams after it (${peer.opened - peer.openedBeforeGoaway})`)
    t.ok(peer.answered <= peer.openedBeforeGoaway, `only streams opened before GOAWAY were served (${peer.answered} of ${peer.opened})`)
    t.equal(exit.code, 0, 'exit 0: the ignored streams were never requests, nothing was cut')
    t.ok(exit.ms < base.gracePeriod + 1500, `exited ${Math.round(exit.ms)} ms after SIGTERM, before the grace period`)
    t.comment(`${mode} peer opening streams after GOAWAY: SIGTERM → exit ${Math.round(exit.ms)} ms, code ${exit.code} ` +
      `(gracePeriod ${base.gracePeriod}, drainDelay ${base.drainDelay})`)
    const report = running.report()
    t.equal(report?.http2Sessions?.total, 1, 'report: one session')
    t.equal(exit.code, report?.exitCode, 'exit code as reported')
  })
}

t.test('h2c: an event stream to a client that never reads (flow-control window full) cannot hold the process', async t => {
  const running = await start(t, 'h2c')
  const session = connect(t, running, 'h2c')
  const stream = session.request({ ':path': '/sse?mode=flood' })
  stream.on('error', () => {})
  // Never read: once the stream's window is used up, the server's writes back up.
  stream.pause()
  await running.waitForMessage(m => m.entered === 'sse-flood')
  running.kill('SIGTERM')
  const exit = await running.exited
  t.equal(exit.code, 1, 'exit 1: its end could never be delivered, so it was cut')
  t.ok(exit.ms < base.gracePeriod + 1500, `exited ${Math.round(exit.ms)} ms after SIGTERM, before the grace period`)
  t.comment(`h2c event stream to a client that never reads: SIGTERM → exit ${Math.round(exit.ms)} ms (gracePeriod ${base.gracePeriod})`)
  const report = running.report()
  t.same(report?.eventStreams, { total: 1, closedGracefully: 0, destroyed: 1 }, 'report: the event stream was destroyed')
  t.same(report?.http2Sessions, { total: 1, closedGracefully: 0, destroyed: 1 }, 'report: with its session')
  t.same(report?.requests.cut, ['GET /sse'], 'report: names the route')
})

t.test('tls: an HTTP/1.1 client (ALPN fallback) gets Connection: close during the drain', async t => {
  const running = await start(t, 'tls', { drainDelay: 1500 })
  const agent = new https.Agent({ keepAlive: true, ca })
  t.teardown(() => agent.destroy())
  const get1 = (): Promise<{ status: number, connection: string | undefined, body: string }> => new Promise((resolve, reject) => {
    https.get(`${running.origin}/`, { agent }, res => {
      let body = ''
      res.setEncoding('utf8').on('data', (chunk: string) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, connection: res.headers.connection, body }))
    }).on('error', reject)
  })
  const before = await get1()
  t.equal(JSON.parse(before.body).httpVersion, '1.1', 'served over HTTP/1.1 on the HTTP/2 server')
  t.equal(before.connection, 'keep-alive', 'keep-alive before the drain')
  running.kill('SIGTERM')
  await running.waitForLog(drainStarted)
  const during = await get1()
  t.equal(during.status, 200, 'served during the delay')
  t.equal(during.connection, 'close', 'told to close')
  t.equal((await running.exited).code, 0, 'exit 0')
})

/**
 * A raw HTTP/2 client that does what no polite client does: it ignores GOAWAY
 * and opens a new stream (a 300 ms request) every 40 ms until the server
 * closes the connection (at most 200). Without GOAWAY its session would never
 * be idle, and it would be held until the budget.
 */
async function hostilePeer (running: RunningChild, mode: Mode): Promise<{ socket: net.Socket, goaways: number, opened: number, openedBeforeGoaway: number, answered: number }> {
  const socket = mode === 'tls'
    ? tls.connect({ host: '127.0.0.1', port: running.port, ca, ALPNProtocols: ['h2'] })
    : net.connect(running.port, '127.0.0.1')
  await once(socket, mode === 'tls' ? 'secureConnect' : 'connect')
  socket.on('error', () => {})
  const state = { socket, goaways: 0, opened: 0, openedBeforeGoaway: 0, answered: 0 }
  const frame = (type: number, flags: number, stream: number, payload: Buffer): Buffer => {
    const head = Buffer.alloc(9)
    head.writeUIntBE(payload.length, 0, 3)
    head[3] = type
    head[4] = flags
    head.writeUInt32BE(stream, 5)
    return Buffer.concat([head, payload])
  }
  const literal = (index: number, value: string): Buffer => Buffer.concat([Buffer.from([index, value.length]), Buffer.from(value)])
  // HPACK: :method GET, :scheme, then :authority and :path as literals without indexing.
  const headers = Buffer.concat([Buffer.from([0x82, mode === 'tls' ? 0x87 : 0x86]), literal(0x01, '127.0.0.1'), literal(0x04, '/slow?ms=300')])
  socket.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), frame(0x4, 0, 0, Buffer.alloc(0))]))
  let buffered = Buffer.alloc(0)
  socket.on('data', (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk])
    while (buffered.length >= 9) {
      const length = buffered.readUIntBE(0, 3)
      if (buffered.length < 9 + length) break
      const type = buffered[3]
      const flags = buffered[4] ?? 0
      if (type === 0x4 && (flags & 0x1) === 0) socket.write(frame(0x4, 0x1, 0, Buffer.alloc(0)))
      if (type === 0x7 && state.goaways++ === 0) state.openedBeforeGoaway = state.opened
      if (type === 0x1) state.answered++
      buffered = buffered.subarray(9 + length)
    }
  })
  let stream = 1
  const open = (): void => {
    if (socket.destroyed || state.opened >= 200) return
    socket.write(frame(0x1, 0x5, stream, headers))
    stream += 2
    state.opened++
  }
  open()
  const timer = setInterval(open, 40)
  socket.on('close', () => clearInterval(timer))
  return state
}
