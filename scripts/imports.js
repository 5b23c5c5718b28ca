#!/usr/bin/env node
/* Prints the import graph between the folders of lib/ (a file directly in lib/ counts as a
 * folder of its own), flags every edge that goes against the layer order of DESIGN.md, and
 * lists the largest files. Plain node, no dependencies, so it also runs on an old checkout:
 *   node scripts/imports.js [repo-root]            (default: the repository holding this script)
 * Exits 0 either way: it reports, it does not judge. */

'use strict';
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(process.argv[2] ?? path.join(__dirname, '..'));
const lib = path.join(root, 'lib');

/* The layer order of DESIGN.md, top to bottom. A folder may import only folders of a
 * lower rank; folders of one rank are peers and must not import each other (image and
 * flusher both sit on remote). Rank 0 is shared vocabulary anyone may use. */
const RANK = {
  cli: 10,
  mount: 9, stack: 8.75,
  control: 8.5, preflight: 8.5, azurite: 8.5, prometheus: 8.5, // what mounting uses beside the stack
  fuse: 8,
  namespace: 7,
  image: 6, flusher: 6,
  remote: 5,
  cache: 4,
  grainmap: 3,
  store: 2,
  config: 0, errors: 0, log: 0, metrics: 0, units: 0, redact: 0, pid: 0, clock: 0, tunables: 0, types: 0, index: 0,
};
/* Packages only one folder may import. */
const OWNER = { 'fuse-native': 'fuse', '@azure/storage-blob': 'store', '@azure/core-rest-pipeline': 'store', '@azure/identity': 'store', 'better-sqlite3': 'grainmap', 'prom-client': 'prometheus' };

function walk(dir) {
  const out = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...walk(p));
    else if (/\.ts$/.test(entry.name)) out.push(p);
  }
  return out;
}

/** The node of a file under lib/: its first folder, or its own name for a file in lib/. */
function nodeOf(file) {
  const rel = path.relative(lib, file).split(path.sep);
  return rel.length > 1 ? rel[0] : rel[0].replace(/(\.d)?\.ts$/, '');
}

const SPEC = /(?:^|\n)\s*(?:import|export)\s[^'"]*?from\s+['"]([^'"]+)['"]|(?:^|\n)\s*import\s+['"]([^'"]+)['"]|\b(?:require|import)\(\s*['"]([^'"]+)['"]\s*\)/g;

const files = walk(lib);
const edges = new Map();
const external = [];
for (const file of files) {
  const text = fs.readFileSync(file, 'utf8');
  const from = nodeOf(file);
  for (const m of text.matchAll(SPEC)) {
    const spec = m[1] ?? m[2] ?? m[3];
    if (spec.startsWith('.')) {
      const target = path.resolve(path.dirname(file), spec);
      if (!target.startsWith(lib + path.sep)) continue;
      const to = nodeOf(target.endsWith('.ts') ? target : `${target}.ts`);
      if (to === from) continue;
      if (!edges.has(from)) edges.set(from, new Set());
      edges.get(from).add(to);
    } else if (!spec.startsWith('node:')) {
      const pkg = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0];
      const owner = OWNER[pkg];
      if (owner !== undefined && owner !== from) external.push(`  ${path.relative(root, file)} imports ${pkg} (only lib/${owner} may)`);
    }
  }
}

console.log('import graph between folders of lib/ (a -> b: something in a imports b)');
for (const from of [...edges.keys()].sort()) console.log(`  ${from} -> ${[...edges.get(from)].sort().join(', ')}`);

const against = [];
for (const [from, tos] of edges) {
  for (const to of tos) {
    const a = RANK[from];
    const b = RANK[to];
    if (a === undefined || b === undefined) against.push(`  ${from} -> ${to}   (${a === undefined ? from : to} has no place in the layer order)`);
    else if (b > a) against.push(`  ${from} -> ${to}   (upward: ${to} sits above ${from})`);
    else if (b === a && b > 0) against.push(`  ${from} -> ${to}   (sideways: ${from} and ${to} are peers)`);
  }
}
console.log(`\nedges against the layer order: ${against.length === 0 ? 'none' : ''}`);
for (const line of against.sort()) console.log(line);
console.log(`\npackages imported outside their layer: ${external.length === 0 ? 'none' : ''}`);
for (const line of external.sort()) console.log(line);

const sizes = files
  .map((f) => ({ file: path.relative(root, f), lines: fs.readFileSync(f, 'utf8').split('\n').length - 1 }))
  .sort((a, b) => b.lines - a.lines);
console.log(`\nlargest files in lib/ (${sizes.filter((s) => s.lines > 400).length} over 400 lines):`);
for (const s of sizes.slice(0, 10)) console.log(`  ${String(s.lines).padStart(5)} ${s.file}`);
