import { SparseImage } from '@ckpt/common';
import type { DirtySource, SlotInfo, SourceStats } from '../dirty-source.ts';
import { GUEST_LAYOUT, GUEST_REACH_PAGES } from '../guest-layout.ts';
import { F_DIRTY, parseRing, type ParseResult } from '../ring-parse.ts';
import { SimRing } from './sim-ring.ts';
import { WorkloadCursor, writeStamp, type WorkloadName } from '@ckpt/common';

/** Page offsets within a slot are 32-bit (Uint32Array), as in KVM's dirty-ring entries' use here. */
const MAX_SLOT_PAGES = 2 ** 32 - 1;

export interface SimSourceOptions {
  slotBytes: readonly number[];
  vcpus: number;
  ringEntries: number;
  workload: WorkloadName;
  /** Page writes per second per vCPU; 0 = as fast as the model allows (SIM_MAX_RATE). */
  ratePagesPerSec: number;
  seed: number;
  hotPages: number;
  hotPercent: number;
  fillPages: boolean;
  /** Total writes each vCPU may do; 0 = unlimited. */
  maxWritesPerVcpu: number;
  tickUs: number;
  pageSize?: number;
  /** Monotonic milliseconds; tests pass a fake clock. */
  clock?: () => number;
  /**
   * The CPU time of the calling thread in milliseconds (kvm-native's threadCpuMs()). Given, the source
   * counts the CPU its simulated guest spends writing pages (guestCpuMs): on a real host that work is
   * the guest's, on its own vCPU threads, and a benchmark can take it out of the harvester's figure.
   */
  cpuClockMs?: () => number;
}

/** "As fast as possible" in the model: writes per second per vCPU. */
export const SIM_MAX_RATE = 200_000;
export const SIM_VCPU_STATE_BYTES = 64;
const SIM_STATE_MAGIC = 0x56534d49; // "IMSV"

export type HostileKind = 'slot' | 'as-id' | 'offset' | 'flags';

interface SimVcpu {
  cursor: WorkloadCursor;
  ring: SimRing;
  pagesWritten: number;
  loops: number;
  issued: number;
  allowance: number;
  stalled: boolean;
}

/**
 * A faithful model of a KVM guest running the test workload with dirty rings: the same ring layout
 * and rules (power-of-two size, soft limit, a full ring stalls the vCPU until reset, each page logged
 * once per arm), the same workloads and seeds as the real guest, and sparse memory so guests far
 * larger than this machine's RAM work. Time advances with the clock while the guest is running; every
 * call first plays the writes that fell due.
 */
export class SimSource implements DirtySource {
  readonly kind = 'sim' as const;
  readonly mode = 'ring' as const;
  readonly pageSize: number;
  readonly slots: readonly SlotInfo[];
  readonly vcpuCount: number;
  readonly vcpuStateBytes = SIM_VCPU_STATE_BYTES;
  readonly ringEntries: number;
  readonly memory: SparseImage;

  private readonly opts: SimSourceOptions;
  private readonly clock: () => number;
  private readonly vcpus: SimVcpu[];
  private readonly slotPages: number[];
  private readonly slotFirstPage: number[];
  private readonly regionFirstPage: number;
  private readonly unprotected = new Set<number>();
  private readonly rate: number;
  private readonly parse: ParseResult = { valid: 0, invalid: 0, nextFetch: 0 };
  private running = false;
  private started = false;
  private closed = false;
  private lastTick = 0;
  private runMs = 0;
  private guestCpu = 0;
  private readonly st: SourceStats = {
    ringFullExits: 0, invalidEntries: 0, entriesHarvested: 0, entriesMarkedReset: 0, resetReturnedTotal: 0, vcpusStalledRingFull: 0, ringEntriesLost: 0,
  };

