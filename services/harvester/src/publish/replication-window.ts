/**
 * The harvester's view of how far the replicator has got with this VM: records produced but not yet
 * reported processed (AppliedMarker), and their bytes. Positions order as (generation, epoch, part).
 */
import type { AppliedMarker } from '@ckpt/proto';

/** A record produced and not yet reported processed; where it landed once the broker acknowledged it. */
export interface Pending { generation: number; epoch: number; part: number; bytes: number; acked?: boolean; partition?: number; offset?: bigint }

const before = (a: Pending, m: AppliedMarker): boolean =>
  a.generation < m.generation || (a.generation === m.generation && (a.epoch < m.epoch || (a.epoch === m.epoch && a.part <= m.part)));

export class ReplicationWindow {
  private pending: Pending[] = [];
  private head = 0;
  private bytes = 0;
  private waiters: (() => void)[] = [];
  lastMarker: AppliedMarker | null = null;
  /** performance.now() of the last marker that released bytes. */
  lastChangeMs = 0;

  /** Bytes produced and not yet processed by the replicator. */
  get unappliedBytes(): number {
    return this.bytes;
  }

  produced(generation: number, epoch: number, part: number, bytes: number): Pending {
    const p: Pending = { generation, epoch, part, bytes };
    this.pending.push(p);
    this.bytes += bytes;
    return p;
  }

  /** The oldest record not yet reported processed. */
  oldest(): Pending | null {
    return this.pending[this.head] ?? null;
  }

  marker(m: AppliedMarker): void {
    this.lastMarker = m;
    while (this.head < this.pending.length && before(this.pending[this.head]!, m)) {
      this.bytes -= this.pending[this.head]!.bytes;
      this.head++;
      this.lastChangeMs = performance.now();
    }
    if (this.head > 1024 && this.head * 2 > this.pending.length) {
      this.pending = this.pending.slice(this.head);
      this.head = 0;
    }
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Forgets everything: records that will never be reported (never sent, or gone from the broker after a stall). */
  clear(): void {
    this.pending = [];
    this.head = 0;
    this.bytes = 0;
  }

  /** Resolves at the next marker, or after `ms`. */
  changed(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      this.waiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }
}
