import { CkptError, ImageDigest, isZeroPage, RangeList } from '@ckpt/common';
import type { DirtySource } from '../sources/dirty-source.ts';
import { Coalescer } from './coalesce.ts';
import type { EpochCommit, EpochHeader, EpochSink, PageSegment } from './epoch-types.ts';
import { GfnBuffer } from './gfn-buffer.ts';

/** How long a baseline's copy runs before it lets the event loop take its turn. */
const YIELD_EVERY_MS = 20;
const yieldToEventLoop = (): Promise<void> => new Promise((r) => setImmediate(r));

export interface CycleOptions {
  generation: number;
  /** Live copy rounds before the pause (0: plain stop-and-copy). */
  precopyRounds: number;
  /**
   * Up to 3 more live rounds run while more GFNs than this wait for the pause (after a wait on the
   * sinks, during which full rings were freed live): the pause then copies only what the last round
   * left, not everything dirtied during the wait.
   */
  precopyAboveEntries: number;
  /** Pages read per baseline segment. */
  baselineChunkPages: number;
  /**
   * Runs while the guest is still paused, after the epoch was handed to the sinks (the verifier
   * compares guest memory with its shadow here). Not counted in the pause time.
   */
  whilePaused?: (header: EpochHeader, commit: EpochCommit) => void | Promise<void>;
  /**
   * TEST ONLY, deliberately wrong: in live rounds, copy pages before resetting the ring and wait
   * `delayMs` in between, so guest writes racing with the copy are lost. The verifier must catch it.
   */
  unsafeCopyBeforeReset?: { delayMs: number };
  /**
   * Pending GFNs are de-duplicated once there are this many (then again at twice the distinct count),
   * so reliefs during a long wait keep memory bounded by the guest's size.
   */
  pendingCompactEntries: number;
}

export const DEFAULT_CYCLE_OPTIONS: Readonly<CycleOptions> = Object.freeze({
  generation: 1,
  precopyRounds: 0,
  precopyAboveEntries: 16384,
  baselineChunkPages: 2048,
  pendingCompactEntries: 1 << 20,
});

const now = (): number => performance.now();
/** The paused copy's staging buffer is kept between epochs up to this size (bigger epochs allocate). */
const STAGING_KEEP_BYTES = 64 * 1024 * 1024;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * The checkpoint cycle of DESIGN.md. Each call to `cut()` produces one epoch:
 *
 *   [pre-copy rounds, live: drain, reset, copy]  pause, drain, reset, copy, vCPU state, resume
 *
 * During live rounds the ring is reset before pages are read, so a guest write racing with the copy is
 * logged again and copied at the pause. Epoch 0 of a generation is a baseline: after draining and
 * resetting, every page is copied live (zero pages become marks), then the pause copies what changed.
 * The cycle keeps the image digest up to date from the pages it ships.
 */
export class CheckpointCycle {
  /** Number of the next epoch. */
  epoch = 0;
  readonly generation: number;
  readonly digest = new ImageDigest();
  private readonly opts: CycleOptions;
  private readonly pending = new GfnBuffer();
  private readonly coalescer = new Coalescer();
  private readonly ranges = new RangeList(1024);
  private readonly pageWords: number;
  private harvestedThisEpoch = 0;
  /** Entries reliefs harvested after this epoch's pause, while its pages were still being handed on: the next epoch's. */
  private harvestedNextEpoch = 0;
  /** Between this epoch's pause and the end of cut(): GFNs drained now belong to the next epoch. */
  private pastPause = false;
  /** Set around the deliberately wrong live round, which a relief in the middle would make right. */
  private reliefBlocked = false;
  /** Between source.pause() and resume() in cut(): nothing to relieve (a parked vCPU may still show its ring full). */
  private guestPaused = false;
  /** A live drain that failed: the entries it had taken are gone, so no further epoch may be committed. */
  private reliefFailure: Error | null = null;
  /** Epochs left in which the automatic live rounds are skipped (the last ones did not converge). */
  private autoPrecopyPause = 0;
  private compactAt: number;
  private readonly compactRanges = new RangeList(1024);
  /**
   * Where the paused copy lands: reused across epochs so the pause does not pay for faulting in and
   * zeroing a fresh buffer. The pause's segment is a view of it, valid until the next cut() (PageSegment).
   */
  private staging = new Uint8Array(0);
  /** A cut() is running: another would overwrite the staging buffer its sinks may still read. */
  private cutting = false;
  /** The source's lost-entry count when the current epoch's harvest began. */
  private lostAtStart: number;

