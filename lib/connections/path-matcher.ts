/**
 * `(url) => url is one of paths, with or without a query string`, for the
 * tracker's per-request probe check: it allocates nothing (no split, no slice),
 * since it runs on every request.
 */
export function pathMatcher (paths: Iterable<string>): (url: string | undefined) => boolean {
  const list = [...paths]
  return url => {
    if (url === undefined) return false
    for (let i = 0; i < list.length; i++) {
      const path = list[i] as string
      // 63 is '?'
      if (url.startsWith(path) && (url.length === path.length || url.charCodeAt(path.length) === 63)) return true
    }
    return false
  }
}
