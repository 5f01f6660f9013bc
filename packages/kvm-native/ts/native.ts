/**
 * Every function of the native helper (`build/Release/kvm_native.node`), declared in one place.
 * Nothing outside this package calls the binding directly: `index.ts` wraps it and turns
 * native failures into typed `KvmError`s.
 *
 * Native failures are thrown as plain `Error`s carrying `op` (what the helper was doing,
 * e.g. "open-dev", "create-vm", "enable-dirty-ring"), `syscall` (e.g. "ioctl(KVM_CREATE_VM)")
 * and `errno` (positive errno value, 0 when not a syscall failure). Argument mistakes are thrown
 * as `TypeError`/`RangeError` with a message naming the argument.
 */

/** Capabilities read from /dev/kvm and a scratch VM fd (KVM_CHECK_EXTENSION). */
export interface NativeProbe {
  apiVersion: number;
  /** KVM_CAP_DIRTY_LOG_RING on a VM fd: max ring size in bytes, 0 when absent. */
  dirtyRingMaxBytes: number;
  /** KVM_CAP_DIRTY_LOG_RING_ACQ_REL on a VM fd: max ring size in bytes, 0 when absent. */
  dirtyRingAcqRelMaxBytes: number;
  /** KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 value (bit flags supported), 0 when absent. */
  manualProtect: number;
  recommendedVcpus: number;
  maxVcpus: number;
  /** sysconf(_SC_PAGESIZE). */
  pageSize: number;
}

export const enum NativeWorkload {
  Idle = 0,
  Sequential = 1,
  Random = 2,
  HotSet = 3,
}

export interface NativeVmOptions {
  devPath: string;
  /** Memslot sizes in bytes, each a positive multiple of 2 MiB; slot i is at GPA sum(previous). Slot 0 at least 8 MiB. */
  slotBytes: number[];
  vcpus: number;
  /** Dirty ring size in bytes per vCPU (power of two); 0 selects bitmap mode (KVM_GET_DIRTY_LOG + manual protect). */
  ringBytes: number;
  /** true: write page tables, control block and guest code, set up vCPUs at the entry point. false: leave memory zero (restore). */
  loadGuest: boolean;
  workload: NativeWorkload;
  /** Page writes per second per vCPU; 0 = as fast as the guest can. */
  ratePagesPerSec: number;
  seed: number;
  hotPages: number;
  hotPercent: number;
  /** Fill the whole page with pseudo-random words after the stamp (incompressible), not only the 16-byte stamp. */
  fillPages: boolean;
  /** Total page writes each vCPU may do; 0 = unlimited. Raised later with grantWrites(). */
  maxWritesPerVcpu: number;
  /** How long a vCPU thread sleeps when it has no budget (microseconds). */
  tickUs: number;
  /** Prove a ring seen full at the pause that follows, before its epoch can be committed. */
  probeFullRings: boolean;
}

/** Opaque handle: a JS object wrapping the VM; never a raw pointer. */
export interface NativeVm {
  readonly __brand: 'NativeVm';
}

/** Indexes into the Float64Array filled by stats(). */
export const enum NativeStat {
  RingFullExits = 0,
  InvalidEntries = 1,
  EntriesHarvested = 2,
  EntriesMarkedReset = 3,
  ResetReturnedTotal = 4,
  IoExits = 5,
  Kicks = 6,
  VcpusStalledRingFull = 7,
  RunErrors = 8,
  Mode = 9,
  AcqRel = 10,
  RingEntries = 11,
  BitmapPagesCleared = 12,
  /**
   * Ring entries the kernel overwrote before they were harvested (a kernel-side ring overflow,
   * recovered by the helper). Non-zero means some dirty pages may be missing from the harvests.
   */
  RingEntriesLost = 13,
  RingProbes = 14,
  RingProbeFailed = 15,
  Length = 16,
}

