// In-process apps for the Kubernetes tests that need no signal: a real
// listener on 127.0.0.1, real sockets through undici, the logs captured as
// parsed pino lines. `exit: false` and `signals: []` keep the test process
// alive and its signal handlers untouched.
import { Writable } from 'node:stream'
import { EventEmitter } from 'node:events'
import Fastify, { type FastifyInstance } from 'fastify'
import { request } from 'undici'
import type { Test } from 'tap'
import gracefulDrain, { type GracefulDrainOptions } from 'fastify-graceful-drain'

export interface LogLine { level: number, msg: string, [key: string]: unknown }

export interface InProcessApp {
  app: FastifyInstance
  logs: LogLine[]
  /** The main server's origin, once listening. */
  origin: () => string
  /** Resolves with the first log line (already logged or to come) that matches. */
  waitForLog: (match: (line: LogLine) => boolean) => Promise<LogLine>
}

/** Builds (does not listen) an app with the plugin; closes it at teardown. */
export async function buildApp (t: Test, options: GracefulDrainOptions = {}): Promise<InProcessApp> {
  const logs: LogLine[] = []
  const logged = new EventEmitter()
  const stream = new Writable({
    write (chunk: Buffer, _encoding, done) {
      for (const text of chunk.toString().split('\n')) {
        if (text === '') continue
        const line = JSON.parse(text) as LogLine
        logs.push(line)
        logged.emit('line', line)
      }
      done()
    }
  })
  const app = Fastify({ logger: { level: 'info', stream } })
  await app.register(gracefulDrain, { exit: false, signals: [], ...options })
  t.teardown(() => app.close())
  return {
    app,
    logs,
    waitForLog (match) {
      const found = logs.find(match)
      if (found !== undefined) return Promise.resolve(found)
      return new Promise(resolve => {
        logged.on('line', function onLine (line: LogLine) {
          if (!match(line)) return
          logged.off('line', onLine)
          resolve(line)
        })
      })
    },
    origin () {
      const address = app.server.address()
      if (address === null || typeof address !== 'object') throw new Error('not listening')
      return `http://127.0.0.1:${address.port}`
    }
  }
}

export interface Answer { status: number, body: any, headers: Record<string, string | string[] | undefined> }

/** One request on a fresh connection (`reset`), so no keep-alive socket outlives the test. */
export async function call (url: string, init: { method?: 'GET' | 'POST', headers?: Record<string, string> } = {}): Promise<Answer> {
  const res = await request(url, { method: init.method ?? 'GET', headers: { connection: 'close', ...init.headers } })
  const text = await res.body.text()
  let body: unknown = text
  try { body = JSON.parse(text) } catch { /* not JSON */ }
  return { status: res.statusCode, body, headers: res.headers }
}
