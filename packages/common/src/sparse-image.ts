import { Digest64, isZeroPage, pageHash } from './page-hash.ts';

const SLAB_PAGES = 256;

/**
 * A guest memory image that stores only pages that were ever written (absent pages read as zero),
 * so images far larger than this machine's RAM can be modelled. Used by the simulator's guest memory
 * and by verifiers' shadow images. Pages come from 1 MiB slabs, so the first write to a page costs a
 * view, not an allocation of its own.
 */
export class SparseImage {
  private readonly pages: Map<number, Uint8Array>[];
  private slab = new Uint8Array(0);
  private slabUsed = SLAB_PAGES;

  constructor(readonly pageSize: number, readonly slotPages: readonly number[]) {
    if (pageSize % 4 !== 0) throw new RangeError('pageSize must be a multiple of 4');
    this.pages = slotPages.map(() => new Map<number, Uint8Array>());
  }

  /** Number of pages that hold data (were written at least once). */
  get populatedCount(): number {
    let n = 0;
    for (const m of this.pages) n += m.size;
    return n;
  }

  private check(slot: number, gfn: number, count = 1): Map<number, Uint8Array> {
    const m = this.pages[slot];
    const limit = this.slotPages[slot];
    if (!m || limit === undefined || gfn < 0 || gfn + count > limit) {
      throw new RangeError(`page range (slot ${slot}, gfn ${gfn}, count ${count}) is outside the image`);
    }
    return m;
  }

  /** The page if it was ever written, else undefined (reads as zero). */
  page(slot: number, gfn: number): Uint8Array | undefined {
    return this.check(slot, gfn).get(gfn);
  }

  /** The page's storage, allocated (zeroed) on first use. */
  pageForWrite(slot: number, gfn: number): Uint8Array {
    const m = this.check(slot, gfn);
    let p = m.get(gfn);
    if (!p) {
      if (this.slabUsed === SLAB_PAGES) {
        this.slab = new Uint8Array(SLAB_PAGES * this.pageSize);
        this.slabUsed = 0;
      }
      const off = this.slabUsed * this.pageSize;
      p = this.slab.subarray(off, off + this.pageSize);
      this.slabUsed++;
      m.set(gfn, p);
    }
    return p;
  }

  /** Writes `count` whole pages from `src` at byte `srcOffset` to (slot, first...). */
  writePages(slot: number, first: number, count: number, src: Uint8Array, srcOffset: number): void {
    this.check(slot, first, count);
    const ps = this.pageSize;
    for (let k = 0; k < count; k++) {
      const off = srcOffset + k * ps;
      this.pageForWrite(slot, first + k).set(src.subarray(off, off + ps));
    }
  }

  /** Sets `count` pages from (slot, first) to zero (keeps their storage if they had any). */
  zeroPages(slot: number, first: number, count: number): void {
    const m = this.check(slot, first, count);
    if (m.size === 0) return;
    if (count > m.size) {
      const end = first + count;
      for (const [gfn, p] of m) if (gfn >= first && gfn < end) p.fill(0);
    } else {
      for (let g = first; g < first + count; g++) m.get(g)?.fill(0);
    }
  }

  /** Copies `count` pages from (slot, first) into `out` at `outOffset`; absent pages are zero. */
  readRange(slot: number, first: number, count: number, out: Uint8Array, outOffset: number): void {
    const m = this.check(slot, first, count);
    const ps = this.pageSize;
    for (let k = 0; k < count; k++) {
      const p = m.get(first + k);
      const off = outOffset + k * ps;
      if (p) out.set(p, off);
      else out.fill(0, off, off + ps);
    }
  }

  /** Page numbers of `slot` that hold storage (may hold zeros). Unordered. */
  populated(slot: number): IterableIterator<number> {
    const m = this.pages[slot];
    if (!m) throw new RangeError(`slot ${slot} is outside the image`);
    return m.keys();
  }

  /** Recomputes the image digest from scratch (non-zero pages only contribute; see page-hash.ts). */
  digest(): Digest64 {
    const d = new Digest64();
    const out = new Uint32Array(2);
    const pageWords = this.pageSize >>> 2;
    this.pages.forEach((m, slot) => {
      for (const [gfn, p] of m) {
        const words = new Uint32Array(p.buffer, p.byteOffset, pageWords);
        if (isZeroPage(words, 0, pageWords)) continue;
        pageHash(words, 0, pageWords, slot, gfn, out);
        d.add(out[0]!, out[1]!);
      }
    });
    return d;
  }
}
