// A thousand server-sent event streams and long polls, each with an abort
// listener on the plugin's one shared signal (fastify.drain.signal, or
// request.drainSignal), print no MaxListenersExceededWarning, and each ends
// on its signal through a real SIGTERM drain.
import t, { type Test } from 'tap'
import net from 'node:net'
import { once } from 'node:events'
import { killChild, startChild, type RunningChild } from './helpers/child.js'

const STREAMS = 1_000
// The in-flight budget is 4 s, so request.drainSignal aborts 400 ms before it, 3.6 s into the drain; the
// second of exit margin leaves room, on a loaded machine, for ending a thousand responses and their sockets.
const options = { gracePeriod: 6_000, drainDelay: 300, quietPeriod: 0, closeTimeout: 1_000, exitMargin: 1_000 }

interface Opened { sockets: Array<{ socket: net.Socket, text: () => string, closed: Promise<unknown> }> }

/** Opens `count` requests on sockets of their own, alternately an event stream and a long poll; resolves once the app holds them all. */
async function openMany (running: RunningChild, on: 'drain' | 'request', count: number): Promise<Opened> {
  const sockets: Opened['sockets'] = []
  const allOpen = running.waitForMessage(m => m.open === count)
  // In batches, so the listen backlog (511) never overflows into SYN retries.
  for (let batch = 0; batch < count; batch += 100) {
    await Promise.all(Array.from({ length: Math.min(100, count - batch) }, async (_, i) => {
      const socket = net.connect(running.port, '127.0.0.1')
      let text = ''
      socket.setEncoding('utf8').on('data', (chunk: string) => { text += chunk })
      socket.on('error', () => {})
      const closed = once(socket, 'close')
      await once(socket, 'connect')
      socket.write(`GET /${(batch + i) % 2 === 0 ? 'sse' : 'poll'}?on=${on} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`)
      sockets.push({ socket, text: () => text, closed })
    }))
  }
  await allOpen
  return { sockets }
}

async function warnings (running: RunningChild): Promise<Array<{ name: string, message: string }>> {
  const res = await fetch(`${running.origin}/warnings`)
  return await res.json() as Array<{ name: string, message: string }>
}

async function start (t: Test): Promise<RunningChild> {
  const running = await startChild('streams-app.ts', { FIXTURE: JSON.stringify({ options, target: STREAMS }) })
  t.teardown(() => killChild(running))
  return running
}

for (const on of ['drain', 'request'] as const) {
  const name = on === 'drain' ? 'fastify.drain.signal' : 'request.drainSignal'
  t.test(`${STREAMS} streams and long polls on ${name}: no MaxListenersExceededWarning, and each ends on the signal`, async t => {
    const running = await start(t)
    const { sockets } = await openMany(running, on, STREAMS)
    t.teardown(() => { for (const { socket } of sockets) socket.destroy() })
    // Asked after the last listener was added: a warning is emitted on the next tick, long before this request is read.
    const seen = await warnings(running)
    t.same(seen.filter(warning => warning.name === 'MaxListenersExceededWarning'), [],
      `${STREAMS} abort listeners on one signal are not a leak${seen.length > 0 ? ` (other warnings: ${JSON.stringify(seen)})` : ''}`)

    running.kill('SIGTERM')
    await Promise.all(sockets.map(({ closed }) => closed))
    const ended = sockets.filter(({ text }) => /event: drain\ndata: reconnect\n\n|\{"events":\[\],"reconnect":true\}/.test(text()))
    t.equal(ended.length, STREAMS, `every stream and poll got its goodbye when ${name} aborted`)
    const exit = await running.exited
    t.equal(exit.code, 0, 'exit 0: nothing was cut')
    t.same(running.report()?.eventStreams, { total: STREAMS / 2, closedGracefully: STREAMS / 2, destroyed: 0 }, 'report: the streams closed gracefully')
  })
}
