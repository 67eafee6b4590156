/**
 * Prints the functions with the most self time in a `.cpuprofile`
 * (from `npm run bench:drain -- --profile plugin` or `node --cpu-prof`):
 *   node --import tsx bench/perf/profile-top.ts <file.cpuprofile> [rows]
 */
import { readFileSync } from 'node:fs'

interface ProfileNode { id: number, callFrame: { functionName: string, url: string, lineNumber: number } }
const [file, rows = '25'] = process.argv.slice(2)
if (file === undefined) throw new Error('usage: profile-top.ts <file.cpuprofile> [rows]')
const profile = JSON.parse(readFileSync(file, 'utf8')) as { nodes: ProfileNode[], samples: number[], timeDeltas: number[] }
const nodes = new Map(profile.nodes.map(node => [node.id, node]))
const self = new Map<string, number>()
profile.samples.forEach((id, i) => {
  const frame = nodes.get(id)?.callFrame
  if (frame === undefined) return
  const where = `${frame.functionName === '' ? '(anonymous)' : frame.functionName} ${frame.url.split('/').slice(-2).join('/')}:${frame.lineNumber + 1}`
  self.set(where, (self.get(where) ?? 0) + (profile.timeDeltas[i] ?? 0))
})
const total = [...self.values()].reduce((a, b) => a + b, 0)
const busy = total - (self.get('(idle) :0') ?? 0)
console.log(`${(total / 1000).toFixed(1)} ms sampled, ${(busy / 1000).toFixed(1)} ms busy`)
self.delete('(idle) :0')
for (const [where, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, Number(rows))) {
  console.log(`${(us / 1000).toFixed(1).padStart(8)} ms  ${(us / busy * 100).toFixed(1).padStart(5)} % of busy  ${where}`)
}
