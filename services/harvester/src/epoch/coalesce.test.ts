import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RangeList } from '@ckpt/common';
import { Coalescer } from './coalesce.ts';

function naive(slots: Uint32Array, offsets: Uint32Array, n: number): string[] {
  const keys = new Set<string>();
  for (let i = 0; i < n; i++) keys.add(`${slots[i]}:${offsets[i]}`);
  const sorted = [...keys].map((k) => k.split(':').map(Number) as [number, number]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const out: string[] = [];
  let cur: [number, number, number] | null = null;
  for (const [s, o] of sorted) {
    if (cur && cur[0] === s && cur[1] + cur[2] === o) cur[2]++;
    else {
      if (cur) out.push(cur.join(','));
      cur = [s, o, 1];
    }
  }
  if (cur) out.push(cur.join(','));
  return out;
}

function ranges(r: RangeList): string[] {
  const out: string[] = [];
  for (let i = 0; i < r.length; i++) out.push(`${r.slots[i]},${r.firsts[i]},${r.counts[i]}`);
  return out;
}

test('coalescer equals a naive sort/dedup/merge on random inputs', () => {
  const c = new Coalescer();
  let x = 12345;
  const rnd = (): number => {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    return x >>> 0;
  };
  for (let trial = 0; trial < 300; trial++) {
    const n = [0, 1, 2, 5, 47, 48, 49, 100, 1000, 5000][trial % 10]!;
    const nslots = 1 + (rnd() % 4);
    const span = [8, 100, 5000, 1 << 20, 0xffffffff][rnd() % 5]!;
    const slots = new Uint32Array(n);
    const offsets = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      slots[i] = rnd() % nslots;
      offsets[i] = span === 0xffffffff ? rnd() : rnd() % span;
      if (i > 0 && rnd() % 4 === 0) { slots[i] = slots[i - 1]!; offsets[i] = offsets[i - 1]! + (rnd() % 3); }
    }
    const out = new RangeList(4);
    c.coalesce(slots, offsets, n, out);
    assert.deepEqual(ranges(out), naive(slots, offsets, n), `trial ${trial} n=${n}`);
  }
});

test('coalescer leaves its inputs alone and appends to the output', () => {
  const c = new Coalescer();
  const slots = Uint32Array.from([0, 0, 0, 1]);
  const offsets = Uint32Array.from([3, 1, 2, 1]);
  const out = new RangeList();
  out.push(5, 0, 1, true);
  c.coalesce(slots, offsets, 4, out);
  assert.deepEqual(ranges(out), ['5,0,1', '0,1,3', '1,1,1']);
  assert.deepEqual([...offsets], [3, 1, 2, 1]);
});