  constructor(private readonly source: DirtySource, options: Partial<CycleOptions> = {}) {
    this.opts = { ...DEFAULT_CYCLE_OPTIONS, ...options };
    this.generation = this.opts.generation;
    this.pageWords = source.pageSize >>> 2;
    this.lostAtStart = source.stats().ringEntriesLost;
    this.compactAt = this.opts.pendingCompactEntries;
  }

  /**
   * Live harvest without copying, for relieving full rings between epochs and while cut() waits on its
   * sinks: the GFNs wait in a buffer and are copied at the next pause. Safe while the guest runs: a
   * page written after the reset is logged again. Drained after this epoch's pause, they are the next
   * epoch's. A long wait (a broker or replicator away) keeps the buffer bounded: repeats of a page are
   * folded once it grows. Returns entries harvested.
   */
  relieve(): number {
    if (this.reliefBlocked) return 0;
    let n: number;
    try {
      n = this.pending.drainFrom(this.source, true);
    } catch (err) {
      this.reliefFailure ??= err instanceof Error ? err : new Error(String(err));
      throw err;
    }
    if (this.pastPause) this.harvestedNextEpoch += n;
    else this.harvestedThisEpoch += n;
    if (this.pending.length >= this.compactAt) this.compactPending();
    return n;
  }

  /** relieve() when some vCPU waits on a full ring; returns whether it did. */
  relieveIfStalled(): boolean {
    if (this.reliefBlocked || this.guestPaused || this.source.stats().vcpusStalledRingFull === 0) return false;
    this.relieve();
    return true;
  }

  /** Pending GFNs that are waiting for the next pause (de-duplicated only once there are many). */
  get pendingEntries(): number {
    return this.pending.length;
  }

  /** Replaces the pending GFNs by the distinct pages among them. */
  private compactPending(): void {
    const r = this.compactRanges;
    r.clear();
    this.coalescer.coalesce(this.pending.slots, this.pending.offsets, this.pending.length, r);
    this.pending.clear();
    this.pending.appendRanges(r);
    r.clear();
    this.compactAt = Math.max(this.opts.pendingCompactEntries, 2 * this.pending.length);
  }

  /**
   * Cuts the next epoch and hands it to `sink`. One at a time: the segments of a cut are valid until the
   * next one begins (PageSegment).
   */
  async cut(sink: EpochSink): Promise<EpochCommit> {
    if (this.cutting) throw new CkptError('CKPT_ERR_HARVEST_CONCURRENT_CUT', 'cut() called while another cut() of the same cycle is running: epochs are cut one at a time');
    this.cutting = true;
    try {
      return await this.cutOne(sink);
    } finally {
      this.cutting = false;
    }
  }

