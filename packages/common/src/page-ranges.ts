/**
 * A growable list of page ranges `(slot, first, count)` in structure-of-arrays form, each range
 * flagged as zero (a mark, no bytes) or data (its pages are in the accompanying byte buffer, in range
 * order). Reused between epochs: `clear()` keeps the capacity.
 */
export class RangeList {
  slots: Uint32Array;
  firsts: Uint32Array;
  counts: Uint32Array;
  zero: Uint8Array;
  length = 0;

  constructor(capacity = 64) {
    const c = Math.max(1, capacity);
    this.slots = new Uint32Array(c);
    this.firsts = new Uint32Array(c);
    this.counts = new Uint32Array(c);
    this.zero = new Uint8Array(c);
  }

  clear(): void {
    this.length = 0;
  }

  private grow(): void {
    const c = this.slots.length * 2;
    const s = new Uint32Array(c);
    s.set(this.slots);
    this.slots = s;
    const f = new Uint32Array(c);
    f.set(this.firsts);
    this.firsts = f;
    const n = new Uint32Array(c);
    n.set(this.counts);
    this.counts = n;
    const z = new Uint8Array(c);
    z.set(this.zero);
    this.zero = z;
  }

  /** Appends a range, merging it into the previous one when it continues it with the same kind. */
  push(slot: number, first: number, count: number, zero: boolean): void {
    if (count <= 0) return;
    const z = zero ? 1 : 0;
    const last = this.length - 1;
    if (last >= 0 && this.slots[last] === slot && this.zero[last] === z && this.firsts[last]! + this.counts[last]! === first) {
      this.counts[last]! += count;
      return;
    }
    if (this.length === this.slots.length) this.grow();
    this.slots[this.length] = slot;
    this.firsts[this.length] = first;
    this.counts[this.length] = count;
    this.zero[this.length] = z;
    this.length++;
  }

  /** Total pages over all ranges. */
  pageCount(): number {
    let n = 0;
    for (let i = 0; i < this.length; i++) n += this.counts[i]!;
    return n;
  }

  /** Pages in data (non-zero) ranges. */
  dataPageCount(): number {
    let n = 0;
    for (let i = 0; i < this.length; i++) if (this.zero[i] === 0) n += this.counts[i]!;
    return n;
  }

  /** A compact copy (exact-length arrays), for handing to a consumer that keeps it. */
  snapshot(): RangeList {
    const r = new RangeList(this.length);
    r.slots.set(this.slots.subarray(0, this.length));
    r.firsts.set(this.firsts.subarray(0, this.length));
    r.counts.set(this.counts.subarray(0, this.length));
    r.zero.set(this.zero.subarray(0, this.length));
    r.length = this.length;
    return r;
  }
}
