import { SparseImage, stampSeq, stampVcpu } from '@ckpt/common';
import type { EpochCommit, EpochHeader, EpochSink, PageSegment } from '../epoch/epoch-types.ts';
import type { DirtySource } from '../sources/dirty-source.ts';

export interface EpochCheck {
  epoch: number;
  /** Pages whose guest contents differ from the shadow built from harvested epochs alone. */
  mismatchedPages: number;
  /** Pages the guest stamped after the previous epoch that this epoch did not carry. */
  missedWrites: number;
  /** The epoch's digest differs from the shadow's digest recomputed from scratch. */
  digestMismatch: boolean;
  /** A few (slot, gfn) examples for the report. */
  examples: string[];
}

/** Problems one epoch check found: wrong pages, missed writes, and 1 for a digest mismatch. */
export function checkFailures(c: EpochCheck): number {
  return c.mismatchedPages + c.missedWrites + (c.digestMismatch ? 1 : 0);
}

const CHUNK_PAGES = 1024;
const MAX_EXAMPLES = 5;
const MAX_FAILED_CHECKS = 100;

/**
 * Keeps a shadow image updated only from harvested epochs and, while the guest is paused at each
 * epoch, proves it equals guest memory. Three independent checks, the kernel selftest's invariants:
 * - full compare: every page of the guest equals the shadow (no page holds a value newer than its last
 *   harvest without being reported);
 * - write log: every page the guest stamped with a sequence number above the highest one of its vCPU
 *   seen at the previous epoch's check is in this epoch's harvested set (every page written since the
 *   last epoch is reported). Stamps are taken from memory, not from the guest's counters, which it
 *   publishes only after a burst;
 * - digest: the epoch's incrementally maintained digest equals the shadow's digest recomputed from scratch.
 */
export class ShadowVerifier implements EpochSink {
  readonly shadow: SparseImage;
  /**
   * Totals over every check, and the checks that found problems (the first MAX_FAILED_CHECKS of them):
   * a service verifies for days, so the clean checks are counted, not kept.
   */
  readonly totals = { checks: 0, mismatches: 0, missedWrites: 0, digestMismatches: 0 };
  readonly failedChecks: EpochCheck[] = [];
  private harvested = new Set<number>();
  /** Highest stamp sequence number per vCPU seen in guest memory at the previous check. */
  private prevMaxSeq: number[] | null = null;

  constructor(private readonly source: DirtySource) {
    this.shadow = new SparseImage(source.pageSize, source.slots.map((s) => s.pages));
  }

  get mismatches(): number {
    return this.totals.mismatches;
  }

  begin(): void {
    this.harvested = new Set();
  }

  segment(header: EpochHeader, seg: PageSegment): void {
    const r = seg.ranges;
    let dataOff = 0;
    for (let i = 0; i < r.length; i++) {
      const slot = r.slots[i]!;
      const first = r.firsts[i]!;
      const count = r.counts[i]!;
      // The write-log check needs this epoch's harvested set; baselines are not write-log checked.
      if (!header.baseline) {
        for (let g = first; g < first + count; g++) this.harvested.add(slot * 0x100000000 + g);
      }
      if (r.zero[i] === 1) {
        this.shadow.zeroPages(slot, first, count);
      } else {
        this.shadow.writePages(slot, first, count, seg.data, dataOff);
        dataOff += count * this.shadow.pageSize;
      }
    }
  }

  commit(): void {
    // Checks run in check(), while the guest is still paused.
  }

  /** Compares the shadow with the paused guest. Call from the cycle's whilePaused hook. */
  check(header: EpochHeader, commit: EpochCommit): EpochCheck {
    const result: EpochCheck = { epoch: header.epoch, mismatchedPages: 0, missedWrites: 0, digestMismatch: false, examples: [] };
    const ps = this.source.pageSize;
    const pw = ps >>> 2;
    const prev = header.baseline ? null : this.prevMaxSeq;
    const maxSeq: number[] = new Array<number>(header.vcpus).fill(0);
    const buf = new Uint8Array(CHUNK_PAGES * ps);
    const words = new Uint32Array(buf.buffer);
    const one = { s: new Uint32Array(1), f: new Uint32Array(1), c: new Uint32Array(1) };
    const note = (what: string, slot: number, gfn: number): void => {
      if (result.examples.length < MAX_EXAMPLES) result.examples.push(`${what} slot ${slot} gfn ${gfn}`);
    };
    const checkPage = (slot: number, gfn: number, k: number): void => {
      const shadowPage = this.shadow.page(slot, gfn);
      const off = k * ps;
      const same = shadowPage ? Buffer.compare(shadowPage, buf.subarray(off, off + ps)) === 0 : isZeroBytes(words, k * pw, pw);
      if (!same) {
        result.mismatchedPages++;
        note('content differs at', slot, gfn);
      }
      // The guest's own write log: its stamp says who wrote the page and when.
      const vcpu = stampVcpu(words, k * pw);
      if (vcpu >= 0 && vcpu < maxSeq.length) {
        const seq = stampSeq(words, k * pw);
        if (seq > maxSeq[vcpu]!) maxSeq[vcpu] = seq;
        if (prev && seq > prev[vcpu]! && !this.harvested.has(slot * 0x100000000 + gfn)) {
          result.missedWrites++;
          note('write not harvested at', slot, gfn);
        }
      }
    };
    const read = (slot: number, first: number, count: number): void => {
      one.s[0] = slot;
      one.f[0] = first;
      one.c[0] = count;
      this.source.readRanges(one.s, one.f, one.c, 1, buf);
    };

    for (const s of this.source.slots) {
      const populated = this.source.populatedPages?.(s.id);
      if (populated) {
        const union = new Set<number>(populated);
        for (const g of this.shadow.populated(s.id)) union.add(g);
        for (const g of union) {
          read(s.id, g, 1);
          checkPage(s.id, g, 0);
        }
      } else {
        for (let first = 0; first < s.pages; first += CHUNK_PAGES) {
          const count = Math.min(CHUNK_PAGES, s.pages - first);
          read(s.id, first, count);
          for (let k = 0; k < count; k++) checkPage(s.id, first + k, k);
        }
      }
    }
    if (this.shadow.digest().toHex() !== commit.digest) result.digestMismatch = true;
    this.prevMaxSeq = maxSeq;
    this.totals.checks++;
    this.totals.mismatches += checkFailures(result);
    this.totals.missedWrites += result.missedWrites;
    if (result.digestMismatch) this.totals.digestMismatches++;
    if (checkFailures(result) > 0 && this.failedChecks.length < MAX_FAILED_CHECKS) this.failedChecks.push(result);
    return result;
  }
}

function isZeroBytes(words: Uint32Array, first: number, count: number): boolean {
  for (let i = first; i < first + count; i++) if (words[i] !== 0) return false;
  return true;
}
