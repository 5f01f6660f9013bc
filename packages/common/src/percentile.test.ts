import assert from 'node:assert/strict';
import { test } from 'node:test';
import { percentile, ValueSample } from './percentile.ts';

test('ValueSample: exact while it holds every value', () => {
  const s = new ValueSample(1000);
  const values = Array.from({ length: 1000 }, (_, i) => (i * 7919) % 1000);
  for (const v of values) s.add(v);
  assert.equal(s.count, 1000);
  assert.equal(s.max, 999);
  for (const p of [1, 50, 99, 100]) assert.equal(s.percentile(p), percentile(values, p));
  assert.equal(new ValueSample().percentile(99), 0, 'empty');
  assert.equal(new ValueSample().max, 0);
});

test('ValueSample: a stream far longer than its capacity stays bounded, keeps the exact count and maximum, and its percentiles close to the stream\'s (a plain list and Math.max(...list) threw at stop after 125 000 epochs)', () => {
  let seed = 12345;
  const random = (): number => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  const s = new ValueSample(4096, random);
  const n = 300_000;
  for (let i = 0; i < n; i++) s.add(i === 123_456 ? 1e9 : (i * 7919) % 10_000); // uniform over 0..9999, one outlier
  assert.equal(s.count, n);
  assert.equal(s.max, 1e9);
  assert.ok(Math.abs(s.percentile(50) - 5000) < 300, `p50 ${s.percentile(50)}`);
  assert.ok(Math.abs(s.percentile(99) - 9900) < 100, `p99 ${s.percentile(99)}`);
  assert.equal((s as unknown as { values: number[] }).values.length, 4096, 'bounded');
});