  private async cutOne(sink: EpochSink): Promise<EpochCommit> {
    const header: EpochHeader = {
      generation: this.generation,
      epoch: this.epoch,
      baseline: this.epoch === 0,
      pageSize: this.source.pageSize,
      slots: this.source.slots,
      vcpus: this.source.vcpuCount,
      startedAtMs: Date.now(),
    };
    await sink.begin(header);
    let pages = 0;
    let zeroPages = 0;
    let bytes = 0;
    let precopyPages = 0;
    const emit = async (seg: PageSegment): Promise<void> => {
      const p = seg.ranges.pageCount();
      pages += p;
      zeroPages += p - seg.ranges.dataPageCount();
      bytes += seg.data.byteLength;
      if (seg.phase === 'precopy') precopyPages += p;
      await sink.segment(header, seg);
    };

    if (header.baseline) {
      // Everything logged so far is superseded by the full copy; re-arm logging before reading.
      this.relieve();
      this.pending.clear();
      this.lostAtStart = this.source.stats().ringEntriesLost;
      await this.copyWholeGuest(emit);
    }
    let rounds = 0;
    for (; rounds < this.opts.precopyRounds; rounds++) {
      this.harvestedThisEpoch += this.pending.drainFrom(this.source);
      const seg = this.opts.unsafeCopyBeforeReset
        ? await this.copyThenResetUnsafe(this.opts.unsafeCopyBeforeReset.delayMs)
        : this.resetThenCopy();
      await emit(seg);
    }
    // The automatic live rounds (CycleOptions.precopyAboveEntries): while more than that many GFNs
    // wait (pending, plus what the rings or the dirty bitmap hold), copy them with the guest running
    // before the pause. They stop when they do not converge (the guest dirties about as fast as they
    // copy, as under sustained backpressure): each would only resend the same pages. Then the next 8
    // epochs skip them (not after a baseline, whose long copy is a one-off).
    const skipAuto = this.autoPrecopyPause > 0;
    if (skipAuto) this.autoPrecopyPause--;
    const ring = this.source.mode === 'ring';
    let previous = Infinity;
    for (let extra = 0; extra < 3 && !skipAuto; extra++, rounds++) {
      // Ring mode counts what the rings hold without resetting them (a long live round leaves its own
      // writes there). A bitmap drain must be followed by its clear before the next drain, so bitmap
      // mode drains and clears at once: pages it does not copy live stay pending for the pause, which
      // copies them after its own drain, so a write after this clear is not missed.
      this.harvestedThisEpoch += this.pending.drainFrom(this.source, !ring);
      const waiting = this.pending.length;
      if (waiting <= this.opts.precopyAboveEntries) break;
      if (waiting > previous / 2) {
        // A baseline's long copy says nothing about the epochs after it: only a delta starts the pause.
        if (!header.baseline) this.autoPrecopyPause = 8;
        break;
      }
      previous = waiting;
      await emit(ring ? this.resetThenCopy() : this.copyLive());
    }
    if (this.reliefFailure) {
      throw new CkptError('CKPT_ERR_HARVEST_RELIEF_FAILED',
        `cannot commit epoch ${header.epoch} of generation ${this.generation}: a live drain of the dirty rings failed, and the entries it had taken are lost: ${this.reliefFailure.message}`,
        { cause: this.reliefFailure, context: { epoch: header.epoch, generation: this.generation } });
    }

    // Buffers the pause fills are allocated before it: an allocation inside may start a GC there.
    const vcpuStates: Uint8Array[] = [];
    for (let i = 0; i < this.source.vcpuCount; i++) vcpuStates.push(new Uint8Array(this.source.vcpuStateBytes));
    const counters = new Float64Array(this.source.vcpuCount * 2);

    // The pause: the guest's only stop. Keep this block synchronous and allocation-free.
    const t0 = now();
    const pausedAtMs = Date.now();
    this.source.pause();
    this.guestPaused = true;
    const entries = this.pending.drainFrom(this.source, true); // drain and reset in one native call
    const t2 = now();
    const copied = this.copyPending(true);
    const t3 = now();
    for (let i = 0; i < vcpuStates.length; i++) this.source.getVcpuState(i, vcpuStates[i]!);
    this.source.guestCounters(counters);
    const t4 = now();
    this.harvestedThisEpoch += entries;
    this.pastPause = true;
    const lost = this.source.stats().ringEntriesLost - this.lostAtStart;
    if (lost > 0) {
      // The kernel overwrote entries we never saw: this epoch may miss pages. It is not committed;
      // the caller starts a new generation with a baseline.
      this.resumeGuest();
      throw new CkptError('CKPT_ERR_HARVEST_CONTINUITY_LOST',
        `cannot commit epoch ${header.epoch} of generation ${this.generation}: the kernel lost ${lost} dirty-ring entries (ring overrun); a new generation with a baseline follows`,
        { retriable: true, context: { epoch: header.epoch, generation: this.generation, lost } });
    }

    const finish = async (): Promise<EpochCommit> => {
      await emit(this.finalize(copied.ranges, copied.data, 'paused'));
      const commit: EpochCommit = {
        generation: this.generation,
        epoch: header.epoch,
        baseline: header.baseline,
        pages,
        zeroPages,
        bytes,
        digest: this.digest.toHex(),
        vcpuStates,
        guestCounters: Array.from(counters),
        pauseUs: Math.round((t4 - t0) * 1000),
        drainUs: Math.round((t2 - t0) * 1000),
        copyUs: Math.round((t3 - t2) * 1000),
        entriesHarvested: this.harvestedThisEpoch,
        precopyRounds: rounds,
        precopyPages,
        pausedAtMs,
        committedAtMs: Date.now(),
      };
      await sink.commit(header, commit);
      return commit;
    };

    let commit: EpochCommit;
    if (this.opts.whilePaused) {
      try {
        commit = await finish();
        await this.opts.whilePaused(header, commit);
      } finally {
        this.resumeGuest();
      }
    } else {
      this.resumeGuest();
      commit = await finish();
    }
    this.harvestedThisEpoch = this.harvestedNextEpoch;
    this.harvestedNextEpoch = 0;
    this.pastPause = false;
    this.epoch++;
    return commit;
  }

