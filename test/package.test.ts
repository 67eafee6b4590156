// What ships: pack the package as `npm publish` would, install the tarball into
// a new project, and use it from CommonJS, from ESM and from TypeScript (both
// module systems), the way a new user would. publint and attw check the package
// metadata and the types' resolution.

import t from 'tap'
import { execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

const run = promisify(execFile)
const root = fileURLToPath(new URL('..', import.meta.url))
const bin = (name: string): string => join(root, 'node_modules', '.bin', name)

/** The environment without the parent npm's lifecycle variables, so `npm test` settings don't leak into these npm runs. */
const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.toLowerCase().startsWith('npm_')))

async function exec (file: string, args: string[], cwd: string): Promise<{ stdout: string, stderr: string }> {
  // Generous: the machine is shared; a pack or an install takes a second or two here.
  return await run(file, args, { cwd, env, timeout: 120_000, maxBuffer: 16 * 1024 * 1024 })
}

const work = await mkdtemp(join(tmpdir(), 'graceful-drain-pack-'))
t.teardown(() => rm(work, { recursive: true, force: true }))

const [packed] = JSON.parse((await exec('npm', ['pack', '--pack-destination', work, '--json'], root)).stdout) as
  Array<{ filename: string, files: Array<{ path: string }> }>
if (packed === undefined) throw new Error('npm pack printed no package')
const tarball = join(work, packed.filename)

t.test('the tarball holds dist/, package.json, README and LICENSE, and nothing else', async t => {
  const paths = packed.files.map(file => file.path)
  for (const path of ['package.json', 'README.md', 'LICENSE', 'dist/index.js', 'dist/index.d.ts']) {
    t.ok(paths.includes(path), `ships ${path}`)
  }
  const stray = paths.filter(path => !['package.json', 'README.md', 'LICENSE'].includes(path) && !path.startsWith('dist/'))
  t.same(stray, [], 'no test/, lib/, examples/, bench/ or config files')
  const sources = paths.filter(path => /\.[cm]?ts$/.test(path) && !/\.d\.[cm]?ts$/.test(path))
  t.same(sources, [], 'no TypeScript sources, only declarations')
})

t.test('publint finds nothing to fix', async t => {
  const { stdout } = await exec(bin('publint'), ['run', tarball, '--strict'], work)
  t.match(stdout, /All good!/)
})

t.test('attw: the types resolve for node16 (ESM and CJS) and bundlers', async t => {
  // attw bundles TypeScript 5.6, which predates require(esm): it flags every ESM-only
  // package as "CJS resolves to ESM". Node ≥ 20.19 (our engines floor) requires it fine,
  // and TypeScript ≥ 5.8 types it; the CommonJS and TypeScript-CJS checks below prove both.
  const { stdout } = await exec(bin('attw'), [tarball, '--format', 'json', '--ignore-rules', 'cjs-resolves-to-esm'], work)
  const { problems } = JSON.parse(stdout) as { problems: Record<string, unknown[]> }
  t.same(Object.keys(problems).filter(kind => kind !== 'CJSResolvesToESM'), [], 'no other problem')
})

/** A new project with the tarball installed, as a user's project would have it. */
async function consumerProject (): Promise<string> {
  const project = join(work, 'consumer')
  await mkdir(project)
  await writeFile(join(project, 'package.json'), JSON.stringify({ name: 'consumer', private: true }))
  // The tarball installs with its runtime dependency (fastify-plugin) from the npm cache; the peer,
  // fastify, and @types/node are linked from this repository so the versions are the ones tested here.
  await exec('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--no-package-lock',
    '--legacy-peer-deps', tarball], project)
  await mkdir(join(project, 'node_modules', '@types'), { recursive: true })
  for (const name of ['fastify', join('@types', 'node')]) {
    await symlink(join(root, 'node_modules', name), join(project, 'node_modules', name), 'dir')
  }
  return project
}
const project = await consumerProject()

