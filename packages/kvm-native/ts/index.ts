/**
 * The TypeScript face of the native KVM helper: loads `build/Release/kvm_native.node`, validates
 * options before they reach the kernel, and turns every native failure into a typed `KvmError`
 * (stable `code`, `syscall` and `errno` in its context). Nothing else in the product calls the
 * binding directly; its contract is `native.ts`.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { constants as osConstants } from 'node:os';
import { fileURLToPath } from 'node:url';
import { KvmError, errorMessage } from '@ckpt/common';
import { NativeStat, NativeWorkload, type NativeBinding, type NativeProbe, type NativeVm, type NativeVmOptions } from './native.ts';

export * from './native.ts';

/** Stable codes of the errors this package throws. */
export const KVM_ERROR_CODES = Object.freeze({
  /** The addon was never built. */
  NATIVE_MISSING: 'CKPT_ERR_KVM_NATIVE_MISSING',
  /** The addon exists but does not load (built for another Node ABI, broken file). */
  NATIVE_LOAD: 'CKPT_ERR_KVM_NATIVE_LOAD',
  NO_DEVICE: 'CKPT_ERR_KVM_NO_DEVICE',
  PERMISSION: 'CKPT_ERR_KVM_PERMISSION',
  RING_SIZE: 'CKPT_ERR_KVM_RING_SIZE',
  NO_DIRTY_RING: 'CKPT_ERR_KVM_NO_DIRTY_RING',
  NO_MANUAL_PROTECT: 'CKPT_ERR_KVM_NO_MANUAL_PROTECT',
  /** The VM is in the wrong state for the call (destroyed, running, not started, ...). */
  STATE: 'CKPT_ERR_KVM_STATE',
  /** Any other failing system call; `context.syscall` and `context.errno` say which. */
  SYSCALL: 'CKPT_ERR_KVM_SYSCALL',
});

/** Bytes of one `struct kvm_dirty_gfn`. */
export const DIRTY_GFN_BYTES = 16;
/** Smallest ring this package accepts: KVM needs room for its reserved entries plus useful work. */
export const MIN_RING_ENTRIES = 1024;

const ADDON_PATH = fileURLToPath(new URL('../build/Release/kvm_native.node', import.meta.url));
let cached: NativeBinding | undefined;

/** Loads the addon once. Throws CKPT_ERR_KVM_NATIVE_MISSING when it was not built. */
export function loadNative(): NativeBinding {
  if (cached) return cached;
  if (!existsSync(ADDON_PATH)) {
    throw new KvmError(KVM_ERROR_CODES.NATIVE_MISSING,
      `cannot load the native KVM helper: ${ADDON_PATH} does not exist; run \`npm run build:native\``);
  }
  try {
    cached = createRequire(import.meta.url)(ADDON_PATH) as NativeBinding;
  } catch (err) {
    throw new KvmError(KVM_ERROR_CODES.NATIVE_LOAD,
      `cannot load the native KVM helper ${ADDON_PATH}: ${errorMessage(err)}; rebuild it with \`npm run build:native\``,
      { cause: err });
  }
  return cached;
}

/** The fields the addon puts on the plain Errors it throws. */
interface NativeFailure {
  message: string;
  op: string;
  syscall: string;
  errno: number;
}

function nativeFailure(err: unknown): NativeFailure | undefined {
  if (!(err instanceof Error)) return undefined;
  const e = err as Error & Partial<NativeFailure>;
  if (typeof e.op !== 'string' || typeof e.errno !== 'number') return undefined;
  return { message: e.message, op: e.op, syscall: typeof e.syscall === 'string' ? e.syscall : '', errno: e.errno };
}

const ERRNO = osConstants.errno;
const ERRNO_NAMES = new Map<number, string>(Object.entries(ERRNO).map(([name, n]) => [n, name]));

/**
 * Turns a native failure into a KvmError with a stable code. `devPath` is the device the call used
 * (for messages). Argument errors (TypeError/RangeError) are wrapped too; KvmVm passes those through
 * untouched instead of calling this.
 */