  /** Ends the pause cut() started (relief may run again). */
  private resumeGuest(): void {
    this.source.resume();
    this.guestPaused = false;
  }

  /** Right order for a live round: re-arm logging first, then read the pages. */
  private resetThenCopy(): PageSegment {
    this.source.reset();
    return this.copyLive();
  }

  /** A live round's copy, once logging of the pending GFNs is re-armed (bitmap mode drains and re-arms at once). */
  private copyLive(): PageSegment {
    const copied = this.copyPending();
    return this.finalize(copied.ranges, copied.data, 'precopy');
  }

  private async copyThenResetUnsafe(delayMs: number): Promise<PageSegment> {
    const copied = this.copyPending();
    this.reliefBlocked = true;
    try {
      await sleep(delayMs);
    } finally {
      this.reliefBlocked = false;
    }
    this.source.reset();
    return this.finalize(copied.ranges, copied.data, 'precopy');
  }

  /**
   * Coalesces the pending GFNs and copies their pages; clears the pending buffer. `staged`: copy into
   * the reusable staging buffer (the pause).
   */
  private copyPending(staged = false): { ranges: RangeList; data: Uint8Array } {
    this.ranges.clear();
    this.coalescer.coalesce(this.pending.slots, this.pending.offsets, this.pending.length, this.ranges);
    this.pending.clear();
    this.compactAt = this.opts.pendingCompactEntries;
    const need = this.ranges.pageCount() * this.source.pageSize;
    let data: Uint8Array;
    if (staged && need <= STAGING_KEEP_BYTES) {
      if (this.staging.byteLength < need) this.staging = new Uint8Array(need + (need >>> 2));
      data = this.staging.subarray(0, need);
    } else {
      data = new Uint8Array(need);
    }
    if (this.ranges.length > 0) {
      // Every page here was harvested dirty, so it is resident.
      this.source.readRanges(this.ranges.slots, this.ranges.firsts, this.ranges.counts, this.ranges.length, data, true);
    }
    return { ranges: this.ranges, data };
  }