t.test('installed from the tarball, it works from require() and import', async t => {
  // Each consumer registers the plugin the documented way, listens and asks /readyz.
  const useIt = `
    const app = Fastify()
    await app.register(plugin, { exit: false, signals: [] })
    await app.listen({ port: 0, host: '127.0.0.1' })
    const res = await fetch('http://127.0.0.1:' + app.server.address().port + '/readyz')
    result.readyz = { status: res.status, body: await res.json() }
    await app.close()
    result.state = app.drain.state
    console.log(JSON.stringify(result))
  `
  await writeFile(join(project, 'consumer.cjs'), `
    const plugin = require('fastify-graceful-drain')
    const Fastify = require('fastify')
    const result = {
      type: typeof plugin,
      isDefault: plugin.default === plugin,
      isCamelCase: plugin.fastifyGracefulDrain === plugin,
      name: plugin[Symbol.for('fastify.display-name')],
      gracePeriod: plugin.resolveOptions().gracePeriod === plugin.defaults.gracePeriod,
      names: ['default', 'fastifyGracefulDrain', 'gracefulDrain', 'resolveOptions', 'defaults', 'diagnosticsChannels']
        .filter(name => plugin[name] !== undefined)
    }
    ;(async () => { ${useIt} })().catch(error => { console.error(error); process.exit(1) })
  `)
  await writeFile(join(project, 'consumer.mjs'), `
    import Fastify from 'fastify'
    import plugin, * as api from 'fastify-graceful-drain'
    import { gracefulDrain as named, fastifyGracefulDrain, defaults, resolveOptions } from 'fastify-graceful-drain'
    const result = {
      type: typeof plugin,
      isDefault: named === plugin,
      isCamelCase: fastifyGracefulDrain === plugin,
      name: plugin[Symbol.for('fastify.display-name')],
      gracePeriod: resolveOptions().gracePeriod === defaults.gracePeriod,
      names: ['default', 'fastifyGracefulDrain', 'gracefulDrain', 'resolveOptions', 'defaults', 'diagnosticsChannels']
        .filter(name => api[name] !== undefined)
    }
    ${useIt}
  `)
  const expected = {
    type: 'function',
    isDefault: true,
    isCamelCase: true,
    name: 'fastify-graceful-drain',
    gracePeriod: true,
    // The same names from require() and import (issue 13).
    names: ['default', 'fastifyGracefulDrain', 'gracefulDrain', 'resolveOptions', 'defaults', 'diagnosticsChannels'],
    readyz: { status: 200, body: { status: 'ready' } },
    state: 'closed'
  }
  const cjs = await exec(process.execPath, ['consumer.cjs'], project)
  t.same(JSON.parse(cjs.stdout), expected, 'require() returns the plugin, which serves /readyz')
  const esm = await exec(process.execPath, ['consumer.mjs'], project)
  t.same(JSON.parse(esm.stdout), expected, 'import default and named, which serve /readyz')
})

t.test('installed from the tarball, its types work for TypeScript consumers (CommonJS and ESM)', async t => {
  // TypeScript consumers under module nodenext, from a CommonJS and an ESM file. The
  // lines marked expect-error make the check fail if the option types stopped catching mistakes.
  await writeFile(join(project, 'consumer-cjs.cts'), `
    import gracefulDrain = require('fastify-graceful-drain')
    import Fastify = require('fastify')
    const app = Fastify()
    void app.register(gracefulDrain, { exit: false, drainDelay: 1000 })
    // @ts-expect-error drainDelay is a number of milliseconds
    void app.register(gracefulDrain, { drainDelay: '1000' })
    const state: 'starting' | 'ready' | 'draining' | 'closing' | 'closed' = app.drain.state
    export = state
  `)
  await writeFile(join(project, 'consumer-esm.mts'), `
    import Fastify from 'fastify'
    import gracefulDrain, { gracefulDrain as named, type DrainReport, type GracefulDrainOptions } from 'fastify-graceful-drain'
    const options: GracefulDrainOptions = { exit: false, signals: ['SIGTERM'] }
    const app = Fastify()
    await app.register(gracefulDrain, options)
    await app.register(named, { exit: false })
    // @ts-expect-error not an option
    await app.register(gracefulDrain, { drainDelays: 1000 })
    const report: DrainReport = await app.drain.start('deploy')
    export const code: number = report.exitCode
  `)
  await writeFile(join(project, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { module: 'nodenext', target: 'es2022', strict: true, noEmit: true, skipLibCheck: true, types: ['node'] },
    files: ['consumer-cjs.cts', 'consumer-esm.mts']
  }))
  const tsc = await exec(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', '.'], project)
    .then(() => 'ok', (error: { stdout?: string }) => error.stdout ?? String(error))
  t.equal(tsc, 'ok', 'the shipped types compile for CommonJS and ESM TypeScript consumers')
})

