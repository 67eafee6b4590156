// Clients for the real-signal tests: undici keep-alive pools (what real callers
// use) and raw sockets for what a pool cannot do (hold a request half-sent,
// never read, trickle bytes). Both speak TLS when the fixture serves HTTPS.
import { readFileSync } from 'node:fs'
import { connect as netConnect, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import { once } from 'node:events'
import { Pool } from 'undici'
import type { RunningChild } from './child.js'

/** The fixture's self-signed certificate (SAN 127.0.0.1), trusted explicitly rather than turning verification off. */
const ca = readFileSync(new URL('../fixtures/tls/cert.pem', import.meta.url))

export interface Response {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: string
}

/** A keep-alive pool on the fixture, as a real caller would hold one. */
export function createPool (running: RunningChild, connections = 4): Pool {
  return new Pool(running.origin, {
    connections,
    pipelining: 1,
    // Longer than any test: the client must not be the one that closes idle sockets.
    keepAliveTimeout: 60_000,
    keepAliveMaxTimeout: 60_000,
    ...(running.https ? { connect: { ca } } : {})
  })
}

/** GET `path` and read the whole body. */
export async function get (pool: Pool, path: string): Promise<Response> {
  const res = await pool.request({ method: 'GET', path })
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() }
}

/** The error code of `fn`'s rejection, or 'resolved' if it did not reject. */
export async function errorCode (fn: () => Promise<unknown>): Promise<string> {
  try {
    await fn()
    return 'resolved'
  } catch (error) {
    const err = error as { code?: string, cause?: { code?: string } }
    return err.code ?? err.cause?.code ?? String(error)
  }
}

/** A fresh pool's GET on a new connection, closed afterwards: what a load balancer's new connection sees. */
export async function getOnNewConnection (running: RunningChild, path: string): Promise<Response> {
  const pool = createPool(running, 1)
  try {
    return await get(pool, path)
  } finally {
    await pool.destroy()
  }
}

/** A raw TCP (or TLS) socket to the fixture, connected (handshake done). */
export async function connectRaw (running: RunningChild, options: { allowHalfOpen?: boolean } = {}): Promise<Socket> {
  const tcp = netConnect({ host: '127.0.0.1', port: running.port, allowHalfOpen: options.allowHalfOpen ?? false })
  await once(tcp, 'connect')
  if (!running.https) return tcp
  const socket = tlsConnect({ socket: tcp, servername: 'localhost', ca })
  await once(socket, 'secureConnect')
  return socket
}

export function requestHead (path: string, extra = ''): string {
  return `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n${extra}`
}

/**
 * Reads one HTTP/1.1 response (Content-Length framed, or until the socket ends)
 * from `socket`. Enough for the fixture's JSON answers.
 */
export function readResponse (socket: Socket): Promise<Response> {
  return new Promise((resolve, reject) => {
    let data = Buffer.alloc(0)
    const parse = (ended: boolean): Response | undefined => {
      const end = data.indexOf('\r\n\r\n')
      if (end === -1) return undefined
      const [statusLine = '', ...lines] = data.subarray(0, end).toString('latin1').split('\r\n')
      const headers: Record<string, string> = {}
      for (const line of lines) {
        const colon = line.indexOf(':')
        headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim()
      }
      const length = headers['content-length'] === undefined ? undefined : Number(headers['content-length'])
      const body = data.subarray(end + 4)
      if (length === undefined ? !ended : body.length < length) return undefined
      return { status: Number(statusLine.split(' ')[1]), headers, body: body.subarray(0, length).toString() }
    }
    const cleanup = (): void => {
      socket.off('data', onData)
      socket.off('end', onEnd)
      socket.off('error', onError)
      socket.off('close', onEnd)
    }
    const settle = (ended: boolean): void => {
      const response = parse(ended)
      if (response !== undefined) {
        cleanup()
        resolve(response)
      } else if (ended) {
        cleanup()
        reject(Object.assign(new Error(`socket ended before a full response (${data.length} bytes)`), { code: 'ENDED' }))
      }
    }
    const onData = (chunk: Buffer): void => { data = Buffer.concat([data, chunk]); settle(false) }
    const onEnd = (): void => settle(true)
    const onError = (error: Error): void => { cleanup(); reject(error) }
    socket.on('data', onData)
    socket.once('end', onEnd)
    socket.once('close', onEnd)
    socket.once('error', onError)
  })
}

/**
 * A keep-alive socket that has been served once (so the server has accepted
 * it and it is not fresh) and then holds the next request half-sent: its
 * headers without the final blank line. The server never closes a socket with
 * unread bytes, so `finish()` gets an answer even after the listener closed.
 */
export async function heldRequest (running: RunningChild, path: string): Promise<{ socket: Socket, finish: () => Promise<Response> }> {
  const socket = await connectRaw(running)
  socket.write(requestHead('/livez', '\r\n'))
  const warmUp = await readResponse(socket)
  if (warmUp.status !== 200) throw new Error(`warm-up request failed: ${warmUp.status}`)
  socket.write(requestHead(path))
  return {
    socket,
    finish: async () => {
      const response = readResponse(socket)
      socket.write('\r\n')
      return await response
    }
  }
}

/** A raw keep-alive socket that has been served once and is now idle. */
export async function idleSocket (running: RunningChild, options: { allowHalfOpen?: boolean } = {}): Promise<Socket> {
  const socket = await connectRaw(running, options)
  socket.write(requestHead('/', '\r\n'))
  const response = await readResponse(socket)
  if (response.status !== 200 || response.headers.connection === 'close') throw new Error('expected a keep-alive response')
  return socket
}

/** How the peer closed `socket`: 'end' (a FIN: graceful) or the error code (ECONNRESET: reset). */
export function howClosed (socket: Socket): Promise<string> {
  return new Promise(resolve => {
    socket.once('end', () => resolve('end'))
    socket.once('error', (error: Error & { code?: string }) => resolve(error.code ?? error.message))
    socket.resume()
  })
}
