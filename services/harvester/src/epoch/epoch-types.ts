import type { RangeList } from '@ckpt/common';
import type { SlotInfo } from '../sources/dirty-source.ts';

/** Opens an epoch: everything a consumer needs before the first page. */
export interface EpochHeader {
  generation: number;
  epoch: number;
  /** Epoch 0 of a generation: every page of the guest (zero pages as marks). */
  baseline: boolean;
  pageSize: number;
  slots: readonly SlotInfo[];
  vcpus: number;
  startedAtMs: number;
}

/**
 * Pages of an epoch, in the order they must be applied (a later segment of the same epoch may carry a
 * newer copy of a page sent earlier, e.g. after a pre-copy round). Zero ranges are marks: their pages
 * are not in `data`. `data` holds the data ranges' pages back to back in range order.
 *
 * Lifetime: `ranges` and `data` stay valid until the cycle's next cut() begins, not longer. The pause's
 * segment (phase 'paused') lies in a staging buffer that the next pause fills again: a fresh buffer per
 * epoch cost a page fault per 4 KiB and V8 collections driven by the external memory. (A pause of more
 * than 64 MiB copies into a buffer of its own; the rule is the same.) cut() awaits every sink's
 * segment() and commit() and the harvest loop's onEpoch runs before the next cut, so a sink that is
 * done with the pages by then needs no copy; one that keeps them longer copies them.
 */
export interface PageSegment {
  ranges: RangeList;
  data: Uint8Array;
  phase: 'baseline' | 'precopy' | 'paused';
}

/** Closes an epoch. */
export interface EpochCommit {
  generation: number;
  epoch: number;
  baseline: boolean;
  /** Pages in this epoch's segments (a page sent twice counts twice). */
  pages: number;
  zeroPages: number;
  /** Bytes of page data (zero pages excluded). */
  bytes: number;
  /** Image digest of the whole guest as of this epoch (16 hex digits). */
  digest: string;
  /** Raw register state per vCPU, captured while paused. */
  vcpuStates: Uint8Array[];
  /** Per vCPU [loops, pagesWritten] read while paused. */
  guestCounters: number[];
  /** Guest pause: pause() to the end of the state capture, microseconds. */
  pauseUs: number;
  /** Stopping the vCPUs, draining every ring and resetting it (one native call), microseconds. */
  drainUs: number;
  copyUs: number;
  /** Entries harvested for this epoch (live relief, pre-copy rounds and the pause). */
  entriesHarvested: number;
  precopyRounds: number;
  precopyPages: number;
  /** Wall-clock time the pause began: the guest time this epoch holds (RPO counts from here). */
  pausedAtMs: number;
  /** Wall-clock time the epoch was committed: after its pages were handed to the sinks, which may wait (the replication window). */
  committedAtMs: number;
}

/** Receives epochs as they are cut: the shadow verifier, the Kafka publisher. */
export interface EpochSink {
  begin(header: EpochHeader): void | Promise<void>;
  segment(header: EpochHeader, segment: PageSegment): void | Promise<void>;
  commit(header: EpochHeader, commit: EpochCommit): void | Promise<void>;
}
