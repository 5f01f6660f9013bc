import assert from 'node:assert/strict';
import { test } from 'node:test';
import { F_DIRTY, F_RESET, parseRing, type ParseResult } from './ring-parse.ts';

/** A ring image with the given entries [flags, slot, offsetLo, offsetHi]. */
export function ringImage(entries: number, rows: [number, number, number, number][]): Uint32Array {
  const ring = new Uint32Array(entries * 4);
  rows.forEach((r, i) => ring.set(r, i * 4));
  return ring;
}

test('hostile entries are dropped, counted and still marked RESET; a non-DIRTY entry ends the harvest', () => {
  const slotPages = [2048, 512];
  const ring = ringImage(16, [
    [F_DIRTY, 0, 10, 0], // valid
    [F_DIRTY, 5, 0, 0], // slot beyond the memslots
    [F_DIRTY, 1 << 16, 0, 0], // address space 1
    [F_DIRTY, 0, 2048, 0], // offset == slot size
    [F_DIRTY, 1, 0, 1], // offset above 2^32
    [F_DIRTY | 0x80, 0, 1, 0], // garbage flag bits
    [F_DIRTY | F_RESET, 0, 2, 0], // RESET already set alongside DIRTY: allowed bits, valid
    [F_DIRTY, 1, 511, 0], // valid, last page of slot 1
    [0, 0, 3, 0], // not published yet: stop here
    [F_DIRTY, 0, 4, 0], // never reached
  ]);
  const outS = new Uint32Array(16);
  const outO = new Uint32Array(16);
  const r: ParseResult = { valid: 0, invalid: 0, nextFetch: 0 };
  parseRing(ring, 16, 0, slotPages, outS, outO, 0, r);
  assert.deepEqual(r, { valid: 3, invalid: 5, nextFetch: 8 });
  assert.deepEqual([...outS.subarray(0, 3)], [0, 0, 1]);
  assert.deepEqual([...outO.subarray(0, 3)], [10, 2, 511]);
  for (let i = 0; i < 8; i++) assert.equal(ring[i * 4], F_RESET, `entry ${i} marked RESET`);
  assert.equal(ring[8 * 4], 0);
  assert.equal(ring[9 * 4], F_DIRTY);
});

test('parsing stops when the output is full and resumes where it stopped, wrapping the ring', () => {
  const ring = ringImage(4, [[F_DIRTY, 0, 1, 0], [F_DIRTY, 0, 2, 0], [F_DIRTY, 0, 3, 0], [F_DIRTY, 0, 4, 0]]);
  const outS = new Uint32Array(2);
  const outO = new Uint32Array(2);
  const r: ParseResult = { valid: 0, invalid: 0, nextFetch: 0 };
  parseRing(ring, 4, 2, [100], outS, outO, 0, r);
  assert.deepEqual(r, { valid: 2, invalid: 0, nextFetch: 4 });
  assert.deepEqual([...outO], [3, 4]);
  parseRing(ring, 4, 4, [100], outS, outO, 0, r); // index 4 wraps to entry 0
  assert.deepEqual(r, { valid: 2, invalid: 0, nextFetch: 6 });
  assert.deepEqual([...outO], [1, 2]);
  parseRing(ring, 4, 6, [100], outS, outO, 0, r); // all RESET now: nothing
  assert.deepEqual(r, { valid: 0, invalid: 0, nextFetch: 6 });
});