  constructor(options: SimSourceOptions) {
    this.opts = { ...options };
    this.pageSize = options.pageSize ?? 4096;
    this.clock = options.clock ?? (() => performance.now());
    if (options.vcpus < 1 || options.vcpus > GUEST_LAYOUT.maxVcpus) throw new RangeError(`--vcpus (vcpus) must be 1..${GUEST_LAYOUT.maxVcpus}`);
    let firstPage = 0;
    this.slotPages = [];
    this.slotFirstPage = [];
    this.slots = options.slotBytes.map((bytes, id) => {
      const pages = Math.floor(bytes / this.pageSize);
      // Ring entries and harvested offsets are 32-bit page numbers within a slot, as KVM's are.
      if (pages > MAX_SLOT_PAGES) {
        throw new RangeError(`slot ${id} would hold ${pages} pages, more than the ${MAX_SLOT_PAGES} (2^32 - 1) whose numbers fit in a ring entry's 32-bit offset here (just under ${Math.round((2 ** 32 * this.pageSize) / 2 ** 40)} TiB of ${this.pageSize}-byte pages): split the guest with --slots`);
      }
      const s = { id, pages, gpa: firstPage * this.pageSize };
      this.slotPages.push(pages);
      this.slotFirstPage.push(firstPage);
      firstPage += pages;
      return s;
    });
    this.regionFirstPage = GUEST_LAYOUT.regionGpa / this.pageSize;
    // The workload region ends below x86's APIC window at 0xfec00000 (docs/guest-program.md).
    const regionPages = Math.min(firstPage, GUEST_REACH_PAGES) - this.regionFirstPage;
    if (regionPages <= 0) throw new RangeError('guest memory is smaller than the reserved area');
    if (options.workload === 'hotset' && (options.hotPages < 1 || options.hotPages > regionPages)) {
      throw new RangeError(`--hot-pages (hotPages) must be 1..${regionPages} for this guest size (the workload region)`);
    }
    this.memory = new SparseImage(this.pageSize, this.slotPages);
    this.vcpuCount = options.vcpus;
    this.ringEntries = options.ringEntries;
    this.rate = options.ratePagesPerSec > 0 ? options.ratePagesPerSec : SIM_MAX_RATE;
    const params = { workload: options.workload, regionPages, vcpus: options.vcpus, seed: options.seed, hotPages: options.hotPages, hotPercent: options.hotPercent };
    this.vcpus = Array.from({ length: options.vcpus }, (_, v) => ({
      cursor: new WorkloadCursor(params, v),
      ring: new SimRing(options.ringEntries),
      pagesWritten: 0, loops: 0, issued: 0,
      allowance: options.maxWritesPerVcpu > 0 ? options.maxWritesPerVcpu : Infinity,
      stalled: false,
    }));
  }

  start(): void {
    this.assertOpen();
    if (this.started) return;
    this.started = true;
    this.running = true;
    this.lastTick = this.clock();
  }

  pause(): void {
    this.advance();
    this.running = false;
  }

  resume(): void {
    this.assertOpen();
    if (!this.started || this.running) return;
    this.running = true;
    this.lastTick = this.clock();
  }

  /** Raises every vCPU's write allowance by n (like the native grantWrites). */
  grantWrites(n: number): void {
    this.advance();
    for (const v of this.vcpus) v.allowance += n;
  }

  drain(slots: Uint32Array, offsets: Uint32Array, at = 0, thenReset = false): number {
    this.advance();
    const len = Math.min(slots.length, offsets.length);
    if (!Number.isInteger(at) || at < 0 || at > len) throw new RangeError(`at (${at}) exceeds the arrays' length (${len})`);
    let n = at;
    for (const v of this.vcpus) {
      if (n >= len) break;
      parseRing(v.ring.words, v.ring.entries, v.ring.fetchIndex, this.slotPages, slots, offsets, n, this.parse);
      const consumed = this.parse.nextFetch - v.ring.fetchIndex;
      v.ring.fetchIndex = this.parse.nextFetch;
      n += this.parse.valid;
      this.st.entriesHarvested += this.parse.valid;
      this.st.invalidEntries += this.parse.invalid;
      this.st.entriesMarkedReset += consumed;
    }
    if (thenReset && n < len) this.reset();
    return n - at;
  }

  reset(): number {
    this.advance();
    let n = 0;
    const rearm = (slot: number, offset: number): void => {
      // The kernel ignores entries it cannot map to a memslot page.
      const id = slot & 0xffff;
      if (slot >>> 16 === 0 && id < this.slotPages.length && offset < this.slotPages[id]!) {
        this.unprotected.delete(id * 0x100000000 + offset);
      }
    };
    for (const v of this.vcpus) {
      n += v.ring.reset(rearm);
      if (v.stalled && !v.ring.softFull) v.stalled = false;
    }
    this.st.resetReturnedTotal += n;
    // Writes that were due while stalled play now.
    this.advance();
    return n;
  }

