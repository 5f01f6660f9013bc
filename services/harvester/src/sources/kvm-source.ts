import { KvmVm, type KvmVmOptions } from '@ckpt/kvm-native';
import type { DirtySource, SlotInfo, SourceStats } from './dirty-source.ts';

/** Real KVM through the native helper: the guest runs on vCPU threads, rings are the kernel's. */
export class KvmSource implements DirtySource {
  readonly kind = 'kvm' as const;
  readonly mode: 'ring' | 'bitmap';
  readonly pageSize: number;
  readonly slots: readonly SlotInfo[];
  readonly vcpuCount: number;
  readonly vcpuStateBytes: number;
  readonly ringEntries: number;
  readonly vm: KvmVm;

  constructor(options: KvmVmOptions) {
    this.vm = KvmVm.create(options);
    this.mode = this.vm.mode;
    this.pageSize = this.vm.pageSize;
    this.vcpuCount = this.vm.vcpuCount;
    this.vcpuStateBytes = this.vm.vcpuStateBytes;
    this.ringEntries = this.vm.ringEntries;
    let gpa = 0;
    this.slots = this.vm.slotPages.map((pages, id) => {
      const s = { id, pages, gpa };
      gpa += pages * this.pageSize;
      return s;
    });
  }

  start(): void { this.vm.start(); }
  pause(): void { this.vm.pause(); }
  resume(): void { this.vm.resume(); }
  drain(slots: Uint32Array, offsets: Uint32Array, at = 0, thenReset = false): number { return this.vm.drain(slots, offsets, at, thenReset); }
  reset(): number { return this.vm.reset(); }
  readRanges(slots: Uint32Array, firsts: Uint32Array, counts: Uint32Array, n: number, out: Uint8Array, resident = false): number {
    return this.vm.readRanges(slots, firsts, counts, n, out, resident);
  }
  getVcpuState(index: number, out: Uint8Array): number { return this.vm.getVcpuState(index, out); }
  guestCounters(out: Float64Array): void { this.vm.guestCounters(out); }
  grantWrites(n: number): void { this.vm.grantWrites(n); }
  lastError(): string | null { return this.vm.lastError(); }
  close(): void { this.vm.destroy(); }

  stats(): SourceStats {
    const s = this.vm.stats();
    return {
      ringFullExits: s.ringFullExits,
      invalidEntries: s.invalidEntries,
      entriesHarvested: s.entriesHarvested,
      entriesMarkedReset: s.entriesMarkedReset,
      resetReturnedTotal: s.resetReturnedTotal,
      vcpusStalledRingFull: s.vcpusStalledRingFull,
      ringEntriesLost: s.ringEntriesLost,
      ringProbeFailed: s.ringProbeFailed,
    };
  }
}