export interface NativeBinding {
  /** Which CRC-32C code crc32c() runs on this CPU: "sse4.2" (the crc32 instruction) or "table". */
  readonly crc32cImpl: 'sse4.2' | 'table';
  /** Size of the buffer getVcpuState() fills: struct kvm_regs + struct kvm_sregs. */
  readonly vcpuStateBytes: number;
  /** The fixed guest-physical layout used by the guest program (see guest/layout.h). */
  readonly guestLayout: {
    pageTablesGpa: number;
    controlGpa: number;
    statusGpa: number;
    statusStride: number;
    codeGpa: number;
    stacksGpa: number;
    stackBytes: number;
    regionGpa: number;
    /** The workload region ends here at the latest (x86's APIC window starts here). */
    regionEndGpa: number;
    probeGpa: number;
    maxVcpus: number;
    /** Largest guest (all slots) the guest's page tables map, in GiB. */
    maxGib: number;
    stampMagic: number;
  };
  probe(devPath: string): NativeProbe;
  createVm(options: NativeVmOptions): NativeVm;
  /** Starts one thread per vCPU running KVM_RUN. */
  start(vm: NativeVm): void;
  /** Kicks every vCPU out of KVM_RUN (signal + immediate_exit) and returns when all are parked. */
  pause(vm: NativeVm): void;
  resume(vm: NativeVm): void;
  /**
   * The drain, with its VM and arrays fixed: the returned function (at, thenReset), in ring mode,
   * harvests DIRTY entries of every vCPU ring in vCPU order, marks each harvested entry RESET
   * (store-release under ACQ_REL), range-checks slot and offset; valid ones go into the arrays.
   * Bitmap mode: KVM_GET_DIRTY_LOG of every slot (once per reset), then emits set bits.
   * It writes from index `at` and returns the number of entries written; it stops early only when the
   * arrays are full (capacity = min(slots.length, offsets.length) - at), so a return below capacity means
   * "all drained". With `thenReset`, a drain that returns below capacity also does reset() in the
   * same call (one crossing into native code in the pause instead of two).
   * Bound, because finding the VM and the arrays was most of a drain's fixed cost in the pause. The
   * function keeps them alive. The caller must bind again if either array is detached or resized: the
   * function writes through the pointers and length it was bound with.
   */
  bindDrain(vm: NativeVm, slots: Uint32Array, offsets: Uint32Array): (at: number, thenReset: boolean) => number;
  /** Ring mode: KVM_RESET_DIRTY_RINGS, returns its result and wakes vCPUs stalled on a full ring. Bitmap: KVM_CLEAR_DIRTY_LOG of what drain fetched, returns pages cleared. */
  reset(vm: NativeVm): number;
  /** Copies `count` pages named by (slot, offset) pairs into `out` (count * pageSize bytes). RangeError on a bad slot/offset or short buffer. */
  readPages(vm: NativeVm, slots: Uint32Array, offsets: Uint32Array, count: number, out: Uint8Array): void;
  /**
   * Copies `n` ranges (slot, first page, page count) back to back into `out`; returns bytes written.
   * `resident`: the pages are known to be populated (harvested dirty), so they are copied from the
   * mapping with no syscall per range; otherwise pread() from the memfd, which never populates holes.
   */
  readRanges(vm: NativeVm, slots: Uint32Array, firsts: Uint32Array, counts: Uint32Array, n: number, out: Uint8Array, resident: boolean): number;
  /** Writes whole pages into guest memory at (slot, first page). Not logged by KVM: for restore only. */
  writeRange(vm: NativeVm, slot: number, firstPage: number, src: Uint8Array): void;
  /** Fills `out` (vcpuStateBytes) with the vCPU's kvm_regs + kvm_sregs; vCPU must be paused or not started. Returns bytes written. */
  getVcpuState(vm: NativeVm, index: number, out: Uint8Array): number;
  setVcpuState(vm: NativeVm, index: number, src: Uint8Array): void;
  /** Adds `n` to every vCPU's write allowance (see maxWritesPerVcpu) and wakes sleeping vCPUs. */
  grantWrites(vm: NativeVm, n: number): void;
  /** Per vCPU [loops, pagesWritten] read from the guest's status pages: out[2*i], out[2*i+1]. */
  guestCounters(vm: NativeVm, out: Float64Array): void;
  /** Fills `out` (length >= NativeStat.Length) with counters, see NativeStat. */
  stats(vm: NativeVm, out: Float64Array): void;
  /** Message of the first fatal vCPU error (unexpected exit reason, KVM_RUN failure), or null. */
  lastError(vm: NativeVm): string | null;
  /** Stops vCPU threads, unmaps, closes fds. Idempotent. Also done by the finalizer. */
  destroy(vm: NativeVm): void;
  /**
   * The ring parsing and validation code of drain(), run on a caller-provided ring image (entries of
   * 16 bytes: u32 flags, u32 slot, u64 offset). Starts at `fetchIndex`, stops at the first entry
   * without the DIRTY flag or after `ringEntries` entries. Marks each consumed entry RESET in `ring`.
   * `slotPages[slotId]` is each slot's size in pages (as_id 0 only).
   * Writes valid entries to outSlots/outOffsets and returns [valid, invalid, nextFetchIndex].
   */
  parseRing(ring: Uint8Array, ringEntries: number, fetchIndex: number, slotPages: Float64Array,
    outSlots: Uint32Array, outOffsets: Uint32Array): [number, number, number];
  /** CRC-32C (Castagnoli) of `data`, as Kafka record batches carry it; `tableOnly` skips the crc32 instruction. */
  crc32c(data: Uint8Array, tableOnly: boolean): number;
  threadCpuMs(): number;
  /**
   * The benchmark's plain C harvest loop on this guest (src/harvest-rounds.c): `rounds` times, grants
   * `pages` writes to every vCPU, waits until they are written, pauses, drains into the arrays and
   * resets, resumes; us[r] and seen[r] get round r's drain+reset microseconds and entries.
   */
  harvestRounds(vm: NativeVm, pages: number, rounds: number, slots: Uint32Array, offsets: Uint32Array, us: Float64Array, seen: Float64Array): void;
}
