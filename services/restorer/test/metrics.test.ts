/**
 * ckpt_restorer_restores_total exists at 0 for every outcome from the start, so a failover restore that
 * ends after the restorer's first scrape counts in increase() (docs/metrics.md).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RESTORE_OUTCOMES, createRestorerMetrics } from '../src/index.ts';

test('a fresh restorer registry exports every restore outcome at 0', async () => {
  const m = createRestorerMetrics();
  const lines = (await m.registry.metrics()).split('\n').filter((l) => l.startsWith('ckpt_restorer_restores_total{')).sort();
  assert.deepEqual(RESTORE_OUTCOMES, ['ok', 'ok-stale', 'refused-stale', 'refused-digest', 'error']);
  assert.deepEqual(lines, RESTORE_OUTCOMES.map((o) => `ckpt_restorer_restores_total{outcome="${o}"} 0`).sort());
  assert.deepEqual((await m.registry.metrics()).split('\n').filter((l) => l.startsWith('ckpt_restorer_last_restore_end_timestamp_seconds{')).sort(),
    RESTORE_OUTCOMES.map((o) => `ckpt_restorer_last_restore_end_timestamp_seconds{outcome="${o}"} 0`).sort());
  m.restores.inc({ outcome: 'ok' });
  assert.ok((await m.registry.metrics()).includes('ckpt_restorer_restores_total{outcome="ok"} 1'));
});
