// Docs that point at files must point at files that exist (issue 13: the
// deployment manifest named docs/sections/kubernetes.md, which did not).
// Every repository path a manifest, an example, the README or the design
// document names — lib/…, test/…, examples/…, docs/…, bench/…, scripts/… —
// must exist, and no comment may send a reader outside the repository ("DESIGN §").
import t from 'tap'
import { readFile, readdir, stat } from 'node:fs/promises'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const PATH = /(?<![\w./-])((?:lib|test|examples|docs|bench|scripts)\/[\w./-]*\w)/g

async function files (dir: string, keep: (name: string) => boolean): Promise<string[]> {
  const out: string[] = []
  for (const entry of await readdir(join(root, dir), { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) out.push(...await files(path, keep))
    else if (keep(entry.name)) out.push(path)
  }
  return out
}

const exists = async (path: string): Promise<boolean> => await stat(join(root, path)).then(() => true, () => false)

t.test('every repository path the docs, manifests and examples name exists', async t => {
  const sources = ['README.md', 'docs/design.md', 'bench/README.md',
    ...await files('examples', name => /\.(ts|ya?ml)$/.test(name))]
  for (const source of sources) {
    const text = await readFile(join(root, source), 'utf8')
    const named = new Set([...text.matchAll(PATH)].map(m => (m[1] as string).replace(/[.]+$/, '')))
    for (const path of named) {
      // Globs and placeholders (test/issues/<N>.test.ts, lib/**) are patterns, not paths.
      if (/[*<>]/.test(path)) continue
      t.ok(await exists(path), `${source} names ${path}`)
    }
  }
})

t.test('no comment in lib/ points at a design document outside the repository', async t => {
  for (const file of await files('lib', name => name.endsWith('.ts'))) {
    const text = await readFile(join(root, file), 'utf8')
    t.notMatch(text, /DESIGN §/, `${relative(root, join(root, file))} cites docs/design.md by section name`)
  }
})
