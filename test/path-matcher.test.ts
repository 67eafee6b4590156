// The tracker's per-request probe check (it runs on every request, so it is
// written to allocate nothing): a probe path matches with or without a query
// string, and nothing else matches, not even a longer path that starts the same.

import t from 'tap'
import { pathMatcher } from '../lib/connections/path-matcher.js'

t.test('probe paths match exactly, with or without a query string', async t => {
  const isProbe = pathMatcher(new Set(['/readyz', '/livez']))
  t.ok(isProbe('/readyz'))
  t.ok(isProbe('/livez'))
  t.ok(isProbe('/readyz?verbose'))
  t.ok(isProbe('/livez?'))
  t.notOk(isProbe('/readyzz'), 'a longer path is not the probe')
  t.notOk(isProbe('/readyz/x'))
  t.notOk(isProbe('/ready'))
  t.notOk(isProbe('/'))
  t.notOk(isProbe(''))
  t.notOk(isProbe(undefined))
  t.notOk(pathMatcher([])('/readyz'), 'no probes: nothing is one')
})