export function toKvmError(err: unknown, devPath = '/dev/kvm'): KvmError {
  if (err instanceof KvmError) return err;
  const n = nativeFailure(err);
  if (!n) return new KvmError(KVM_ERROR_CODES.SYSCALL, `cannot complete the KVM operation: ${errorMessage(err)}`, { cause: err });
  const context = { op: n.op, syscall: n.syscall, errno: n.errno, errnoName: ERRNO_NAMES.get(n.errno) ?? null, devPath };
  const opts = { cause: err, context };
  const { op, errno } = n;
  if (op === 'open-dev' && (errno === ERRNO.ENOENT || errno === ERRNO.ENODEV || errno === ERRNO.ENXIO)) {
    return new KvmError(KVM_ERROR_CODES.NO_DEVICE,
      `cannot open ${devPath}: no such device; this host needs KVM (load kvm_intel/kvm_amd, or use --source sim)`, opts);
  }
  if (errno === ERRNO.EACCES || errno === ERRNO.EPERM) {
    const what = op === 'open-dev' ? `cannot open ${devPath}: permission denied` : n.message;
    return new KvmError(KVM_ERROR_CODES.PERMISSION, `${what}; make sure the user can open /dev/kvm (root or the kvm group)`, opts);
  }
  if (op === 'enable-dirty-ring' && errno === ERRNO.ENOTSUP) {
    return new KvmError(KVM_ERROR_CODES.NO_DIRTY_RING, `${n.message}; use ringEntries 0 (bitmap mode) or Linux 5.11 or later`, opts);
  }
  if (op === 'enable-dirty-ring' && (errno === ERRNO.EINVAL || errno === ERRNO.E2BIG)) {
    return new KvmError(KVM_ERROR_CODES.RING_SIZE,
      `${n.message}; use a power-of-two ring of at least ${MIN_RING_ENTRIES} entries within the host's maximum`, opts);
  }
  if (op === 'enable-manual-protect' && errno === ERRNO.ENOTSUP) {
    return new KvmError(KVM_ERROR_CODES.NO_MANUAL_PROTECT, `${n.message}; use a dirty ring (ringEntries > 0) or a newer kernel`, opts);
  }
  if (errno === 0) return new KvmError(KVM_ERROR_CODES.STATE, n.message, opts);
  return new KvmError(KVM_ERROR_CODES.SYSCALL, n.message, {
    ...opts,
    retriable: errno === ERRNO.EINTR || errno === ERRNO.EAGAIN || errno === ERRNO.ENOMEM,
  });
}

/** Runs a binding call; argument mistakes pass through, native failures become KvmErrors. */
function call<T>(fn: () => T, devPath: string): T {
  try {
    return fn();
  } catch (err) {
    throw thrownByNative(err, devPath);
  }
}

/** What the binding threw, as callers see it: argument mistakes as they are, the rest as KvmError. */
function thrownByNative(err: unknown, devPath: string): unknown {
  return err instanceof TypeError || err instanceof RangeError ? err : toKvmError(err, devPath);
}

/** Capabilities of the host's KVM, or a typed error. */
export function probeKvm(devPath = '/dev/kvm'): NativeProbe {
  const native = loadNative();
  return call(() => native.probe(devPath), devPath);
}

/* Capabilities do not change while the process runs: probe each device once for create(). */
const probes = new Map<string, NativeProbe>();
function cachedProbe(devPath: string): NativeProbe {
  let p = probes.get(devPath);
  if (!p) {
    p = probeKvm(devPath);
    probes.set(devPath, p);
  }
  return p;
}

export type KvmAvailability = { usable: true } | { usable: false; reason: string; code: string };

/**
 * CRC-32C (Castagnoli) of `data`, as Kafka record batches carry it, in C (src/crc32c.c: the crc32
 * instruction where the CPU has it). `tableOnly` runs the portable table loop instead (tests compare
 * the two). Throws CKPT_ERR_KVM_NATIVE_MISSING when the helper is not built; needs no /dev/kvm.
 */
export function crc32c(data: Uint8Array, tableOnly = false): number {
  return loadNative().crc32c(data, tableOnly);
}

/** Which code crc32c() runs here: "sse4.2" or "table". Throws like crc32c() without the helper. */
export function crc32cImpl(): 'sse4.2' | 'table' {
  return loadNative().crc32cImpl;
}

/**
 * CPU time of the calling thread in milliseconds (CLOCK_THREAD_CPUTIME_ID; Node 20 has no
 * process.threadCpuUsage()). Throws like crc32c() without the helper.
 */
