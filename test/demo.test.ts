// `npm run demo` is the README's first command: run it as a new user would
// (after the build that `npm test` and `npm run demo` both do first) and check
// that it passes and prints the timeline it promises.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import t from 'tap'

t.test('the demo drains examples/postgres.ts under load with zero failed requests', async t => {
  const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/demo.ts'], {
    cwd: fileURLToPath(new URL('..', import.meta.url)),
    // The embedded PostgreSQL, whatever DATABASE_URL the machine running the tests has.
    env: { ...process.env, DATABASE_URL: '' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT') })
  let output = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { output += chunk })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { output += chunk })
  const [code] = await once(child, 'exit') as [number | null]
  t.comment(output)

  t.equal(code, 0, 'the demo exits 0')
  t.match(output, /app listening on http:\/\/127\.0\.0\.1:\d+; PostgreSQL: embedded/, 'progress: the app and its database')
  t.match(output, /\d+ sent, \d+ ok, 0 failed/, 'progress: the load, while it runs')
  t.match(output, /SIGTERM sent/)
  t.match(output, /Timeline \(ms after SIGTERM\)/)
  t.match(output, /\+\d+ ms {2}readiness flipped/, 'when readiness flipped')
  t.match(output, /\+\d+ ms {2}listener closed: drainDelay 2000 ms/, 'when the listener closed')
  t.match(output, /\+\d+ ms {2}last response received/)
  t.match(output, /\+\d+ ms {2}pool closed: every PostgreSQL connection has ended .*: ok/, 'when the pool closed')
  t.match(output, /\+\d+ ms {2}exit code 0; deadline \+29000 ms/, 'the exit against the deadline')
  const requests = /Requests: +(\d+) sent, (\d+) ok, (\d+) failed; (\d+) served during the drain/.exec(output)
  t.ok(requests !== null, 'the request counts')
  const [, sent, ok, failed, during] = (requests ?? []).map(Number)
  t.equal(failed, 0, 'no request failed')
  t.equal(ok, sent, 'every request sent was answered')
  t.ok((during ?? 0) > 0, `requests were served during the drain (${during})`)
  t.match(output, /PostgreSQL: +embedded/, 'which PostgreSQL it used')
  t.match(output, /PASS: 0 failed requests, exit code 0/)
})
