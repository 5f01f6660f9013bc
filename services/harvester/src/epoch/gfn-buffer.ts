import type { DirtySource } from '../sources/dirty-source.ts';

/**
 * Harvested (slot, offset) pairs waiting to be copied, in growable typed arrays reused across epochs.
 */
export class GfnBuffer {
  slots: Uint32Array;
  offsets: Uint32Array;
  length = 0;

  constructor(capacity = 65536) {
    this.slots = new Uint32Array(capacity);
    this.offsets = new Uint32Array(capacity);
  }

  clear(): void {
    this.length = 0;
  }

  private grow(): void {
    const s = new Uint32Array(this.slots.length * 2);
    s.set(this.slots);
    this.slots = s;
    const o = new Uint32Array(this.offsets.length * 2);
    o.set(this.offsets);
    this.offsets = o;
  }

  /**
   * Drains the source until it reports empty; returns the entries added. With `thenReset` the source
   * also resets once everything is drained (the pause's drain and reset in one call). No allocation
   * unless the buffer has to grow.
   */
  drainFrom(source: DirtySource, thenReset = false): number {
    const start = this.length;
    for (;;) {
      if (this.length === this.slots.length) this.grow();
      const cap = this.slots.length - this.length;
      const n = source.drain(this.slots, this.offsets, this.length, thenReset);
      this.length += n;
      if (n < cap) return this.length - start;
    }
  }

  /** Appends every page of the first `ranges.length` ranges. */
  appendRanges(ranges: { slots: Uint32Array; firsts: Uint32Array; counts: Uint32Array; length: number }): void {
    for (let i = 0; i < ranges.length; i++) {
      const slot = ranges.slots[i]!;
      const first = ranges.firsts[i]!;
      const count = ranges.counts[i]!;
      while (this.slots.length - this.length < count) this.grow();
      this.slots.fill(slot, this.length, this.length + count);
      for (let p = 0; p < count; p++) this.offsets[this.length + p] = first + p;
      this.length += count;
    }
  }
}
