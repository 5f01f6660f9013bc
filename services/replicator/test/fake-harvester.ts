/**
 * Builds epochs as a harvester would (one slot of 1024 pages), keeping the model image they describe.
 * Shared by the replicator's and the pipeline's tests.
 */
import { SparseImage } from '@ckpt/common';
import { encodeEpochRecord, type EpochRecord } from '@ckpt/proto';

export const PAGE = 4096;
export const SLOT_PAGES = 1024;

/** Builds epochs like a harvester would, keeping the model image they describe. */
export class FakeHarvester {
  readonly model = new SparseImage(PAGE, [SLOT_PAGES]);
  epoch = 0;
  /** How long before its commit each epoch's pause began (a commit held back by the replication window: seconds). */
  commitDelayMs = 0;
  constructor(readonly vm: string, public generation: number) {}

  /** One epoch writing `pages` (gfn -> fill byte, 0 = zero page); returns its records. */
  epochRecords(pages: Map<number, number>, perBatch = 3): Buffer[] {
    const baseline = this.epoch === 0;
    const head = { vm: this.vm, generation: this.generation, epoch: this.epoch };
    const recs: EpochRecord[] = [{ ...head, kind: 'begin', begin: { pageSize: PAGE, slots: [{ id: 0, pages: SLOT_PAGES }], vcpus: 1, baseline, startedAtMs: Date.now() } }];
    const gfns = [...pages.keys()].sort((a, b) => a - b);
    let seq = 0;
    for (let i = 0; i < gfns.length; i += perBatch) {
      const chunk = gfns.slice(i, i + perBatch);
      const data: number[] = [];
      const zero: number[] = [];
      for (const g of chunk) {
        const v = pages.get(g)!;
        zero.push(v === 0 ? 1 : 0);
        if (v === 0) this.model.zeroPages(0, g, 1);
        else {
          const p = new Uint8Array(PAGE).fill(v);
          p[0] = g & 0xff;
          this.model.writePages(0, g, 1, p, 0);
          data.push(...p);
        }
      }
      const bytes = Uint8Array.from(data);
      recs.push({ ...head, kind: 'batch', batch: { seq: seq++, slots: chunk.map(() => 0), firsts: chunk, counts: chunk.map(() => 1), zero: Uint8Array.from(zero), compression: 'none', data: bytes, dataBytes: bytes.byteLength } });
    }
    recs.push({ ...head, kind: 'commit', commit: {
      batches: seq, pages: gfns.length, zeroPages: 0, dataBytes: 0, digest: this.model.digest().toHex(), vcpuStates: [Uint8Array.of(1, 2, 3)],
      guestCounters: [1, 2], pauseUs: 100, startedAtMs: Date.now(), committedAtMs: Date.now(), pausedAtMs: Date.now() - this.commitDelayMs,
    } });
    this.epoch++;
    return recs.map((r) => Buffer.from(encodeEpochRecord(r)));
  }
}

