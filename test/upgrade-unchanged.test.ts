// Issue 13, point 1: registering the plugin never changes how the app answers. The same raw
// requests go to the same app with and without the plugin, and the answers must be the
// same, byte for byte but for the Date header. Above all the `Upgrade` header: Node hands
// such a request to the server's 'upgrade' listeners when there is one and answers it as a
// normal request when there is none, so a tracker listening for upgrades on an app without
// a WebSocket handler left `curl --http2` (Upgrade: h2c) and `Upgrade: websocket` unanswered.
// The other cases pin the other ways a server listener can change Node's answer: 'checkContinue'
// and 'checkExpectation' (Expect), 'connect' (CONNECT), 'clientError' (bad requests), 'timeout'.
import t, { type Test } from 'tap'
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { connect } from 'node:net'
import { promisify } from 'node:util'
import { killChild, startChild, type RunningChild } from './helpers/child.js'

const run = promisify(execFile)
/**
 * How long a request may go unanswered before it counts as "no answer". Generous for a loaded
 * machine (a local answer takes milliseconds); it only bounds how long a failure takes to show.
 */
const NO_ANSWER_MS = 3_000

async function start (test: Test, config: object): Promise<RunningChild> {
  const running = await startChild('upgrade-app.ts', { FIXTURE: JSON.stringify(config) })
  test.teardown(() => killChild(running))
  return running
}

/**
 * Sends `raw` on a new connection and returns everything the server wrote until it closed the
 * connection (every request below asks it to), without the Date header, or what happened instead:
 * nothing written and the connection closed, or left open for NO_ANSWER_MS.
 */
async function exchange (port: number, raw: string): Promise<string> {
  const socket = connect({ host: '127.0.0.1', port })
  await once(socket, 'connect')
  socket.on('error', () => {})
  const chunks: Buffer[] = []
  socket.on('data', (chunk: Buffer) => chunks.push(chunk))
  socket.write(raw)
  let timer: NodeJS.Timeout | undefined
  const timedOut = await Promise.race([
    once(socket, 'close').then(() => false),
    new Promise<boolean>(resolve => { timer = setTimeout(() => resolve(true), NO_ANSWER_MS) })
  ])
  clearTimeout(timer)
  socket.destroy()
  const text = Buffer.concat(chunks).toString('latin1').replace(/^Date: .*\r\n/gim, '')
  if (text !== '') return text
  return timedOut ? '(no answer, connection left open)' : '(connection closed without an answer)'
}

const host = 'Host: 127.0.0.1\r\n'
const requests: Record<string, string> = {
  'Upgrade: websocket to a plain route': `GET / HTTP/1.1\r\n${host}Connection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`,
  'Upgrade: h2c (what curl --http2 sends)': `GET / HTTP/1.1\r\n${host}Connection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n`,
  'Upgrade: websocket to a route that does not exist': `GET /nowhere HTTP/1.1\r\n${host}Connection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`,
  'Expect: 100-continue': `POST /echo HTTP/1.1\r\n${host}Connection: close\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello`,
  'Expect: something else (417)': `GET / HTTP/1.1\r\n${host}Connection: close\r\nExpect: teapot\r\n\r\n`,
  CONNECT: `CONNECT 127.0.0.1:9 HTTP/1.1\r\n${host}\r\n`,
  'a malformed header (400)': `GET / HTTP/1.1\r\n${host}Bad Header\r\n\r\n`,
  'no Host header (400)': 'GET / HTTP/1.1\r\nConnection: close\r\n\r\n',
  'HTTP/1.0': `GET / HTTP/1.0\r\n${host}\r\n`,
  'a plain keep-alive GET, then close': `GET / HTTP/1.1\r\n${host}\r\nGET / HTTP/1.1\r\n${host}Connection: close\r\n\r\n`
}

for (const websocket of [false, true]) {
  const app = websocket ? 'an app with @fastify/websocket' : 'an app without a WebSocket handler'
  t.test(`${app}: every request gets the same answer with and without the plugin`, async t => {
    const without = await start(t, { plugin: false, websocket })
    const withPlugin = await start(t, { plugin: true, websocket })
    for (const [name, raw] of Object.entries(requests)) {
      const [expected, actual] = await Promise.all([exchange(without.port, raw), exchange(withPlugin.port, raw)])
      t.equal(actual, expected, `${name}: ${expected.split('\r\n')[0] ?? ''}`)
    }
  })
}

t.test('curl --http2 (Upgrade: h2c) gets the same answer with and without the plugin', async t => {
  const without = await start(t, { plugin: false })
  const withPlugin = await start(t, { plugin: true })
  const curl = async (port: number): Promise<string> => {
    try {
      // -m: curl's own bound, far above a local answer; it only ends a request that would hang.
      const { stdout } = await run('curl', ['-s', '--http2', '-m', String(NO_ANSWER_MS / 1000), '-w', '\\n%{http_code} %{http_version}', `http://127.0.0.1:${port}/`])
      return stdout
    } catch (error) {
      return `curl failed: exit ${(error as { code?: number }).code ?? '?'}`
    }
  }
  const expected = await curl(without.port)
  t.equal(expected, '{"hello":"world"}\n200 1.1', 'without the plugin: 200 over HTTP/1.1 (no h2c upgrade handler)')
  t.equal(await curl(withPlugin.port), expected, 'with the plugin: the same')
})

for (const websocketFirst of [false, true]) {
  t.test(`@fastify/websocket registered ${websocketFirst ? 'before' : 'after'} the plugin: WebSocket upgrades still work`, async t => {
    const running = await start(t, { plugin: true, websocket: true, websocketFirst })
    const answer = await exchange(running.port, `GET /ws HTTP/1.1\r\n${host}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`)
      .catch((error: Error) => error.message)
    // The handshake answer comes, and the socket stays open (exchange() then reports what arrived).
    t.match(answer, /^HTTP\/1\.1 101 Switching Protocols\r\n/)
  })
}