  readRanges(slots: Uint32Array, firsts: Uint32Array, counts: Uint32Array, n: number, out: Uint8Array): number {
    this.advance();
    let off = 0;
    for (let i = 0; i < n; i++) {
      const c = counts[i]!;
      if (off + c * this.pageSize > out.byteLength) throw new RangeError('readRanges: output buffer too small');
      this.memory.readRange(slots[i]!, firsts[i]!, c, out, off);
      off += c * this.pageSize;
    }
    return off;
  }

  /** Writes whole pages without logging them (restore). */
  writeRange(slot: number, firstPage: number, src: Uint8Array): void {
    this.memory.writePages(slot, firstPage, src.byteLength / this.pageSize, src, 0);
  }

  getVcpuState(index: number, out: Uint8Array): number {
    this.advance();
    const v = this.vcpu(index);
    const dv = new DataView(out.buffer, out.byteOffset, SIM_VCPU_STATE_BYTES);
    dv.setUint32(0, SIM_STATE_MAGIC, true);
    dv.setUint32(4, index, true);
    dv.setUint32(8, v.cursor.rng, true);
    dv.setUint32(12, v.cursor.cursor, true);
    dv.setFloat64(16, v.pagesWritten, true);
    dv.setFloat64(24, v.loops, true);
    return SIM_VCPU_STATE_BYTES;
  }

  setVcpuState(index: number, src: Uint8Array): void {
    const v = this.vcpu(index);
    const dv = new DataView(src.buffer, src.byteOffset, SIM_VCPU_STATE_BYTES);
    if (dv.getUint32(0, true) !== SIM_STATE_MAGIC || dv.getUint32(4, true) !== index) {
      throw new RangeError(`not a simulator vCPU ${index} state`);
    }
    v.cursor.rng = dv.getUint32(8, true);
    v.cursor.cursor = dv.getUint32(12, true);
    v.pagesWritten = dv.getFloat64(16, true);
    v.loops = dv.getFloat64(24, true);
  }

  guestCounters(out: Float64Array): void {
    this.advance();
    for (let v = 0; v < this.vcpuCount; v++) {
      const page = this.memory.page(0, GUEST_LAYOUT.statusGpa / this.pageSize + v);
      if (!page) {
        out[2 * v] = 0;
        out[2 * v + 1] = 0;
        continue;
      }
      const dv = new DataView(page.buffer, page.byteOffset, 16);
      out[2 * v] = dv.getUint32(0, true) + dv.getUint32(4, true) * 0x100000000;
      out[2 * v + 1] = dv.getUint32(8, true) + dv.getUint32(12, true) * 0x100000000;
    }
  }

  stats(): SourceStats {
    this.advance();
    this.st.vcpusStalledRingFull = this.vcpus.filter((v) => v.stalled).length;
    return { ...this.st };
  }

  lastError(): string | null {
    return null;
  }

  populatedPages(slot: number): Iterable<number> {
    this.advance();
    return this.memory.populated(slot);
  }

  close(): void {
    this.running = false;
    this.closed = true;
  }

  /** Test hook: makes the model report `n` ring entries lost, as an overrun kernel ring would. */
  simulateLostEntries(n: number): void {
    this.st.ringEntriesLost += n;
  }

  /**
   * Test hook: publishes `count` hostile entries into vCPU `vcpu`'s ring, as a buggy or malicious
   * producer might: slot beyond the memslots, a non-zero address space, an offset beyond the slot,
   * or flag bits KVM never sets.
   */
  injectHostile(vcpu: number, kind: HostileKind, count = 1): number {
    this.advance();
    const ring = this.vcpu(vcpu).ring;
    let pushed = 0;
    for (let i = 0; i < count; i++) {
      let ok: boolean;
      switch (kind) {
        case 'slot': ok = ring.push(this.slotPages.length + 3, 0); break;
        case 'as-id': ok = ring.push((1 << 16) | 0, 0); break;
        case 'offset': ok = ring.push(0, this.slotPages[0]! + 17 + i); break;
        case 'flags': ok = ring.push(0, this.regionFirstPage, F_DIRTY | 0x80); break;
      }
      if (!ok) break;
      pushed++;
    }
    return pushed;
  }