/** Bytes of one vCPU's state as getVcpuState() saves and setVcpuState() loads it on this build. */
export function vcpuStateBytes(): number {
  return loadNative().vcpuStateBytes;
}

export function threadCpuMs(): number {
  return loadNative().threadCpuMs();
}

/** Whether real KVM can be used here, and if not why. Never throws. */
export function kvmAvailability(devPath = '/dev/kvm'): KvmAvailability {
  try {
    const p = probeKvm(devPath);
    if (p.apiVersion !== 12) return { usable: false, reason: `${devPath} speaks KVM API ${p.apiVersion}, not 12`, code: KVM_ERROR_CODES.NO_DEVICE };
    return { usable: true };
  } catch (err) {
    const k = toKvmError(err, devPath);
    return { usable: false, reason: k.message, code: k.code };
  }
}

export type WorkloadName = 'idle' | 'sequential' | 'random' | 'hotset';
const WORKLOAD_BY_NAME: Readonly<Record<WorkloadName, NativeWorkload>> = {
  idle: NativeWorkload.Idle, sequential: NativeWorkload.Sequential, random: NativeWorkload.Random, hotset: NativeWorkload.HotSet,
};

/**
 * Options of KvmVm.create: NativeVmOptions with defaults, workload names, and the ring given in
 * entries (`ringEntries`, 0 = bitmap mode) instead of bytes.
 */
export interface KvmVmOptions {
  /** Memslot sizes in bytes, each a positive multiple of 2 MiB; slot 0 at least 8 MiB. */
  slotBytes: readonly number[];
  /** Default '/dev/kvm'. */
  devPath?: string;
  /** Default 1. */
  vcpus?: number;
  /** Dirty ring entries per vCPU: a power of two >= 1024 within the host's maximum; 0 = bitmap mode. Default 4096. */
  ringEntries?: number;
  /** Default true; false creates an empty VM for a restore. */
  loadGuest?: boolean;
  /** A NativeWorkload id (0..3) or its name. Default 'sequential'. */
  workload?: number | WorkloadName;
  /** Page writes per second per vCPU; 0 = unpaced. Default 1000. */
  ratePagesPerSec?: number;
  /** Default 1. */
  seed?: number;
  /** Hot set size for 'hotset'. Default min(1024, region pages). */
  hotPages?: number;
  /** Default 90. */
  hotPercent?: number;
  /** Default false. */
  fillPages?: boolean;
  /** Total writes per vCPU before grantWrites() is needed; 0 = unlimited. Default 0. */
  maxWritesPerVcpu?: number;
  /** Sleep of an idle vCPU thread, microseconds. Default 1000. */
  tickUs?: number;
  /**
   * Ring mode: at a pause, prove each ring drained full since it was last proven, by making the
   * kernel publish one entry (see reset()). Default true; false is for tests that show the gap it closes.
   */
  probeFullRings?: boolean;
}

const DEFAULT_WORKLOAD: WorkloadName = 'sequential';

export const KVM_VM_DEFAULTS = Object.freeze({
  devPath: '/dev/kvm',
  vcpus: 1,
  ringEntries: 4096,
  loadGuest: true,
  workload: DEFAULT_WORKLOAD,
  ratePagesPerSec: 1000,
  seed: 1,
  hotPercent: 90,
  fillPages: false,
  maxWritesPerVcpu: 0,
  tickUs: 1000,
  probeFullRings: true,
});

export interface KvmVmStats {
  ringFullExits: number;
  invalidEntries: number;
  entriesHarvested: number;
  /** Cumulative; equals resetReturnedTotal after every reset() when the kernel and we agree. */
  entriesMarkedReset: number;
  resetReturnedTotal: number;
  ioExits: number;
  kicks: number;
  vcpusStalledRingFull: number;
  runErrors: number;
  mode: 'ring' | 'bitmap';
  acqRel: boolean;
  ringEntries: number;
  bitmapPagesCleared: number;
  /** Ring entries the kernel overwrote before we harvested them: non-zero means pages may be missing. */
  ringEntriesLost: number;
  /**
   * Rings seen full that a pause proved: the kernel was made to publish one entry (a wall-clock
   * write to the guest's probe page), showing whether it had overwritten entries before the epoch
   * is committed.
   */
  ringProbes: number;
  /**
   * The probe failed on this kernel (it refused the MSR write or did not log it) and probing stopped:
   * an overrun harvested at a pause then shows one harvest late, after its epoch was cut.
   */
  ringProbeFailed: boolean;
}

