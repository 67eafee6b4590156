// One deadline, whatever hangs: for each way a drain can get stuck, the
// process is gone before gracePeriod after SIGTERM, with exit code 1 when
// something had to be cut or abandoned and 0 when nothing was lost.
import t, { type Test } from 'tap'
import type { Socket } from 'node:net'
import { killChild, startChild, type RunningChild } from './helpers/child.js'
import { connectRaw, createPool, get, idleSocket, requestHead } from './helpers/http.js'

// Small numbers so the suite is quick; the arithmetic is the real one:
// deadline = 3000 − 500 = 2500 ms, HTTP budget ends at 2500 − 1000 = 1500 ms.
const gracePeriod = 3000
const options = { gracePeriod, drainDelay: 200, quietPeriod: 0, closeTimeout: 1000, exitMargin: 500 }

const figures: Array<{ scenario: string, code: number | null, ms: number }> = []
t.teardown(() => {
  t.comment(`SIGTERM → exit (gracePeriod ${gracePeriod}, drainDelay 200, closeTimeout 1000, exitMargin 500):`)
  for (const { scenario, code, ms } of figures) t.comment(`  ${scenario}: ${ms} ms, exit code ${code}`)
})

const start = async (test: Test, extra: object = {}): Promise<RunningChild> => {
  const running = await startChild('app.ts', { FIXTURE: JSON.stringify({ trace: true, options, ...extra }) })
  test.teardown(() => killChild(running))
  return running
}

/** SIGTERM, wait for the exit, check it came before gracePeriod with `code`, and record the figure. */
async function terminate (t: Test, running: RunningChild, scenario: string, code: number, grace = gracePeriod): Promise<Record<string, any>> {
  running.kill('SIGTERM')
  // A process that outlives gracePeriod by far is the kubelet's SIGKILL: do the same, and fail clearly.
  let timer: NodeJS.Timeout | undefined
  const killed = new Promise<void>(resolve => {
    timer = setTimeout(() => { killChild(running); resolve() }, grace + 3000)
  })
  await Promise.race([running.exited, killed])
  clearTimeout(timer)
  const exit = await running.exited
  t.equal(exit.signal, null, 'exited by itself, not killed')
  const ms = Math.round(exit.ms)
  figures.push({ scenario, code: exit.code, ms })
  t.comment(`${scenario}: exit ${exit.code} after ${ms} ms`)
  // The bound is the whole promise: gone before the kubelet's SIGKILL at gracePeriod.
  t.ok(ms < grace, `exited ${ms} ms after SIGTERM, before gracePeriod (${grace} ms)`)
  t.equal(exit.code, code, `exit code ${code}`)
  const report = running.report()
  t.ok(report, 'the drain report was logged before the exit')
  t.equal(report?.exitCode, code)
  return report ?? {}
}

/** Writes the request head one byte a second, like a slowloris client; stops when the socket closes. */
function trickle (socket: Socket, text: string): void {
  let i = 0
  const timer = setInterval(() => {
    if (socket.destroyed || i >= text.length) return clearInterval(timer)
    socket.write(text[i++] ?? '')
  }, 1000)
  socket.once('close', () => clearInterval(timer))
}

t.test('a handler that never returns', async t => {
  const running = await start(t)
  const pool = createPool(running, 1)
  t.teardown(() => pool.destroy())
  const hang = get(pool, '/hang').then(() => 'answered', (error: { code?: string }) => error.code)
  await running.waitForMessage(m => m.event === 'request' && m.url === '/hang')
  const report = await terminate(t, running, 'handler that never returns (/hang)', 1)
  t.same(report.requests.cut, ['GET /hang'], 'the report names the cut route')
  t.equal(report.connections.destroyed, 1)
  t.not(await hang, 'answered')
})

t.test('a slowloris client sending its headers one byte a second', async t => {
  const running = await start(t)
  const socket = await connectRaw(running)
  t.teardown(() => socket.destroy())
  socket.on('error', () => {})
  socket.write('GET / HTTP/1.1\r\n')
  trickle(socket, 'Host: 127.0.0.1\r\nX-Slow: ' + 'a'.repeat(60) + '\r\n\r\n')
  const report = await terminate(t, running, 'slowloris (headers 1 byte/s)', 1)
  t.same(report.requests.cut, ['(incomplete request)'])
  t.equal(report.connections.destroyed, 1)
})

