/**
 * Where dirty pages enter the product. A DirtySource is a running guest plus the kernel's record of
 * the pages it wrote: real KVM through the native helper (`kvm-source.ts`) or the simulator
 * (`sim/sim-source.ts`). Both follow the kernel's rules; the checkpoint cycle only sees this interface.
 */

export interface SlotInfo {
  /** `as_id << 16 | slot_id`, as in `kvm_dirty_gfn.slot`. */
  id: number;
  /** Slot size in pages. */
  pages: number;
  /** Guest-physical address of the slot's first byte. */
  gpa: number;
}

export interface SourceStats {
  ringFullExits: number;
  invalidEntries: number;
  entriesHarvested: number;
  entriesMarkedReset: number;
  resetReturnedTotal: number;
  vcpusStalledRingFull: number;
  /**
   * Ring entries the kernel overwrote before they were harvested (a full ring overrun past its
   * reserved entries). Any increase breaks continuity: the harvester starts a new generation.
   */
  ringEntriesLost: number;
  /**
   * Real KVM: the kernel refused the probe that proves a ring drained full at a pause, so an overrun
   * harvested there shows one epoch late (after that epoch was committed). Absent on the simulator.
   */
  ringProbeFailed?: boolean;
}

export type SourceKind = 'kvm' | 'sim';
export type HarvestMode = 'ring' | 'bitmap';

export interface DirtySource {
  readonly kind: SourceKind;
  readonly mode: HarvestMode;
  readonly pageSize: number;
  readonly slots: readonly SlotInfo[];
  readonly vcpuCount: number;
  readonly vcpuStateBytes: number;
  /** Ring entries per vCPU (0 in bitmap mode). */
  readonly ringEntries: number;

  /** Starts the guest's vCPUs. */
  start(): void;
  /** Stops every vCPU outside guest mode; returns when all are parked. */
  pause(): void;
  resume(): void;
  /**
   * Harvests dirty GFNs into the arrays from index `at` (default 0) (ring: entries marked RESET;
   * bitmap: GET_DIRTY_LOG). Returns how many were written; a result below
   * min(slots.length, offsets.length) - at means all drained, and then, with `thenReset`, reset()
   * was done too (real KVM: in the same native call, which keeps the pause short).
   */
  drain(slots: Uint32Array, offsets: Uint32Array, at?: number, thenReset?: boolean): number;
  /** Re-arms write protection for what drain() harvested (KVM_RESET_DIRTY_RINGS / KVM_CLEAR_DIRTY_LOG). */
  reset(): number;
  /**
   * Copies `n` ranges back to back into `out`; returns bytes written. `resident` says the pages were
   * harvested dirty (so populated): a source may then copy them faster.
   */
  readRanges(slots: Uint32Array, firsts: Uint32Array, counts: Uint32Array, n: number, out: Uint8Array, resident?: boolean): number;
  /** Fills `out` with vCPU `index`'s register state; returns bytes written. */
  getVcpuState(index: number, out: Uint8Array): number;
  /** Per vCPU [loops, pagesWritten] from the guest's status pages (out[2i], out[2i+1]). */
  guestCounters(out: Float64Array): void;
  stats(): SourceStats;
  /** First fatal vCPU error, or null. */
  lastError(): string | null;
  /**
   * For sparse sources: the pages of `slot` that may be non-zero (all others are zero). Undefined for
   * dense sources, whose memory must be scanned.
   */
  populatedPages?(slot: number): Iterable<number>;
  close(): void;
}

/** Indexes into the guest counters filled by guestCounters(). */
export const COUNTER_LOOPS = 0;
export const COUNTER_PAGES = 1;

/**
 * The same guest with its vCPUs kept stopped: start() and resume() do nothing, everything else is the
 * source's own. Checkpointing it cuts epochs of a guest that no longer runs (for example, a baseline
 * that answers a resync request after the guest was stopped).
 */
export function stoppedGuest(source: DirtySource): DirtySource {
  const noop = (): void => undefined;
  return new Proxy(source, {
    get(target, prop) {
      if (prop === 'start' || prop === 'resume') return noop;
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}
