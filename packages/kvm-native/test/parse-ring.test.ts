/**
 * The ring parser behind drain(), run on hostile ring images: entries are untrusted input.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadNative } from '../ts/index.ts';

const F_DIRTY = 1;
const F_RESET = 2;

class RingImage {
  readonly bytes: Uint8Array;
  private readonly dv: DataView;
  constructor(readonly entries: number) {
    this.bytes = new Uint8Array(entries * 16);
    this.dv = new DataView(this.bytes.buffer);
  }
  set(i: number, flags: number, slot: number, offset: bigint): void {
    const b = (i % this.entries) * 16;
    this.dv.setUint32(b, flags, true);
    this.dv.setUint32(b + 4, slot, true);
    this.dv.setBigUint64(b + 8, offset, true);
  }
  flags(i: number): number {
    return this.dv.getUint32((i % this.entries) * 16, true);
  }
}

const slotPages = Float64Array.of(2048, 512);

test('parseRing keeps valid entries, drops and counts hostile ones, marks all consumed RESET, stops at a non-DIRTY entry', () => {
  const n = loadNative();
  const r = new RingImage(16);
  r.set(0, F_DIRTY, 0, 5n); // valid
  r.set(1, F_DIRTY, 2, 0n); // slot id beyond the slots
  r.set(2, F_DIRTY, (1 << 16) | 0, 7n); // address space 1
  r.set(3, F_DIRTY, 0, 2048n); // offset == slot pages
  r.set(4, F_DIRTY, 1, 1n << 40n); // offset with high bits
  r.set(5, F_DIRTY | 0x80, 0, 9n); // flag bits KVM never sets
  r.set(6, F_DIRTY | F_RESET, 1, 511n); // DIRTY|RESET: only known bits, valid
  r.set(7, F_DIRTY, 0xffff, 0n); // largest slot id
  r.set(8, 0, 0, 3n); // not published: the harvest ends here
  r.set(9, F_DIRTY, 0, 4n); // beyond the end: untouched
  const outSlots = new Uint32Array(16);
  const outOffsets = new Uint32Array(16);
  const [valid, invalid, next] = n.parseRing(r.bytes, 16, 0, slotPages, outSlots, outOffsets);
  assert.deepEqual([valid, invalid, next], [2, 6, 8]);
  assert.deepEqual([...outSlots.subarray(0, 2)], [0, 1]);
  assert.deepEqual([...outOffsets.subarray(0, 2)], [5, 511]);
  for (let i = 0; i < 8; i++) assert.equal(r.flags(i), F_RESET, `entry ${i} marked RESET`);
  assert.equal(r.flags(8), 0);
  assert.equal(r.flags(9), F_DIRTY);
});

test('parseRing wraps around the ring and returns an unwrapped next fetch index', () => {
  const n = loadNative();
  const r = new RingImage(8);
  const fetch = 8 * 1000 + 6;
  for (let i = 0; i < 4; i++) r.set(fetch + i, F_DIRTY, 0, BigInt(100 + i));
  const outSlots = new Uint32Array(8);
  const outOffsets = new Uint32Array(8);
  const [valid, invalid, next] = n.parseRing(r.bytes, 8, fetch, slotPages, outSlots, outOffsets);
  assert.deepEqual([valid, invalid, next], [4, 0, fetch + 4]);
  assert.deepEqual([...outOffsets.subarray(0, 4)], [100, 101, 102, 103]);
  // A full ring of DIRTY entries: consumed once around, never more.
  const full = new RingImage(8);
  for (let i = 0; i < 8; i++) full.set(i, F_DIRTY, 0, BigInt(i));
  assert.deepEqual(n.parseRing(full.bytes, 8, 3, slotPages, outSlots, outOffsets), [8, 0, 11]);
});

test('parseRing stops when the output arrays are full, leaving the rest for the next call', () => {
  const n = loadNative();
  const r = new RingImage(16);
  for (let i = 0; i < 10; i++) r.set(i, F_DIRTY, 0, BigInt(i));
  const s = new Uint32Array(4);
  const o = new Uint32Array(6); // capacity = min of the two
  assert.deepEqual(n.parseRing(r.bytes, 16, 0, slotPages, s, o), [4, 0, 4]);
  assert.equal(r.flags(4), F_DIRTY, 'not consumed');
  assert.deepEqual(n.parseRing(r.bytes, 16, 4, slotPages, s, o), [4, 0, 8]);
  assert.deepEqual(n.parseRing(r.bytes, 16, 8, slotPages, s, o), [2, 0, 10]);
  assert.deepEqual([...o.subarray(0, 2)], [8, 9]);
  // Empty outputs: nothing consumed.
  assert.deepEqual(n.parseRing(r.bytes, 16, 0, slotPages, new Uint32Array(0), new Uint32Array(0)), [0, 0, 0]);
});

test('parseRing rejects malformed arguments instead of reading out of bounds', () => {
  const n = loadNative();
  const ring = new Uint8Array(16 * 16);
  const s = new Uint32Array(4);
  assert.throws(() => n.parseRing(ring, 12, 0, slotPages, s, s), { name: 'RangeError', message: /ringEntries must be a power of two/ });
  assert.throws(() => n.parseRing(ring, 32, 0, slotPages, s, s), { name: 'RangeError', message: /ring holds 256 bytes, 32 entries need 512/ });
  assert.throws(() => n.parseRing(new Uint8Array(ring.buffer, 4, 240), 8, 0, slotPages, s, s), { name: 'RangeError', message: /8-byte aligned/ });
  assert.throws(() => n.parseRing(ring, 16, -1, slotPages, s, s), { name: 'RangeError', message: /fetchIndex/ });
  assert.throws(() => n.parseRing(ring, 16, 0, Float64Array.of(-1), s, s), { name: 'RangeError', message: /slotPages\[0\]/ });
  assert.throws(() => n.parseRing(ring, 16, 0, new Float32Array(1) as never, s, s), { name: 'TypeError', message: /slotPages must be a Float64Array/ });
  assert.throws(() => n.parseRing([] as never, 16, 0, slotPages, s, s), { name: 'TypeError', message: /ring must be a Uint8Array/ });
});
