/**
 * The replicator's labelled counters exist at 0 for every label value from the start: a series that
 * is born at 1 hides its first event from increase() and rate(), so a dashboard or runbook that waits
 * for the first gap, dead letter or baseline after a restart would see nothing.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { APPLIED_KINDS, DEAD_LETTER_REASONS, GAP_REASONS, RECORD_KINDS, createReplicatorMetrics } from '../src/index.ts';

async function samples(m: ReturnType<typeof createReplicatorMetrics>, name: string): Promise<string[]> {
  return (await m.registry.metrics()).split('\n').filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `)).sort();
}

test('a fresh registry exports every kind and reason of the labelled counters at 0', async () => {
  const m = createReplicatorMetrics();
  const cases: [string, string, readonly string[]][] = [
    ['ckpt_replicator_records_total', 'kind', RECORD_KINDS],
    ['ckpt_replicator_epochs_applied_total', 'kind', APPLIED_KINDS],
    ['ckpt_replicator_gaps_total', 'reason', GAP_REASONS],
    ['ckpt_replicator_dead_letters_total', 'reason', DEAD_LETTER_REASONS],
  ];
  for (const [name, label, values] of cases) {
    assert.ok(values.length >= 2, name);
    assert.deepEqual(await samples(m, name), values.map((v) => `${name}{${label}="${v}"} 0`).sort());
  }
});

test('the first event counts on top of the initial zero', async () => {
  const m = createReplicatorMetrics();
  m.gaps.inc({ reason: 'missing-epoch' });
  m.epochsApplied.inc({ kind: 'baseline' });
  assert.ok((await samples(m, 'ckpt_replicator_gaps_total')).includes('ckpt_replicator_gaps_total{reason="missing-epoch"} 1'));
  assert.deepEqual(await samples(m, 'ckpt_replicator_epochs_applied_total'), [
    'ckpt_replicator_epochs_applied_total{kind="baseline"} 1',
    'ckpt_replicator_epochs_applied_total{kind="delta"} 0',
  ]);
});