t.test('the README quick start, pasted into the new project, drains on SIGTERM and exits 0', async t => {
  const readme = await readFile(join(root, 'README.md'), 'utf8')
  const block = /## Quick start[\s\S]*?```ts\n([\s\S]*?)```/.exec(readme)?.[1]
  if (block === undefined) return t.fail('README.md has no ```ts block under "## Quick start"')
  // The only edit: an ephemeral port on 127.0.0.1 instead of 3000 on every interface.
  const code = block.replace(/port:\s*\d+/, 'port: 0').replace(/host:\s*'0\.0\.0\.0'/, "host: '127.0.0.1'")
  t.not(code, block, 'the quick start listens on a port the test could change')
  await writeFile(join(project, 'quickstart.mjs'), code)

  const child = spawn(process.execPath, ['quickstart.mjs'], { cwd: project, env, stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>
  const lines: Array<Record<string, unknown>> = []
  const waiters: Array<{ match: (line: Record<string, unknown>) => boolean, resolve: (line: Record<string, unknown>) => void }> = []
  /** Resolves with the first log line (past or future) that matches; rejects if the process exits first. */
  const logLine = (match: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> => {
    const seen = lines.find(match)
    if (seen !== undefined) return Promise.resolve(seen)
    return new Promise((resolve, reject) => {
      waiters.push({ match, resolve })
      exited.then(([code, signal]) => reject(new Error(`quick start exited (${code ?? signal}) first`)), reject)
    })
  }
  let buffered = ''
  child.stdout.on('data', (chunk: Buffer) => {
    buffered += chunk.toString()
    let newline
    while ((newline = buffered.indexOf('\n')) !== -1) {
      const line = JSON.parse(buffered.slice(0, newline)) as Record<string, unknown>
      buffered = buffered.slice(newline + 1)
      lines.push(line)
      for (const waiter of waiters) if (waiter.match(line)) waiter.resolve(line)
    }
  })
  const listening = logLine(line => /^Server listening at http:\/\/127\.0\.0\.1:\d+$/.test(String(line.msg)))
    .then(line => String(line.msg).slice('Server listening at '.length))
  const origin = await listening
  t.equal(await (await fetch(`${origin}/`)).text(), 'hello')
  t.equal((await fetch(`${origin}/readyz`)).status, 200, 'ready')

  const signalledAt = performance.now()
  child.kill('SIGTERM')
  // The signal reaches the child's event loop asynchronously: ask once it says the drain started.
  await logLine(line => String(line.msg).startsWith('drain started'))
  const draining = await fetch(`${origin}/readyz`)
  t.equal(draining.status, 503, 'readiness fails right after SIGTERM')
  t.same(await draining.json(), { status: 'draining' })
  t.equal((await fetch(`${origin}/livez`)).status, 200, 'liveness stays 200')
  t.equal(await (await fetch(`${origin}/`)).text(), 'hello', 'still serving during the delay')

  const [exitCode, signal] = await exited
  const ms = performance.now() - signalledAt
  t.same({ exitCode, signal }, { exitCode: 0, signal: null }, 'exit code 0: everything closed in time')
  // The quick start sets gracePeriod 30 s and drainDelay 5 s: the exit comes after the delay and well
  // before the grace period (a generous bound: the machine may be loaded, the plugin must not wait 72 s).
  t.ok(ms >= 5_000 && ms < 29_000, `SIGTERM → exit in ${Math.round(ms)} ms`)
  const report = lines.find(line => line.drainReport !== undefined)?.drainReport
  t.match(report, { reason: 'SIGTERM', signal: 'SIGTERM', exitCode: 0, forced: false }, 'one drain report in the log')
})
