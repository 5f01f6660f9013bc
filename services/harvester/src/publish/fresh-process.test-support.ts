/**
 * For the tests of kafka-crc32c.ts and kafka-encoder.ts: what a replacement of kafkajs internals does
 * depends on what a process loaded first, so they run a small ES module script in a fresh Node process
 * (with tsx, from this directory) and read the JSON object it prints as its last line.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export function lastJsonOfFreshProcess<T>(script: string, env: NodeJS.ProcessEnv = {}): T {
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script],
    { encoding: 'utf8', env: { ...process.env, ...env }, cwd: fileURLToPath(new URL('.', import.meta.url)) });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as T;
}

/** Paths a script imports, absolute. */
export const PIPELINE_ENTRY = fileURLToPath(new URL('../../../../packages/pipeline/src/index.ts', import.meta.url));
export const HARVESTER_ENTRY = fileURLToPath(new URL('../index.ts', import.meta.url));
