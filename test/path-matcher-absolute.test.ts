// The probe check on request targets in absolute form (RFC 9112 §3.2.2): Node passes
// `GET http://host/readyz HTTP/1.1` on as req.url 'http://host/readyz', Fastify routes it
// by its path, so the tracker must see a probe there too (issue 16, point 7).
import t from 'tap'
import { pathMatcher } from '../lib/connections/path-matcher.js'

t.test('absolute-form targets match by their path', async t => {
  const isProbe = pathMatcher(['/readyz', '/livez'])
  t.ok(isProbe('http://10.0.0.7/readyz'))
  t.ok(isProbe('http://pod.example:8080/livez'))
  t.ok(isProbe('https://[::1]:3000/readyz?verbose'))
  t.ok(isProbe('HTTP://host/readyz'), 'the scheme is case-insensitive; only its `://` is looked at')
  t.notOk(isProbe('http://host/readyzz'), 'a longer path is not the probe')
  t.notOk(isProbe('http://host/app/readyz'), 'nor one that ends with it')
  t.notOk(isProbe('http://readyz'), 'no path at all')
  t.notOk(isProbe('http://host'), 'no path at all')
  t.notOk(isProbe('*'), 'OPTIONS *')
  t.notOk(isProbe('host:443'), 'authority form (CONNECT)')
  t.notOk(isProbe('readyz'), 'neither form')
})

t.test('origin form is unchanged', async t => {
  const isProbe = pathMatcher(['/readyz'])
  t.ok(isProbe('/readyz'))
  t.ok(isProbe('/readyz?x=http://a/b'))
  t.notOk(isProbe('//readyz'))
  t.notOk(isProbe('/x?u=http://host/readyz'), 'a URL in the query string is not the target')
})
