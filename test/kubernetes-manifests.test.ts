// examples/kubernetes/deployment.yaml against the options the example app
// registers (examples/kubernetes/options.ts): the grace period, the probe and
// preStop paths and ports, and the timing rules of the guide all agree, and
// the paths the manifest names are really served where it sends the kubelet.
import t from 'tap'
import { readFile } from 'node:fs/promises'
import { parseAllDocuments } from 'yaml'
import type { Deployment } from 'kubernetes-types/apps/v1.js'
import type { Container, Probe, Service } from 'kubernetes-types/core/v1.js'
import { resolveOptions } from 'fastify-graceful-drain'
import { drainOptions, port } from '../examples/kubernetes/options.js'
import { buildApp } from '../examples/kubernetes/app.js'
import { call } from './helpers/in-process.js'

const text = await readFile(new URL('../examples/kubernetes/deployment.yaml', import.meta.url), 'utf8')
const documents = parseAllDocuments(text).map(doc => {
  if (doc.errors.length > 0) throw doc.errors[0]
  return doc.toJS() as { kind?: string }
})
const deployment = documents.find(doc => doc.kind === 'Deployment') as Deployment
const service = documents.find(doc => doc.kind === 'Service') as Service
const pod = deployment.spec?.template.spec
const container = pod?.containers[0] as Container
const options = resolveOptions(drainOptions)

/** A probe's or hook's port, by number or by the container port's name. */
function containerPort (target: number | string | undefined): number | undefined {
  if (typeof target === 'number') return target
  return container.ports?.find(p => p.name === target)?.containerPort
}
const envNumber = (name: string): number => Number(container.env?.find(e => e.name === name)?.value)
const probe = (name: 'readinessProbe' | 'livenessProbe' | 'startupProbe'): Probe => {
  const found = container[name]
  if (found === undefined) throw new Error(`${name} missing`)
  return found
}

t.test('the manifests parse as a Deployment and a Service with one container', async t => {
  t.equal(deployment.apiVersion, 'apps/v1')
  t.equal(service.apiVersion, 'v1')
  t.equal(pod?.containers.length, 1)
  t.same(service.spec?.selector, deployment.spec?.template.metadata?.labels, 'the Service selects the pods')
})

t.test('gracePeriod is terminationGracePeriodSeconds × 1000', async t => {
  t.equal(options.gracePeriod, (pod?.terminationGracePeriodSeconds ?? 30) * 1000)
})

t.test('the ports: the app on `http`, probes and preStop on `health`, only `http` in the Service', async t => {
  t.equal(containerPort('http'), port)
  t.equal(containerPort('health'), options.healthPort)
  t.equal(envNumber('PORT'), port, 'PORT env')
  t.equal(envNumber('HEALTH_PORT'), options.healthPort, 'HEALTH_PORT env')
  t.same(service.spec?.ports?.map(p => containerPort(p.targetPort)), [port], 'the health port is not exposed by the Service')
})

t.test('the probes and the preStop hook use the plugin\'s paths on the health port', async t => {
  if (options.readiness === false || options.liveness === false || options.preStop === false) throw new Error('probes disabled')
  for (const name of ['readinessProbe', 'startupProbe'] as const) {
    t.equal(probe(name).httpGet?.path, options.readiness.path, `${name} path`)
    t.equal(containerPort(probe(name).httpGet?.port), options.healthPort, `${name} port`)
  }
  t.equal(probe('livenessProbe').httpGet?.path, options.liveness.path)
  t.equal(containerPort(probe('livenessProbe').httpGet?.port), options.healthPort)
  const hook = container.lifecycle?.preStop?.httpGet
  t.equal(hook?.path, options.preStop.path, 'preStop path')
  t.equal(containerPort(hook?.port), options.healthPort, 'preStop port: the endpoint has no token, so only the health port')
})

t.test('the timings agree with the guide', async t => {
  if (options.readiness === false) throw new Error('readiness disabled')
  const readiness = probe('readinessProbe')
  const failAfter = (readiness.periodSeconds ?? 10) * (readiness.failureThreshold ?? 3) * 1000
  t.ok(options.drainDelay >= failAfter,
    `drainDelay (${options.drainDelay}) ≥ readiness periodSeconds × failureThreshold (${failAfter})`)
  t.ok(options.readiness.checkTimeout < (readiness.timeoutSeconds ?? 1) * 1000,
    'readiness.checkTimeout < the probe\'s timeoutSeconds: a slow check answers 503 naming it, not a probe timeout')
  const liveness = probe('livenessProbe')
  t.ok((liveness.timeoutSeconds ?? 1) * 1000 > options.readiness.checkTimeout, 'liveness timeout above any check')
  t.ok(options.drainDelay + options.closeTimeout + options.exitMargin < options.gracePeriod, 'the budget leaves time for in-flight requests')
  t.equal(deployment.spec?.strategy?.rollingUpdate?.maxUnavailable, 0, 'a rolling update never drops below the replica count')
})

t.test('the app serves the manifest\'s paths where the kubelet will look for them', async t => {
  // The example app as deployed, on ephemeral ports, without signal handlers or the delay.
  const app = await buildApp({ healthPort: 0, healthHost: '127.0.0.1', signals: [], exit: false, drainDelay: 0 }, false)
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const health = `http://127.0.0.1:${app.drain.healthPort}`
  const main = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`
  for (const name of ['startupProbe', 'readinessProbe', 'livenessProbe'] as const) {
    const path = probe(name).httpGet?.path as string
    const res = await call(`${health}${path}`)
    // 503 'starting' is a probe answer too (the startup task may still run); a 404 is not.
    t.ok(res.status === 200 || (res.status === 503 && typeof res.body.status === 'string'), `${name} ${path}: a probe answer`, res)
    t.equal((await call(`${main}${path}`)).status, 404, `${name} ${path}: not on the app's port`)
  }
  const preStop = await call(`${health}${container.lifecycle?.preStop?.httpGet?.path as string}`)
  t.same([preStop.status, preStop.body.status], [200, 'draining'], 'the preStop hook starts the drain')
  t.equal((await app.drain.start()).reason, 'prestop')
})