function resolveWorkload(w: number | WorkloadName): NativeWorkload {
  if (typeof w === 'string') {
    const id = WORKLOAD_BY_NAME[w];
    if (id === undefined) throw new RangeError(`workload must be one of ${Object.keys(WORKLOAD_BY_NAME).join(', ')} or 0..3, got '${String(w)}'`);
    return id;
  }
  if (!Number.isInteger(w) || w < 0 || w > 3) throw new RangeError(`workload must be 0..3 or a workload name, got ${w}`);
  return w;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0 && n <= 2 ** 30;
}

/** Checks the ring request against the host's capabilities; throws the documented codes. */
function checkRing(ringEntries: number, probe: NativeProbe, devPath: string): void {
  const maxBytes = Math.max(probe.dirtyRingAcqRelMaxBytes, probe.dirtyRingMaxBytes);
  const maxEntries = maxBytes / DIRTY_GFN_BYTES;
  const allowed = maxBytes > 0 ? `a power of two from ${MIN_RING_ENTRIES} to ${maxEntries}, or 0 for bitmap mode` : '0 (bitmap mode)';
  const context = { devPath, ringEntries, maxEntries };
  if (ringEntries === 0) {
    if ((probe.manualProtect & 1) === 0) {
      throw new KvmError(KVM_ERROR_CODES.NO_MANUAL_PROTECT,
        `cannot use bitmap mode on ${devPath}: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is absent; use a dirty ring (ringEntries > 0)`, { context });
    }
    return;
  }
  if (!isPowerOfTwo(ringEntries) || ringEntries < MIN_RING_ENTRIES) {
    throw new KvmError(KVM_ERROR_CODES.RING_SIZE, `cannot use a dirty ring of ${ringEntries} entries: ringEntries must be ${allowed}`, { context });
  }
  if (maxBytes === 0) {
    throw new KvmError(KVM_ERROR_CODES.NO_DIRTY_RING,
      `cannot use a dirty ring on ${devPath}: KVM_CAP_DIRTY_LOG_RING is absent; use ringEntries 0 (bitmap mode)`, { context });
  }
  if (ringEntries * DIRTY_GFN_BYTES > maxBytes) {
    throw new KvmError(KVM_ERROR_CODES.RING_SIZE,
      `cannot use a dirty ring of ${ringEntries} entries: this host allows at most ${maxEntries}; ringEntries must be ${allowed}`, { context });
  }
}

/**
 * A real KVM VM running the test guest (docs/guest-program.md). Methods mirror the native binding
 * without the VM argument. Call destroy() when done (the finalizer also does it, but late).
 */
export class KvmVm {
  readonly vcpuStateBytes: number;
  readonly devPath: string;
  private readonly native: NativeBinding;
  private readonly handle: NativeVm;
  private readonly statsBuf = new Float64Array(NativeStat.Length);
  private readonly slotPageCounts: readonly number[];
  private readonly page: number;
  private readonly vcpus: number;
  private readonly ring: number;
  /** drain()'s arrays as last bound (NativeBinding.bindDrain), with their lengths then. */
  private bound: { slots: Uint32Array; offsets: Uint32Array; slotsLength: number; offsetsLength: number; drain: (at: number, thenReset: boolean) => number } | undefined;

  private constructor(native: NativeBinding, handle: NativeVm, options: NativeVmOptions, pageSize: number) {
    this.native = native;
    this.handle = handle;
    this.devPath = options.devPath;
    this.page = pageSize;
    this.vcpus = options.vcpus;
    this.ring = options.ringBytes / DIRTY_GFN_BYTES;
    this.slotPageCounts = Object.freeze(options.slotBytes.map((b) => b / pageSize));
    this.vcpuStateBytes = native.vcpuStateBytes;
  }

