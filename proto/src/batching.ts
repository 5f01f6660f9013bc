/**
 * Splitting an epoch's pages into PageBatch records that stay under the topic's message limit.
 * A batch's page bytes are a view of the segment's buffer (consecutive data ranges are contiguous),
 * so splitting copies no page.
 */
import { CkptError } from '@ckpt/common';

/** Ranges as the harvester hands them over (RangeList from @ckpt/common fits). */
export interface RangesLike {
  readonly length: number;
  readonly slots: ArrayLike<number>;
  readonly firsts: ArrayLike<number>;
  readonly counts: ArrayLike<number>;
  /** 1 = zero pages (no bytes in data). */
  readonly zero: ArrayLike<number>;
}

export interface BatchPart {
  slots: Uint32Array;
  firsts: Uint32Array;
  counts: Uint32Array;
  zero: Uint8Array;
  /** Uncompressed page bytes of the non-zero ranges, a view of the segment's buffer. */
  data: Uint8Array;
  pages: number;
}

/** Worst-case protobuf bytes per range (three 5-byte varints and the zero flag, plus tags). */
export const RANGE_OVERHEAD_BYTES = 20;
/** Room for the record's header fields (VM id excluded) and the data field's tag and length. */
export const RECORD_OVERHEAD_BYTES = 256;

/** The smallest sensible record limit for a page size: one page plus headers. */
export function minRecordBytes(pageSize: number, vmIdBytes: number): number {
  return pageSize + RECORD_OVERHEAD_BYTES + vmIdBytes + 2 * RANGE_OVERHEAD_BYTES;
}

/**
 * Splits ranges and their page bytes into parts whose encoded record stays within `maxRecordBytes`.
 * A range that does not fit is split across parts.
 */
export function splitIntoBatches(ranges: RangesLike, data: Uint8Array, pageSize: number, maxRecordBytes: number, vmIdBytes: number): BatchPart[] {
  const budget = maxRecordBytes - RECORD_OVERHEAD_BYTES - vmIdBytes;
  if (budget < pageSize + 2 * RANGE_OVERHEAD_BYTES) {
    throw new CkptError('CKPT_ERR_CONFIG', `a record limit of ${maxRecordBytes} bytes cannot hold one ${pageSize}-byte page; use at least ${minRecordBytes(pageSize, vmIdBytes)}`);
  }
  const parts: BatchPart[] = [];
  let s: number[] = [], f: number[] = [], c: number[] = [], z: number[] = [];
  let used = 0; // bytes of this part: page data plus range overhead
  let dataStart = 0; // offset in `data` of this part's first data page
  let dataOff = 0; // offset in `data` of the next data page
  let pages = 0;
  const flush = (): void => {
    if (s.length === 0) return;
    parts.push({
      slots: Uint32Array.from(s), firsts: Uint32Array.from(f), counts: Uint32Array.from(c), zero: Uint8Array.from(z),
      data: data.subarray(dataStart, dataOff), pages,
    });
    s = []; f = []; c = []; z = [];
    used = 0;
    pages = 0;
    dataStart = dataOff;
  };
  for (let i = 0; i < ranges.length; i++) {
    const slot = ranges.slots[i]!;
    let first = ranges.firsts[i]!;
    let count = ranges.counts[i]!;
    const isZero = ranges.zero[i] === 1;
    while (count > 0) {
      if (used + RANGE_OVERHEAD_BYTES + (isZero ? 0 : pageSize) > budget) flush();
      const fit = isZero ? count : Math.min(count, Math.floor((budget - used - RANGE_OVERHEAD_BYTES) / pageSize));
      s.push(slot); f.push(first); c.push(fit); z.push(isZero ? 1 : 0);
      used += RANGE_OVERHEAD_BYTES + (isZero ? 0 : fit * pageSize);
      if (!isZero) dataOff += fit * pageSize;
      pages += fit;
      first += fit;
      count -= fit;
    }
  }
  flush();
  if (dataOff !== data.byteLength) {
    throw new CkptError('CKPT_ERR_INTERNAL', `segment ranges name ${dataOff} bytes of pages, its buffer holds ${data.byteLength}`);
  }
  return parts;
}
