import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BACKPRESSURE_CAUSES, EPOCH_KINDS, createHarvesterMetrics } from './metrics.ts';

/** The sample lines of one metric family in the registry's text output. */
async function samples(metrics: ReturnType<typeof createHarvesterMetrics>, name: string): Promise<string[]> {
  return (await metrics.registry.metrics()).split('\n').filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));
}

// CkptNoEpochs (`increase(ckpt_harvester_epochs_total[5m]) == 0`) sees only series that exist: a
// harvester that never cuts an epoch (publish failing from its start) must still export them.
test('a fresh registry exports ckpt_harvester_epochs_total at 0 for both kinds, before any epoch', async () => {
  const m = createHarvesterMetrics({ vm: 'vm-a' });
  assert.deepEqual(EPOCH_KINDS, ['baseline', 'delta']);
  assert.deepEqual((await samples(m, 'ckpt_harvester_epochs_total')).sort(), [
    'ckpt_harvester_epochs_total{kind="baseline",vm="vm-a"} 0',
    'ckpt_harvester_epochs_total{kind="delta",vm="vm-a"} 0',
  ]);
});

test('the first epoch counts on top of the initial zeros', async () => {
  const m = createHarvesterMetrics();
  m.epochs.inc({ kind: 'baseline' });
  assert.deepEqual((await samples(m, 'ckpt_harvester_epochs_total')).sort(), [
    'ckpt_harvester_epochs_total{kind="baseline"} 1',
    'ckpt_harvester_epochs_total{kind="delta"} 0',
  ]);
});

test('a fresh registry exports the backpressure seconds at 0 for every cause', async () => {
  const m = createHarvesterMetrics();
  assert.deepEqual((await samples(m, 'ckpt_harvester_backpressure_seconds_total')).sort(),
    BACKPRESSURE_CAUSES.map((cause) => `ckpt_harvester_backpressure_seconds_total{cause="${cause}"} 0`).sort());
});

test('every harvester metric has a series in a fresh registry (nothing an alert reads is missing until it moves)', async () => {
  const m = createHarvesterMetrics({ vm: 'vm-a' });
  const text = await m.registry.metrics();
  for (const family of m.registry.getMetricsAsArray()) {
    const name = (family as unknown as { name: string }).name;
    assert.match(text, new RegExp(`^${name}(_bucket|_sum|_count)?\\{[^}]*vm="vm-a"[^}]*\\} 0$`, 'm'), `${name} has no series`);
  }
});