  /** Validates the options, probes the host, creates the VM (not started). */
  static create(opts: KvmVmOptions): KvmVm {
    const native = loadNative();
    const devPath = opts.devPath ?? KVM_VM_DEFAULTS.devPath;
    const slotBytes = Array.from<number>(opts.slotBytes ?? []);
    if (slotBytes.length === 0) throw new TypeError('slotBytes must be a non-empty array of slot sizes in bytes');
    const ringEntries = opts.ringEntries ?? KVM_VM_DEFAULTS.ringEntries;
    if (typeof ringEntries !== 'number' || !Number.isInteger(ringEntries) || ringEntries < 0) {
      throw new KvmError(KVM_ERROR_CODES.RING_SIZE, `cannot use a dirty ring of ${String(ringEntries)} entries: ringEntries must be a non-negative integer`);
    }
    const probe = cachedProbe(devPath);
    checkRing(ringEntries, probe, devPath);
    const workload = resolveWorkload(opts.workload ?? KVM_VM_DEFAULTS.workload);
    const totalPages = slotBytes.reduce((a, b) => a + b, 0) / probe.pageSize;
    // docs/guest-program.md: regionPages = min(totalPages, regionEndGpa / 4096) - 1024.
    const layout = native.guestLayout;
    const regionPages = Math.max(1, Math.min(Math.floor(totalPages), layout.regionEndGpa / probe.pageSize) - layout.regionGpa / probe.pageSize);
    const options: NativeVmOptions = {
      devPath,
      slotBytes,
      vcpus: opts.vcpus ?? KVM_VM_DEFAULTS.vcpus,
      ringBytes: ringEntries * DIRTY_GFN_BYTES,
      loadGuest: opts.loadGuest ?? KVM_VM_DEFAULTS.loadGuest,
      workload,
      ratePagesPerSec: opts.ratePagesPerSec ?? KVM_VM_DEFAULTS.ratePagesPerSec,
      seed: opts.seed ?? KVM_VM_DEFAULTS.seed,
      hotPages: opts.hotPages ?? Math.min(1024, regionPages),
      hotPercent: opts.hotPercent ?? KVM_VM_DEFAULTS.hotPercent,
      fillPages: opts.fillPages ?? KVM_VM_DEFAULTS.fillPages,
      maxWritesPerVcpu: opts.maxWritesPerVcpu ?? KVM_VM_DEFAULTS.maxWritesPerVcpu,
      tickUs: opts.tickUs ?? KVM_VM_DEFAULTS.tickUs,
      probeFullRings: opts.probeFullRings ?? KVM_VM_DEFAULTS.probeFullRings,
    };
    const handle = call(() => native.createVm(options), devPath);
    return new KvmVm(native, handle, options, probe.pageSize);
  }

  get pageSize(): number { return this.page; }
  /** Each slot's size in pages (a fresh array). */
  get slotPages(): number[] { return [...this.slotPageCounts]; }
  get vcpuCount(): number { return this.vcpus; }
  get mode(): 'ring' | 'bitmap' { return this.ring > 0 ? 'ring' : 'bitmap'; }
  /** Ring entries per vCPU; 0 in bitmap mode. */
  get ringEntries(): number { return this.ring; }

  start(): void { this.call(() => this.native.start(this.handle)); }
  /** Returns when every vCPU is outside KVM_RUN. */
  pause(): void { this.call(() => this.native.pause(this.handle)); }
  resume(): void { this.call(() => this.native.resume(this.handle)); }
  /**
   * See NativeBinding.bindDrain: writes from index `at`; a result below min(slots.length, offsets.length) - at
   * means all drained, and then, with `thenReset`, the rings were also reset.
   */
  drain(slots: Uint32Array, offsets: Uint32Array, at = 0, thenReset = false): number {
    // Inside the checkpoint pause: no closure per call (as this.call() makes); 0.9-2.7 us less at 100
    // pages in an A/B within one process. The arrays are bound once (NativeBinding.bindDrain) and again
    // only when the caller passes others or theirs changed length: a detached array reads length 0,
    // and the bound function must never write through a stale pointer.
    try {
      const b = this.bound;
      if (b === undefined || b.slots !== slots || b.offsets !== offsets || b.slotsLength !== slots.length || b.offsetsLength !== offsets.length) {
        return this.bindDrain(slots, offsets)(at, thenReset);
      }
      return b.drain(at, thenReset);
    } catch (err) {
      throw thrownByNative(err, this.devPath);
    }
  }