t.test('a client that never reads its response', async t => {
  const running = await start(t)
  const socket = await connectRaw(running)
  t.teardown(() => socket.destroy())
  socket.on('error', () => {})
  socket.pause()
  socket.write(requestHead('/big', '\r\n'))
  await running.waitForMessage(m => m.event === 'request' && m.url === '/big')
  const report = await terminate(t, running, 'client that never reads (/big, 64 MB)', 1)
  t.same(report.requests.cut, ['GET /big'])
  t.equal(report.connections.destroyed, 1)
})

t.test('a half-open keep-alive socket: the client ignores our FIN', async t => {
  const running = await start(t)
  // allowHalfOpen: the client does not answer the server's FIN with its own, as a vanished peer would not.
  const socket = await idleSocketHalfOpen(running)
  t.teardown(() => socket.destroy())
  const report = await terminate(t, running, 'half-open idle keep-alive socket (peer never FINs)', 0)
  // Nothing was on it: closing it is not a cut, so the drain is clean.
  t.same(report.requests.cut, [])
  t.equal(report.connections.destroyed, 0)
  t.equal(report.connections.closedGracefully, 1)
})

t.test('a half-open socket: the client sent its request, then closed its write side', async t => {
  const running = await start(t)
  const socket = await connectRaw(running, { allowHalfOpen: true })
  t.teardown(() => socket.destroy())
  socket.on('error', () => {})
  socket.resume()
  socket.write(requestHead('/hang', '\r\n'))
  await running.waitForMessage(m => m.event === 'request' && m.url === '/hang')
  socket.end()
  // Node aborts a request whose client half-closed (httpAllowHalfOpen is off) and ends the socket:
  // the client gave up on it, the server cut nothing, so the drain is clean.
  const report = await terminate(t, running, 'half-closed by the client after its request (/hang)', 0)
  t.same(report.requests.cut, [])
  t.equal(report.connections.destroyed, 0)
})

t.test('a client that connected and never sent a byte', async t => {
  const running = await start(t)
  const socket = await connectRaw(running)
  t.teardown(() => socket.destroy())
  socket.on('error', () => {})
  // A socket that never sent a request carries no work: it gets FRESH_SOCKET_GRACE_MS, then a FIN. Exit 0.
  const report = await terminate(t, running, 'silent fresh socket (never sends a byte)', 0)
  t.same(report.requests.cut, [])
  t.equal(report.connections.destroyed, 0)
})

t.test('a silent socket still within its grace when a short budget runs out', async t => {
  // HTTP budget: 1000 − 200 − 300 = 500 ms, shorter than the fresh-socket grace (1 s): the socket is destroyed, not ended.
  const running = await start(t, { options: { gracePeriod: 1000, drainDelay: 0, quietPeriod: 0, closeTimeout: 300, exitMargin: 200 } })
  const socket = await connectRaw(running)
  t.teardown(() => socket.destroy())
  socket.on('error', () => {})
  const report = await terminate(t, running, 'silent fresh socket, budget shorter than its grace (gracePeriod 1000)', 1, 1000)
  // Regression: the report said forced with one socket destroyed, yet the exit code was 0.
  t.match(report, { forced: true, connections: { destroyed: 1 }, requests: { cut: [] } })
})

t.test('an onClose hook that never resolves', async t => {
  const running = await start(t, { hangOnClose: true })
  const report = await terminate(t, running, 'onClose hook that never resolves', 1)
  t.equal(report.closers[0]?.name, 'fastify.close')
  t.equal(report.closers[0]?.outcome, 'timeout')
})

t.test('everything at once', async t => {
  const running = await start(t, { hangOnClose: true })
  const pool = createPool(running, 1)
  t.teardown(() => pool.destroy())
  get(pool, '/hang').catch(() => {})
  const slowloris = await connectRaw(running)
  const reader = await connectRaw(running)
  const halfOpen = await idleSocketHalfOpen(running)
  t.teardown(() => { slowloris.destroy(); reader.destroy(); halfOpen.destroy() })
  slowloris.on('error', () => {})
  reader.on('error', () => {})
  slowloris.write('GET / HTTP/1.1\r\n')
  trickle(slowloris, 'Host: 127.0.0.1\r\n\r\n')
  reader.pause()
  reader.write(requestHead('/big', '\r\n'))
  await Promise.all([
    running.waitForMessage(m => m.event === 'request' && m.url === '/hang'),
    running.waitForMessage(m => m.event === 'request' && m.url === '/big')
  ])
  const report = await terminate(t, running, 'all of the above at once', 1)
  t.same([...report.requests.cut].sort(), ['(incomplete request)', 'GET /big', 'GET /hang'])
})

async function idleSocketHalfOpen (running: RunningChild): Promise<Socket> {
  const socket = await idleSocket(running, { allowHalfOpen: true })
  socket.on('error', () => {})
  socket.resume()
  return socket
}