  /** CPU milliseconds the simulated guest has spent writing pages, or null without options.cpuClockMs. */
  get guestCpuMs(): number | null {
    return this.opts.cpuClockMs ? this.guestCpu : null;
  }

  private vcpu(index: number): SimVcpu {
    const v = this.vcpus[index];
    if (!v) throw new RangeError(`vCPU index ${index} out of range 0..${this.vcpuCount - 1}`);
    return v;
  }

  private assertOpen(): void {
    if (this.closed) throw new Error('simulated VM is closed');
  }

  /** Plays the writes that fell due since the last call. */
  private advance(): void {
    if (!this.running) return;
    const now = this.clock();
    const dt = now - this.lastTick;
    if (dt <= 0) return;
    this.lastTick = now;
    this.runMs += dt;
    const target = Math.floor((this.rate * this.runMs) / 1000);
    const burstCap = Math.max(1, Math.floor(this.rate / 100));
    const ticks = Math.max(1, Math.floor((dt * 1000) / Math.max(1, this.opts.tickUs)));
    // The guest's CPU clock is read only around calls that write pages (it is a system call).
    const cpuClock = this.opts.cpuClockMs;
    let cpu0 = -1;
    for (let i = 0; i < this.vcpus.length; i++) {
      const v = this.vcpus[i]!;
      if (v.stalled) continue;
      if (this.opts.workload === 'idle') {
        v.loops += ticks;
        this.writeStatus(i, v);
        continue;
      }
      // A backlog beyond one burst cap is dropped, as the real host's pacing does after a stall.
      if (target - v.issued > burstCap * ticks) v.issued = target - burstCap * ticks;
      const budget = Math.min(target - v.issued, v.allowance);
      if (cpuClock && cpu0 < 0 && budget > 0 && !v.stalled) cpu0 = cpuClock();
      let done = 0;
      while (done < budget && !v.stalled) {
        this.writePage(i, v);
        done++;
      }
      v.issued += done;
      v.allowance -= done;
      if (v.stalled) continue; // the guest is stuck in the exit mid-burst; its counters wait
      // As in the guest: the counters are published once per burst, after its stamps.
      v.loops += 1;
      this.writeStatus(i, v);
    }
    if (cpuClock && cpu0 >= 0) this.guestCpu += cpuClock() - cpu0;
  }

  private writePage(index: number, v: SimVcpu): void {
    const regionIndex = v.cursor.nextPage();
    let page = this.regionFirstPage + regionIndex;
    let slot = 0;
    while (slot + 1 < this.slotFirstPage.length && page >= this.slotFirstPage[slot + 1]!) slot++;
    page -= this.slotFirstPage[slot]!;
    // As in the guest: the stamp is one store carrying the next sequence number.
    v.pagesWritten++;
    const p = this.memory.pageForWrite(slot, page);
    writeStamp(new Uint32Array(p.buffer, p.byteOffset, this.pageSize >>> 2), 0, this.pageSize >>> 2, index, v.pagesWritten, this.opts.fillPages);
    this.logWrite(index, v, slot, page);
  }

  private writeStatus(index: number, v: SimVcpu): void {
    const gfn = GUEST_LAYOUT.statusGpa / this.pageSize + index;
    const p = this.memory.pageForWrite(0, gfn);
    const dv = new DataView(p.buffer, p.byteOffset, 16);
    dv.setUint32(0, v.loops >>> 0, true);
    dv.setUint32(4, Math.floor(v.loops / 0x100000000), true);
    dv.setUint32(8, v.pagesWritten >>> 0, true);
    dv.setUint32(12, Math.floor(v.pagesWritten / 0x100000000), true);
    this.logWrite(index, v, 0, gfn);
  }

  /** KVM's rule: the first write to a protected page logs it once and unprotects it. */
  private logWrite(_index: number, v: SimVcpu, slot: number, gfn: number): void {
    const key = slot * 0x100000000 + gfn;
    if (this.unprotected.has(key)) return;
    this.unprotected.add(key);
    v.ring.push(slot, gfn);
    if (v.ring.softFull && !v.stalled) {
      v.stalled = true;
      this.st.ringFullExits++;
    }
  }
}
