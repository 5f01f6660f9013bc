import { DIRTY_GFN_BYTES, F_DIRTY, F_RESET, RING_RESERVED_ENTRIES } from '../ring-parse.ts';

/**
 * The kernel's half of one vCPU's dirty ring, modelled on virt/kvm/dirty_ring.c: the same 16-byte
 * `kvm_dirty_gfn` entries in an ArrayBuffer, a push index, a reset index, and a soft limit of size
 * minus the reserved entries after which the vCPU must exit and wait for a reset.
 */
export class SimRing {
  readonly words: Uint32Array;
  readonly softLimit: number;
  private readonly mask: number;
  /** Next entry the "kernel" writes. */
  pushIndex = 0;
  /** Next entry KVM_RESET_DIRTY_RINGS examines. */
  resetIndex = 0;
  /** Userspace's harvest position (kept here for the simulator's drain). */
  fetchIndex = 0;

  constructor(readonly entries: number) {
    if (!Number.isInteger(entries) || entries <= RING_RESERVED_ENTRIES || (entries & (entries - 1)) !== 0) {
      throw new RangeError(`ring entries must be a power of two above ${RING_RESERVED_ENTRIES}, got ${entries}`);
    }
    this.words = new Uint32Array(new ArrayBuffer(entries * DIRTY_GFN_BYTES));
    this.mask = entries - 1;
    this.softLimit = entries - RING_RESERVED_ENTRIES;
  }

  get used(): number {
    return this.pushIndex - this.resetIndex;
  }

  get softFull(): boolean {
    return this.used >= this.softLimit;
  }

  /** Publishes an entry (slot, offset) with `flags`; returns false when the ring is hard-full. */
  push(slot: number, offset: number, flags = F_DIRTY): boolean {
    if (this.used >= this.entries) return false;
    const w = (this.pushIndex & this.mask) * 4;
    this.words[w + 1] = slot >>> 0;
    this.words[w + 2] = offset >>> 0;
    this.words[w + 3] = Math.floor(offset / 0x100000000) >>> 0;
    this.words[w] = flags >>> 0; // flags last: the kernel's smp_wmb() before setting DIRTY
    this.pushIndex++;
    return true;
  }

  /**
   * KVM_RESET_DIRTY_RINGS for this ring: walks entries userspace marked RESET, calls `rearm` for each
   * (the kernel re-protects the page, ignoring slots/offsets it does not know), clears them and returns
   * how many were reset.
   */
  reset(rearm: (slot: number, offset: number) => void): number {
    let n = 0;
    while (this.resetIndex < this.pushIndex) {
      const w = (this.resetIndex & this.mask) * 4;
      if ((this.words[w]! & F_RESET) === 0) break;
      rearm(this.words[w + 1]!, this.words[w + 2]! + this.words[w + 3]! * 0x100000000);
      this.words[w] = 0;
      this.resetIndex++;
      n++;
    }
    return n;
  }
}
