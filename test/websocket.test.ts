// WebSockets (@fastify/websocket) across a drain: served normally during the
// delay, then close code 1001 "going away" when the listener closes; a peer
// that never answers the close frame is destroyed at the budget and cannot
// hold the process past its deadline.
import t, { type Test } from 'tap'
import net from 'node:net'
import { once } from 'node:events'
import { performance } from 'node:perf_hooks'
import WebSocket from 'ws'
import { killChild, startChild, type RunningChild } from './helpers/child.js'

const base = { gracePeriod: 4000, drainDelay: 300, quietPeriod: 0, closeTimeout: 500, exitMargin: 200 }
const drainStarted = (line: { msg: string }): boolean => line.msg.startsWith('drain started')

async function start (t: Test, options: object = {}): Promise<RunningChild> {
  const running = await startChild('protocols.ts', { FIXTURE: JSON.stringify({ websocket: true, options: { ...base, ...options } }) })
  t.teardown(() => killChild(running))
  return running
}

t.test('WebSockets are served during the delay, then closed with 1001 after it; exit 0', async t => {
  // Long enough for an echo and a new connection inside the delay, even on a loaded machine.
  const drainDelay = 1500
  const running = await start(t, { drainDelay })
  const ws = new WebSocket(`ws://127.0.0.1:${running.port}/ws`)
  t.teardown(() => ws.terminate())
  await once(ws, 'open')
  await running.waitForMessage(m => m.entered === 'ws')
  const closed = once(ws, 'close')
  const killedAt = performance.now()
  running.kill('SIGTERM')
  await running.waitForLog(drainStarted)

  ws.send('still there?')
  const [echo] = await once(ws, 'message')
  t.equal(String(echo), 'echo still there?', 'the socket is served normally during the delay')
  // The load balancer may still route a new one here during the delay: it is accepted, and told to go away with the others.
  const late = new WebSocket(`ws://127.0.0.1:${running.port}/ws`)
  t.teardown(() => late.terminate())
  const lateClosed = once(late, 'close')
  await once(late, 'open')
  t.pass('a WebSocket opened during the delay is accepted')

  const [code, reason] = await closed
  const closedAfter = performance.now() - killedAt
  t.equal(code, 1001, 'close code 1001, going away')
  t.equal(String(reason), 'server draining', 'with a reason')
  // A lower bound cannot flake: the delay starts after the signal is received.
  t.ok(closedAfter >= drainDelay, `told to go away after drainDelay (${Math.round(closedAfter)} ms ≥ ${drainDelay} ms)`)
  t.equal((await lateClosed)[0], 1001, 'the late one gets 1001 too')

  const exit = await running.exited
  t.equal(exit.code, 0, 'exit 0: the close handshake completed')
  const report = running.report()
  t.same(report?.webSockets, { total: 2, closedGracefully: 2, destroyed: 0 }, 'report: both WebSockets closed gracefully')
  t.same(report?.requests.cut, [], 'nothing cut')
})

t.test('a WebSocket peer that never answers the close frame is destroyed at the budget; exit 1 before the deadline', async t => {
  const running = await start(t)
  const peer = await silentPeer(running)
  t.teardown(() => peer.socket.destroy())
  await running.waitForMessage(m => m.entered === 'ws')
  running.kill('SIGTERM')
  const exit = await running.exited
  t.equal(peer.closeCode(), 1001, 'the peer was sent close 1001 and never answered')
  t.equal(exit.code, 1, 'exit 1: a connection was destroyed')
  // gracePeriod − exitMargin is 3.8 s; the slack only absorbs a loaded machine.
  t.ok(exit.ms < base.gracePeriod + 1500, `exited ${Math.round(exit.ms)} ms after SIGTERM, before the grace period`)
  t.comment(`WebSocket peer ignoring the close frame: SIGTERM → exit ${Math.round(exit.ms)} ms (gracePeriod ${base.gracePeriod})`)
  const report = running.report()
  t.same(report?.webSockets, { total: 1, closedGracefully: 0, destroyed: 1 }, 'report: the WebSocket was destroyed')
  t.same(report?.requests.cut, ['(upgraded connection)'], 'report: names the upgraded connection')
})

/**
 * A WebSocket client written by hand so it can misbehave: it completes the
 * handshake, reads every frame (so no buffer fills) and never answers the close frame.
 */
async function silentPeer (running: RunningChild): Promise<{ socket: net.Socket, closeCode: () => number | undefined }> {
  const socket = net.connect(running.port, '127.0.0.1')
  await once(socket, 'connect')
  socket.on('error', () => {})
  socket.write('GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n')
  let received = Buffer.alloc(0)
  socket.on('data', (chunk: Buffer) => { received = Buffer.concat([received, chunk]) })
  return {
    socket,
    closeCode () {
      // After the 101 head, an unmasked close frame: 0x88, length, then the code.
      const head = received.indexOf('\r\n\r\n')
      const frame = received.subarray(head + 4)
      return frame[0] === 0x88 && frame.length >= 4 ? frame.readUInt16BE(2) : undefined
    }
  }
}
