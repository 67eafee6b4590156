// Issue 13, point 8: every listener Fastify opens is drained. `listen({ host: 'localhost' })`
// makes Fastify open a second server beside `app.server` when localhost resolves to both
// 127.0.0.1 and ::1; a request on the ::1 server gets the same drain as any other: Connection:
// close, the listener refused after the delay, idle sockets closed, the in-flight request
// waited for, and all of it in the report.
import t, { type Test } from 'tap'
import { execFileSync } from 'node:child_process'
import { once } from 'node:events'
import { connect } from 'node:net'
import { Pool } from 'undici'
import { killChild, startChild, type RunningChild } from './helpers/child.js'
import { errorCode, get, howClosed } from './helpers/http.js'

// ::1 must be usable here; localhost may resolve to 127.0.0.1 alone (this sandbox's hosts file):
// then the fixture resolves it to both in its own process, as most hosts files do.
const mapped = execFileSync('getent', ['ahosts', 'localhost'], { encoding: 'utf8' }).includes('::1')

async function start (test: Test, options: object): Promise<RunningChild> {
  const running = await startChild('localhost-app.ts', {
    FIXTURE: JSON.stringify({ bothAddresses: !mapped, options: { gracePeriod: 10_000, quietPeriod: 0, closeTimeout: 1000, exitMargin: 500, ...options } })
  })
  test.teardown(() => killChild(running))
  return running
}

const pool = (test: Test, host: string, port: number): Pool => {
  const p = new Pool(`http://${host}:${port}`, { connections: 1, keepAliveTimeout: 60_000, keepAliveMaxTimeout: 60_000 })
  test.teardown(() => p.destroy())
  return p
}

t.test('the ::1 server Fastify opened for localhost: in-flight request completes with Connection: close, then refused, exit 0', async t => {
  const running = await start(t, { drainDelay: 500 })
  const v6 = pool(t, '[::1]', running.port)
  const v4 = pool(t, '127.0.0.1', running.port)
  t.equal(JSON.parse((await get(v6, '/')).body).local, '::1', 'a server listens on ::1')
  t.equal(JSON.parse((await get(v4, '/')).body).local, '127.0.0.1', 'and one on 127.0.0.1')
  // An idle keep-alive socket on each server: both must be closed with a FIN, not held.
  const idle = connect({ host: '::1', port: running.port })
  await once(idle, 'connect')
  t.teardown(() => idle.destroy())
  const idleAnswer = once(idle, 'data')
  idle.write('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n')
  await idleAnswer
  const idleClosed = howClosed(idle)
  // In flight on ::1 when the signal comes, and long after the delay (500 ms): the drain must wait for it.
  const slow = get(v6, '/slow?ms=2500')
  await running.waitForMessage(m => m.event === 'request' && m.url === '/slow?ms=2500')
  running.kill('SIGTERM')
  t.equal(await idleClosed, 'end', 'the idle ::1 socket got a FIN once the delay was over')
  // The idle scan runs right after the listeners closed, so by now the ::1 listener is closed too,
  // while the slow request keeps the process alive.
  t.equal(await errorCode(() => get(pool(t, '[::1]', running.port), '/')), 'ECONNREFUSED', 'the ::1 listener refuses')
  t.equal(await errorCode(() => get(pool(t, '127.0.0.1', running.port), '/')), 'ECONNREFUSED', 'and so does the 127.0.0.1 one')
  const response = await slow
  t.equal(response.status, 200, 'the in-flight request on ::1 completed')
  t.equal(response.headers.connection, 'close', 'with Connection: close')
  const exit = await running.exited
  t.equal(exit.code, 0)
  t.match(running.report(), {
    requests: { inFlightAtStart: 1, cut: [] },
    // The ::1 sockets (the pool's, the idle one) and the 127.0.0.1 pool's, all closed gracefully.
    connections: { openAtStart: 3, destroyed: 0 }
  })
})

t.test('a request hanging on the ::1 server is cut at the budget and named, like any other', async t => {
  const running = await start(t, { drainDelay: 200, gracePeriod: 3000, closeTimeout: 500, exitMargin: 500 })
  const v6 = pool(t, '[::1]', running.port)
  const hang = errorCode(() => get(v6, '/slow?ms=60000'))
  await running.waitForMessage(m => m.event === 'request' && m.url === '/slow?ms=60000')
  running.kill('SIGTERM')
  const exit = await running.exited
  t.equal(exit.code, 1, 'exit 1: a request was cut')
  t.not(await hang, 'resolved')
  t.match(running.report(), { requests: { cut: ['GET /slow'] }, connections: { destroyed: 1 } })
})
