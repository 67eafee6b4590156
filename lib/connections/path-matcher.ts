/**
 * `(url) => url is one of paths, with or without a query string`, for the
 * tracker's per-request probe check: it allocates nothing (no split, no slice,
 * no URL object), since it runs on every request. The request target may be in
 * origin form (`/readyz`) or in absolute form (`http://host/readyz`, RFC 9112
 * §3.2.2, which a server must accept and which Fastify routes by its path): both
 * name the same route, so both match.
 */
export function pathMatcher (paths: Iterable<string>): (url: string | undefined) => boolean {
  const list = [...paths]
  return url => {
    if (url === undefined || list.length === 0) return false
    const start = pathStart(url)
    if (start === -1) return false
    for (let i = 0; i < list.length; i++) {
      const path = list[i] as string
      const end = start + path.length
      // 63 is '?'
      if (url.startsWith(path, start) && (url.length === end || url.charCodeAt(end) === 63)) return true
    }
    return false
  }
}

/** Where the path starts in a request target: 0 in origin form, after the authority in absolute form, else -1 (`*`, authority form). */
function pathStart (url: string): number {
  // 47 is '/'
  if (url.charCodeAt(0) === 47) return 0
  const scheme = url.indexOf('://')
  return scheme === -1 ? -1 : url.indexOf('/', scheme + 3)
}