  private bindDrain(slots: Uint32Array, offsets: Uint32Array): (at: number, thenReset: boolean) => number {
    this.bound = undefined;
    const drain = this.native.bindDrain(this.handle, slots, offsets);
    this.bound = { slots, offsets, slotsLength: slots.length, offsetsLength: offsets.length, drain };
    return drain;
  }

  reset(): number { return this.call(() => this.native.reset(this.handle)); }
  readPages(slots: Uint32Array, offsets: Uint32Array, count: number, out: Uint8Array): void {
    this.call(() => this.native.readPages(this.handle, slots, offsets, count, out));
  }
  /** See NativeBinding.readRanges; `resident` only for pages the guest has written (harvested dirty). */
  readRanges(slots: Uint32Array, firsts: Uint32Array, counts: Uint32Array, n: number, out: Uint8Array, resident = false): number {
    return this.call(() => this.native.readRanges(this.handle, slots, firsts, counts, n, out, resident));
  }
  writeRange(slot: number, firstPage: number, src: Uint8Array): void {
    this.call(() => this.native.writeRange(this.handle, slot, firstPage, src));
  }
  getVcpuState(index: number, out: Uint8Array): number { return this.call(() => this.native.getVcpuState(this.handle, index, out)); }
  setVcpuState(index: number, src: Uint8Array): void { this.call(() => this.native.setVcpuState(this.handle, index, src)); }
  grantWrites(n: number): void { this.call(() => this.native.grantWrites(this.handle, n)); }
  /**
   * Benchmark reference, not a harvest path: runs `rounds` rounds of the plain C harvest loop on this
   * guest (grant `pages` writes to every vCPU, wait for them, pause, drain + reset timed in C, resume),
   * so bench:harvest can set the Node path against C on the same guest and threads. The guest must
   * have been created with a write allowance (maxWritesPerVcpu) and be started.
   */
  harvestRoundsInC(pages: number, rounds: number, slots: Uint32Array, offsets: Uint32Array): { us: Float64Array; seen: Float64Array } {
    const us = new Float64Array(rounds);
    const seen = new Float64Array(rounds);
    this.call(() => this.native.harvestRounds(this.handle, pages, rounds, slots, offsets, us, seen));
    return { us, seen };
  }
  /** Per vCPU [loops, pagesWritten] at out[2i], out[2i+1]; allocates `out` when omitted. */
  guestCounters(out: Float64Array = new Float64Array(2 * this.vcpus)): Float64Array {
    this.call(() => this.native.guestCounters(this.handle, out));
    return out;
  }
  lastError(): string | null { return this.call(() => this.native.lastError(this.handle)); }
  /** Idempotent. */
  destroy(): void {
    this.bound = undefined; // lets the arrays go
    this.call(() => this.native.destroy(this.handle));
  }

  stats(): KvmVmStats {
    const s = this.statsBuf;
    this.call(() => this.native.stats(this.handle, s));
    return {
      ringFullExits: s[NativeStat.RingFullExits]!,
      invalidEntries: s[NativeStat.InvalidEntries]!,
      entriesHarvested: s[NativeStat.EntriesHarvested]!,
      entriesMarkedReset: s[NativeStat.EntriesMarkedReset]!,
      resetReturnedTotal: s[NativeStat.ResetReturnedTotal]!,
      ioExits: s[NativeStat.IoExits]!,
      kicks: s[NativeStat.Kicks]!,
      vcpusStalledRingFull: s[NativeStat.VcpusStalledRingFull]!,
      runErrors: s[NativeStat.RunErrors]!,
      mode: s[NativeStat.Mode] === 1 ? 'ring' : 'bitmap',
      acqRel: s[NativeStat.AcqRel] === 1,
      ringEntries: s[NativeStat.RingEntries]!,
      bitmapPagesCleared: s[NativeStat.BitmapPagesCleared]!,
      ringEntriesLost: s[NativeStat.RingEntriesLost]!,
      ringProbes: s[NativeStat.RingProbes]!,
      ringProbeFailed: s[NativeStat.RingProbeFailed] === 1,
    };
  }

  private call<T>(fn: () => T): T {
    return call(fn, this.devPath);
  }
}
