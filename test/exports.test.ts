// The export shape is public API: pin it, as fastify/under-pressure does, so a
// new or renamed export is a deliberate change rather than an accident.

import t from 'tap'
import { createRequire } from 'node:module'
import * as api from 'fastify-graceful-drain'
import gracefulDrain, { gracefulDrain as named, fastifyGracefulDrain, resolveOptions, defaults, diagnosticsChannels } from 'fastify-graceful-drain'

t.test('the default export is the plugin, wrapped by fastify-plugin', async t => {
  t.type(gracefulDrain, 'function')
  const plugin = gracefulDrain as unknown as Record<symbol | string, unknown>
  t.equal(plugin[Symbol.for('skip-override')], true, 'not encapsulated: fastify.drain is visible to the whole app')
  t.equal(plugin[Symbol.for('fastify.display-name')], 'fastify-graceful-drain')
  t.match(plugin[Symbol.for('plugin-meta')], { fastify: '5.x', name: 'fastify-graceful-drain' })
  // fastify-plugin's aliases for transpiled and CommonJS callers.
  t.equal(plugin.default, gracefulDrain, 'plugin.default is the plugin')
  t.equal(plugin.fastifyGracefulDrain, gracefulDrain, 'plugin.fastifyGracefulDrain is the plugin')
})

t.test('the named exports', async t => {
  t.equal(named, gracefulDrain, 'gracefulDrain is the default export')
  t.equal(fastifyGracefulDrain, gracefulDrain, 'fastifyGracefulDrain, the Fastify convention, is the default export too')
  t.type(resolveOptions, 'function')
  t.type(defaults, 'object')
  t.ok(Object.isFrozen(defaults))
  t.same(Object.keys(api).sort(), ['default', 'defaults', 'diagnosticsChannels', 'fastifyGracefulDrain', 'gracefulDrain', 'module.exports', 'resolveOptions'],
    'nothing else is exported at run time (types are compile-time only)')
  t.equal(api['module.exports'], gracefulDrain, "the 'module.exports' export is the plugin")
})

t.test('diagnosticsChannels: one frozen object of named node:diagnostics_channel channels', async t => {
  const { diagnosticsChannels } = api
  t.ok(Object.isFrozen(diagnosticsChannels))
  t.same(Object.keys(diagnosticsChannels).sort(), ['exit', 'forced', 'phase', 'start'])
  for (const [key, channel] of Object.entries(diagnosticsChannels)) {
    t.equal(channel.name, `fastify-graceful-drain:${key}`, `${key} channel name`)
  }
})

t.test('require() returns the plugin itself', async t => {
  const require = createRequire(import.meta.url)
  const required = require('fastify-graceful-drain') as typeof gracefulDrain & Record<string, unknown>
  t.equal(required, gracefulDrain, 'the same function as the ESM default export')
  t.equal(required.default, gracefulDrain, 'require(...).default works too')
  // The same names from import and require: every runtime export is on the plugin too.
  for (const name of Object.keys(api).filter(key => key !== 'module.exports')) {
    t.equal(required[name], api[name as keyof typeof api], `require(...).${name} is the ESM export ${name}`)
  }
  t.equal(required.diagnosticsChannels, diagnosticsChannels)
})
