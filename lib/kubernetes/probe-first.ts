// A little over 150 lines: answering a probe byte for byte as its Fastify route would, before any
// hook, needs the route's headers, logging and HEAD handling in one place.
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http'
import type { FastifyBaseLogger, FastifyInstance, LogLevel } from 'fastify'
import { now } from '../deadline.js'
import { errorMessage } from '../errors.js'
import type { ProbeAnswer } from './probes.js'

/** What an endpoint may read of the request, the same whether Fastify routed it or not. */
export interface ProbeRequest {
  readonly method: string
  /** The request target as sent: `/readyz?x=1`, or `http://host/readyz` in absolute form. */
  readonly url: string
  readonly headers: IncomingHttpHeaders
  readonly ip: string | undefined
}

/** One path the plugin answers itself: a probe, or the preStop endpoint. */
export interface Endpoint {
  readonly path: string
  /** GET and HEAD for a probe; GET and POST for preStop (no HEAD: a monitoring HEAD must not start a drain). */
  readonly methods: readonly string[]
  answer (request: ProbeRequest): Promise<ProbeAnswer>
}

type Listener = (...args: unknown[]) => unknown
type Req = IncomingMessage & { socket: IncomingMessage['socket'] | undefined }

/**
 * Also registers each endpoint as an ordinary Fastify route, so `app.inject()`
 * reaches it, and so does a request the server listener below does not see (a
 * server made by `serverFactory`). Those go through the app's hooks like any route.
 */
export function registerEndpoints (app: FastifyInstance, endpoints: readonly Endpoint[], logLevel: string): void {
  for (const endpoint of endpoints) {
    const head = endpoint.methods.includes('HEAD')
    app.route({
      method: endpoint.methods.filter(method => method !== 'HEAD'),
      url: endpoint.path,
      logLevel: logLevel as LogLevel,
      exposeHeadRoute: head,
      handler: async (request, reply) => {
        reply.header('cache-control', 'no-store')
        const { statusCode, body } = await endpoint.answer({ method: request.method, url: request.url, headers: request.headers, ip: request.ip })
        return reply.code(statusCode).send(body)
      }
    })
  }
}

/**
 * Answers the endpoints before Fastify routes the request, so that nothing the
 * app registers (an `onRequest` auth hook, @fastify/rate-limit,
 * @fastify/under-pressure, a `preHandler`, an `onSend` that adds headers) can
 * change what the kubelet reads (docs/design.md, "Probes and Kubernetes").
 *
 * Fastify's own 'request' listener on the server is `app.routing`; it is
 * replaced, in its place among the listeners, by one that answers the
 * endpoints itself (a GET or HEAD of a probe path, a GET or POST of the
 * preStop path; with or without a query string, in origin or absolute form)
 * and hands every other request to Fastify untouched, HTTP/1 or HTTP/2. The
 * connection tracker's listener, which runs before it, still sees every probe.
 * The answer is byte for byte what the Fastify route sends: the status,
 * `cache-control: no-store`, the JSON body with its content type and length.
 * Requests are logged as Fastify would log them at `probeLogLevel`, and not
 * at all at the default 'silent'.
 *
 * Returns false, and leaves the server alone, when Fastify's listener is not
 * on it (a `serverFactory` that calls the handler from a function of its own).
 */
export function answerBeforeHooks (app: FastifyInstance, endpoints: readonly Endpoint[], logLevel: string): boolean {
  if (endpoints.length === 0) return true
  const server = app.server
  const routing = app.routing as Listener
  const listeners = server.rawListeners('request') as Listener[]
  if (!listeners.includes(routing)) return false

  const find = endpointFinder(endpoints)
  const log = logLevel === 'silent' ? undefined : app.log.child({}, { level: logLevel })
  let served = 0
  const first = function (this: unknown, req: Req, res: ServerResponse): unknown {
    const endpoint = find(req.method, req.url)
    if (endpoint === undefined) return routing.call(this, req, res)
    serve(endpoint, req, res, log?.child({ reqId: `probe-${++served}` }))
    return undefined
  }
  // Put back in the same order, so that every other listener keeps its place relative to Fastify's.
  server.removeAllListeners('request')
  for (const listener of listeners) server.on('request', listener === routing ? first : listener)
  return true
}

function serve (endpoint: Endpoint, req: Req, res: ServerResponse, log: FastifyBaseLogger | undefined): void {
  const startedAt = now()
  const ip = req.socket?.remoteAddress
  const url = req.url as string
  // Shaped for Fastify's `req` serializer, which reads `ip` and `socket.remotePort`.
  log?.info({ req: { method: req.method, url, headers: req.headers, host: req.headers.host, ip, socket: { remotePort: req.socket?.remotePort } } },
    'incoming request')
  endpoint.answer({ method: req.method as string, url, headers: req.headers, ip }).then(
    answer => send(res, answer, req.method === 'HEAD'),
    (error: unknown) => {
      // Nothing an endpoint runs should throw (the checks are bounded and caught); if it does, answer as Fastify would.
      log?.error({ err: error }, `probe ${endpoint.path} failed: ${errorMessage(error)}`)
      send(res, { statusCode: 500, body: { statusCode: 500, error: 'Internal Server Error', message: errorMessage(error) } }, req.method === 'HEAD')
    }
  ).then(() => {
    log?.info({ res: { statusCode: res.statusCode }, responseTime: now() - startedAt }, 'request completed')
  }, () => {})
}

function send (res: ServerResponse, answer: ProbeAnswer, head: boolean): void {
  // The client may have gone while the checks ran.
  if (res.headersSent || res.writableEnded || res.destroyed) return
  const payload = JSON.stringify(answer.body)
  res.writeHead(answer.statusCode, {
    'cache-control': 'no-store',
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(payload))
  })
  // A HEAD answer says how long the body would be, without it, as Fastify's HEAD routes do.
  res.end(head ? undefined : payload)
}

/**
 * `(method, url) => the endpoint it names, or undefined`. Runs on every
 * request, so it allocates nothing (no split, no URL object). The target may
 * be in origin form (`/readyz?x`) or absolute form (`http://host/readyz`, RFC
 * 9112 §3.2.2), which Fastify routes by its path too.
 */
function endpointFinder (endpoints: readonly Endpoint[]): (method: string | undefined, url: string | undefined) => Endpoint | undefined {
  return (method, url) => {
    if (url === undefined || method === undefined) return undefined
    const start = pathStart(url)
    if (start === -1) return undefined
    for (let i = 0; i < endpoints.length; i++) {
      const endpoint = endpoints[i] as Endpoint
      const end = start + endpoint.path.length
      // 63 is '?'
      if (url.startsWith(endpoint.path, start) && (url.length === end || url.charCodeAt(end) === 63)) {
        return endpoint.methods.includes(method) ? endpoint : undefined
      }
    }
    return undefined
  }
}

/** Where the path starts in a request target: 0 in origin form, after the authority in absolute form, else -1 (`*`). */
function pathStart (url: string): number {
  // 47 is '/'
  if (url.charCodeAt(0) === 47) return 0
  const scheme = url.indexOf('://')
  return scheme === -1 ? -1 : url.indexOf('/', scheme + 3)
}
