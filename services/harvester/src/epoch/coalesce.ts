import { RangeList } from '@ckpt/common';

const SMALL = 48;
const BITS = 11;
const RADIX = 1 << BITS;
const MASK = RADIX - 1;

/**
 * Turns harvested GFNs (unsorted, with duplicates, several slots) into sorted, de-duplicated
 * `(slot, first, count)` ranges in linear time: an LSD radix sort of the 32-bit offsets
 * (three 11-bit passes) carrying the slot along, a stable counting pass by slot, then one merge pass.
 * Scratch buffers are kept between calls, so a steady state allocates nothing.
 */
export class Coalescer {
  private aS = new Uint32Array(0);
  private aO = new Uint32Array(0);
  private bS = new Uint32Array(0);
  private bO = new Uint32Array(0);
  private readonly count = new Uint32Array(RADIX + 1);
  private slotCount = new Uint32Array(16);

  private ensure(n: number): void {
    if (this.aS.length >= n) return;
    const c = Math.max(n, this.aS.length * 2, 1024);
    this.aS = new Uint32Array(c);
    this.aO = new Uint32Array(c);
    this.bS = new Uint32Array(c);
    this.bO = new Uint32Array(c);
  }

  /** Appends the ranges of the first `n` (slot, offset) pairs to `out` (as data ranges). */
  coalesce(slots: Uint32Array, offsets: Uint32Array, n: number, out: RangeList): void {
    if (n === 0) return;
    this.ensure(n);
    let srcS = this.aS;
    let srcO = this.aO;
    srcS.set(slots.subarray(0, n));
    srcO.set(offsets.subarray(0, n));
    if (n <= SMALL) {
      insertionSort(srcS, srcO, n);
    } else {
      let dstS = this.bS;
      let dstO = this.bO;
      let maxOffset = 0;
      let maxSlot = 0;
      for (let i = 0; i < n; i++) {
        if (srcO[i]! > maxOffset) maxOffset = srcO[i]!;
        if (srcS[i]! > maxSlot) maxSlot = srcS[i]!;
      }
      // Only as many passes as the largest offset needs.
      for (let shift = 0; shift < 32 && maxOffset >>> shift !== 0; shift += BITS) {
        const cnt = this.count;
        cnt.fill(0);
        for (let i = 0; i < n; i++) cnt[((srcO[i]! >>> shift) & MASK) + 1]!++;
        for (let r = 0; r < RADIX; r++) cnt[r + 1]! += cnt[r]!;
        for (let i = 0; i < n; i++) {
          const d = cnt[(srcO[i]! >>> shift) & MASK]!++;
          dstS[d] = srcS[i]!;
          dstO[d] = srcO[i]!;
        }
        [srcS, dstS] = [dstS, srcS];
        [srcO, dstO] = [dstO, srcO];
      }
      if (maxSlot > 0) {
        if (this.slotCount.length < maxSlot + 2) this.slotCount = new Uint32Array(maxSlot + 2);
        const cnt = this.slotCount;
        cnt.fill(0, 0, maxSlot + 2);
        for (let i = 0; i < n; i++) cnt[srcS[i]! + 1]!++;
        for (let s = 0; s <= maxSlot; s++) cnt[s + 1]! += cnt[s]!;
        for (let i = 0; i < n; i++) {
          const d = cnt[srcS[i]!]!++;
          dstS[d] = srcS[i]!;
          dstO[d] = srcO[i]!;
        }
        srcS = dstS;
        srcO = dstO;
      }
    }
    let rs = srcS[0]!;
    let rf = srcO[0]!;
    let rn = 1;
    for (let i = 1; i < n; i++) {
      const s = srcS[i]!;
      const o = srcO[i]!;
      if (s === rs && o < rf + rn) continue; // duplicate
      if (s === rs && o === rf + rn) {
        rn++;
        continue;
      }
      out.push(rs, rf, rn, false);
      rs = s;
      rf = o;
      rn = 1;
    }
    out.push(rs, rf, rn, false);
  }
}

function insertionSort(s: Uint32Array, o: Uint32Array, n: number): void {
  for (let i = 1; i < n; i++) {
    const ks = s[i]!;
    const ko = o[i]!;
    let j = i - 1;
    while (j >= 0 && (s[j]! > ks || (s[j] === ks && o[j]! > ko))) {
      s[j + 1] = s[j]!;
      o[j + 1] = o[j]!;
      j--;
    }
    s[j + 1] = ks;
    o[j + 1] = ko;
  }
}
