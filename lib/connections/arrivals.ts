import type { IncomingMessage } from 'node:http'

/** Requests to one route that arrived while the drain was recording them. */
export interface Arrivals {
  route: string
  count: number
  firstAt: number
  lastAt: number
}

/** Routes recorded at most: paths with ids in them must not grow the map without bound. */
const MAX_ROUTES = 20

/**
 * Counts one arrival on its route (method and path), so that a quiet period
 * that never came can name what kept it busy (delay.ts). Runs only while the
 * drain's delay is extended: nothing per request before it.
 */
export function recordArrival (arrivals: Map<string, Arrivals>, req: IncomingMessage, at: number): void {
  const route = routeOf(req)
  const entry = arrivals.get(route)
  if (entry !== undefined) {
    entry.count++
    entry.lastAt = at
  } else if (arrivals.size < MAX_ROUTES) {
    arrivals.set(route, { route, count: 1, firstAt: at, lastAt: at })
  }
}

/** `GET /path`, without the query string: how a request is named in the report and the logs. */
export function routeOf (req: IncomingMessage): string {
  const url = req.url ?? ''
  const query = url.indexOf('?')
  return `${req.method ?? 'GET'} ${query === -1 ? url : url.slice(0, query)}`
}
