#!/usr/bin/env node
// Runs every *.test.ts under packages/, proto/, services/, bench/, scripts/ and deploy/ with Node's test runner and the tsx loader.
// Node 20's --test does not expand globs, so the files are listed here. Extra arguments are passed on
// (e.g. a file filter: `node scripts/run-tests.mjs sim`).
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const files = [];
function walk(dir) {
  for (const name of readdirSync(dir)) {
    if (name === 'node_modules' || name === 'build' || name.startsWith('.')) continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (name.endsWith('.test.ts')) files.push(relative(root, p));
  }
}
for (const top of ['packages', 'proto', 'services', 'bench', 'scripts', 'deploy']) walk(join(root, top));
const filters = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const passOn = process.argv.slice(2).filter((a) => a.startsWith('--'));
const chosen = filters.length ? files.filter((f) => filters.some((x) => f.includes(x))) : files;
if (chosen.length === 0) {
  console.error('run-tests: no test files matched');
  process.exit(1);
}
const r = spawnSync(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=2', ...passOn, ...chosen.sort()], { cwd: root, stdio: 'inherit' });
process.exit(r.status ?? 1);
