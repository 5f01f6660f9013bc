import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { knownMetrics } from '../src/known-metrics.ts';
import { compareMetricsDoc, parseMetricsDoc, validateMetricsDoc } from '../src/metrics-doc.ts';

const DOC = new URL('../../docs/metrics.md', import.meta.url);

test('docs/metrics.md lists exactly the metrics the services define, with their types and labels', () => {
  const r = validateMetricsDoc();
  assert.deepEqual(r.invalid, []);
  assert.ok(r.count >= 40, `expected the services' full metric set, found ${r.count}`);
});

test('the doc check catches a missing row, a wrong type and a wrong label (negative)', () => {
  const text = readFileSync(DOC, 'utf8');
  const good = parseMetricsDoc(text);
  const broken = parseMetricsDoc(text
    .replace(/^\| `ckpt_replicator_standby_age_seconds` .*\n/m, '')
    .replace('| `ckpt_harvester_pause_seconds` | histogram |', '| `ckpt_harvester_pause_seconds` | summary |')
    .replace(/(\| `ckpt_replicator_lag_epochs` \| gauge \| )`vm`/, '$1`node`'));
  assert.ok(good.has('ckpt_replicator_standby_age_seconds'));
  assert.equal(broken.has('ckpt_replicator_standby_age_seconds'), false);
  assert.equal(broken.get('ckpt_harvester_pause_seconds')?.type, 'summary');
  assert.deepEqual(broken.get('ckpt_replicator_lag_epochs')?.labels, ['node']);
  const own = knownMetrics().filter((m) => !m.builtin);
  const problems = compareMetricsDoc(text.replace(/^\| `ckpt_replicator_standby_age_seconds` .*\n/m, '') + '\n| `ckpt_made_up_total` | counter | — | something not defined anywhere |\n', own);
  assert.deepEqual(problems.sort(), [
    'docs/metrics.md: ckpt_made_up_total is listed but no service defines it',
    'docs/metrics.md: ckpt_replicator_standby_age_seconds (replicator) is not listed',
  ]);
});