  /**
   * Turns copied pages into a segment: zero pages become marks and leave the buffer (the rest is
   * compacted in place), and every page's hash goes into the image digest.
   */
  private finalize(src: RangeList, data: Uint8Array, phase: PageSegment['phase'], out = new RangeList(src.length + 4)): PageSegment {
    const ps = this.source.pageSize;
    const pw = this.pageWords;
    const words = new Uint32Array(data.buffer, data.byteOffset, data.byteLength >>> 2);
    let read = 0;
    let write = 0;
    for (let i = 0; i < src.length; i++) {
      const slot = src.slots[i]!;
      const first = src.firsts[i]!;
      const count = src.counts[i]!;
      for (let k = 0; k < count; k++, read++) {
        const gfn = first + k;
        if (isZeroPage(words, read * pw, pw)) {
          this.digest.setPageHash(slot, gfn, 0, 0);
          out.push(slot, gfn, 1, true);
          continue;
        }
        this.digest.updatePage(words, read * pw, pw, slot, gfn);
        if (write !== read) data.copyWithin(write * ps, read * ps, (read + 1) * ps);
        out.push(slot, gfn, 1, false);
        write++;
      }
    }
    // A view: for the pause's copy, of the staging buffer, which the next pause overwrites (PageSegment's lifetime).
    return { ranges: out, data: data.subarray(0, write * ps), phase };
  }

  /** The baseline's live full copy, in chunks; sparse sources are read only where they hold data. */
  private async copyWholeGuest(emit: (seg: PageSegment) => Promise<void>): Promise<void> {
    const chunk = this.opts.baselineChunkPages;
    const ps = this.source.pageSize;
    const one = { slots: new Uint32Array(1), firsts: new Uint32Array(1), counts: new Uint32Array(1) };
    const readChunk = async (slot: number, first: number, count: number): Promise<void> => {
      one.slots[0] = slot;
      one.firsts[0] = first;
      one.counts[0] = count;
      const data = new Uint8Array(count * ps);
      this.source.readRanges(one.slots, one.firsts, one.counts, 1, data);
      const r = new RangeList(1);
      r.push(slot, first, count, false);
      await emit(this.finalize(r, data, 'baseline'));
      // A long live copy must not leave the guest stalled on a full ring (or let the kernel overrun it).
      this.relieveIfStalled();
      // Nor the process deaf: a sink with room resolves at once, and a chain of resolved awaits never
      // lets timers, signals or /healthz run (a 16 GiB baseline held them 24 s).
      if (performance.now() - lastYield > YIELD_EVERY_MS) {
        await yieldToEventLoop();
        lastYield = performance.now();
      }
    };
    let lastYield = performance.now();
    for (const s of this.source.slots) {
      const populated = this.source.populatedPages?.(s.id);
      if (!populated) {
        for (let first = 0; first < s.pages; first += chunk) await readChunk(s.id, first, Math.min(chunk, s.pages - first));
        continue;
      }
      // Sparse: zero marks for the gaps, reads for runs of populated pages.
      const pages = Float64Array.from(populated).sort();
      let marks = new RangeList(64);
      let next = 0;
      let i = 0;
      while (i < pages.length) {
        const start = pages[i]!;
        let end = start + 1;
        i++;
        while (i < pages.length && pages[i] === end && end - start < chunk) {
          end++;
          i++;
        }
        if (start > next) {
          marks.push(s.id, next, start - next, true);
          this.digest.zeroRange(s.id, next, start - next);
        }
        if (marks.length >= 1024) {
          await emit({ ranges: marks, data: new Uint8Array(0), phase: 'baseline' });
          marks = new RangeList(64);
        }
        await readChunk(s.id, start, end - start);
        next = end;
      }
      if (next < s.pages) {
        marks.push(s.id, next, s.pages - next, true);
        this.digest.zeroRange(s.id, next, s.pages - next);
      }
      if (marks.length > 0) await emit({ ranges: marks, data: new Uint8Array(0), phase: 'baseline' });
    }
  }
}
