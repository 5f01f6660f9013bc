import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { knownMetrics } from '../src/known-metrics.ts';
import { parseMetricsDoc } from '../src/metrics-doc.ts';

const DOC = new URL('../../docs/metrics.md', import.meta.url);

test('docs/metrics.md lists exactly the metrics the services define, with their types and labels', () => {
  const documented = parseMetricsDoc(readFileSync(DOC, 'utf8'));
  const own = knownMetrics().filter((m) => !m.builtin);
  const problems: string[] = [];
  for (const m of own) {
    const d = documented.get(m.name);
    if (!d) problems.push(`${m.name} (${m.service}) is not in docs/metrics.md`);
    else {
      if (d.type !== m.type) problems.push(`${m.name}: the doc says ${d.type}, the code ${m.type}`);
      if ([...d.labels].sort().join(',') !== [...m.labels].sort().join(',')) problems.push(`${m.name}: the doc's labels [${d.labels.join(', ')}], the code's [${m.labels.join(', ')}]`);
      if (d.meaning.length < 10) problems.push(`${m.name}: no meaning given`);
    }
  }
  for (const name of documented.keys()) if (!own.some((m) => m.name === name)) problems.push(`${name} is documented but no service defines it`);
  assert.deepEqual(problems, []);
  assert.ok(own.length >= 40, `expected the services' full metric set, found ${own.length}`);
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
});
