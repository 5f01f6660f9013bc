/**
 * vCPU state and restore against real KVM: a paused guest's memory and registers copied into a
 * fresh VM (loadGuest=false) continue exactly where the original stopped.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KvmError, stampSeq, stampVcpu } from '@ckpt/common';
import { KVM_ERROR_CODES, KvmVm } from '../ts/index.ts';
import {
  MiB, PAGE, REGION_FIRST_PAGE, STAMP_MAGIC, drainAll, expectedPages, needKvm, sortedEqual, splitRegion, waitFor, waitWritten, withVm,
} from './kvm-test-support.ts';

const MEM = 64 * MiB;
const REGION_PAGES = MEM / PAGE - REGION_FIRST_PAGE;

test('getVcpuState/setVcpuState round-trip, and refuse a running vCPU', async (t) => {
  if (!needKvm(t)) return;
  await withVm({ slotBytes: [MEM], workload: 'sequential', ratePagesPerSec: 5000, ringEntries: 65536 }, async (vm) => {
    const a = new Uint8Array(vm.vcpuStateBytes);
    // Before start: the long-mode state the helper set up.
    assert.equal(vm.getVcpuState(0, a), vm.vcpuStateBytes);
    const regs = new DataView(a.buffer);
    // struct kvm_regs: rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags (u64 each).
    assert.equal(regs.getBigUint64(16 * 8, true), 0x100000n, 'RIP at the entry point');
    assert.equal(regs.getBigUint64(6 * 8, true), 0x114000n, 'RSP at the top of stack 0');
    assert.equal(regs.getBigUint64(17 * 8, true), 2n, 'RFLAGS');

    vm.start();
    await waitWritten(vm, 50);
    assert.throws(() => vm.getVcpuState(0, a), (e: unknown) => e instanceof KvmError && e.code === KVM_ERROR_CODES.STATE && /pause\(\) the VM first/.test(e.message));
    vm.pause();
    const before = vm.guestCounters().slice();
    vm.getVcpuState(0, a);
    vm.setVcpuState(0, a);
    const b = new Uint8Array(vm.vcpuStateBytes);
    vm.getVcpuState(0, b);
    assert.deepEqual(b, a);
    // Setting the state of a vCPU paused on its budget IN, then resuming, keeps it running correctly.
    vm.resume();
    await waitWritten(vm, before[1]! + 50);
    assert.equal(vm.lastError(), null);
  });
});

test('restore: memory and vCPU state copied into a fresh VM continue where the original stopped', async (t) => {
  if (!needKvm(t)) return;
  const K = 500;
  const M = 120;
  const vcpus = 2;
  const slotBytes = [48 * MiB, 16 * MiB];
  const source = KvmVm.create({ slotBytes, vcpus, ringEntries: 16384, workload: 'sequential', ratePagesPerSec: 0, maxWritesPerVcpu: K, tickUs: 2000 });
  let target: KvmVm | undefined;
  try {
    source.start();
    const atPause = await waitWritten(source, K);
    source.pause();
    const counters = source.guestCounters().slice();
    assert.ok(counters[1]! >= K && counters[3]! >= K);

    // The whole of both slots, and every vCPU's registers.
    const images = source.slotPages.map((pages, slot) => {
      const buf = new Uint8Array(pages * PAGE);
      assert.equal(source.readRanges(Uint32Array.of(slot), Uint32Array.of(0), Uint32Array.of(pages), 1, buf), buf.byteLength);
      return buf;
    });
    const states = Array.from({ length: vcpus }, (_, v) => {
      const s = new Uint8Array(source.vcpuStateBytes);
      source.getVcpuState(v, s);
      return s;
    });

    target = KvmVm.create({ slotBytes, vcpus, ringEntries: 16384, loadGuest: false, ratePagesPerSec: 0, maxWritesPerVcpu: M, tickUs: 2000 });
    images.forEach((img, slot) => target!.writeRange(slot, 0, img));
    states.forEach((s, v) => target!.setVcpuState(v, s));
    assert.deepEqual(target.guestCounters(), counters, 'the status pages came along');
    // Nothing the restore wrote is reported dirty: writeRange is not logged.
    assert.equal(target.drain(new Uint32Array(16), new Uint32Array(16)), 0);

    target.start();
    const after = await waitWritten(target, K + M);
    // The guest publishes pagesWritten, then loops (docs/guest-program.md): the second store may land
    // just after the snapshot that saw the first, so wait for it rather than read one snapshot.
    await waitFor('every vCPU to publish the loop after its burst', () => {
      target!.guestCounters(after);
      return Array.from({ length: vcpus }, (_, v) => after[2 * v]! > atPause[2 * v]!).every(Boolean);
    }, 10_000, target).catch(() => undefined);
    for (let v = 0; v < vcpus; v++) {
      assert.ok(after[2 * v]! > atPause[2 * v]!, `vCPU ${v}: loops continue past the copied value`);
      assert.equal(after[2 * v + 1], K + M, `vCPU ${v}: pagesWritten continues from the copied value`);
    }
    target.pause();
    // The restored guest writes the next pages of its sequence, stamped with the next sequence numbers.
    const { region } = splitRegion(drainAll(target));
    const expected: { vcpu: number; seq: number; index: number }[] = [];
    for (let v = 0; v < vcpus; v++) {
      expectedPages('sequential', REGION_PAGES, vcpus, v, 1, M, K).forEach((index, i) => expected.push({ vcpu: v, seq: K + i + 1, index }));
    }
    assert.ok(sortedEqual(region, expected.map((e) => e.index)), 'the continuation of the sequence');
    const out = new Uint8Array(expected.length * PAGE);
    const slotsOf = Uint32Array.from(expected, (e) => (REGION_FIRST_PAGE + e.index < source.slotPages[0]! ? 0 : 1));
    const offsetsOf = Uint32Array.from(expected, (e) => {
      const page = REGION_FIRST_PAGE + e.index;
      return page < source.slotPages[0]! ? page : page - source.slotPages[0]!;
    });
    target.readPages(slotsOf, offsetsOf, expected.length, out);
    expected.forEach((e, i) => {
      const w = new Uint32Array(out.buffer, i * PAGE, 4);
      assert.deepEqual([w[0]! & 0xffff, stampVcpu(w, 0), stampSeq(w, 0)], [STAMP_MAGIC, e.vcpu, e.seq], `region page ${e.index}`);
    });
    assert.equal(target.lastError(), null);
  } finally {
    source.destroy();
    target?.destroy();
  }
});

test('writeRange of zero pages reads back as zeros (holes), non-zero pages as written', async (t) => {
  if (!needKvm(t)) return;
  await withVm({ slotBytes: [MEM], loadGuest: false }, (vm) => {
    const src = new Uint8Array(6 * PAGE);
    src.fill(0xab, PAGE, 2 * PAGE);
    src.fill(0xcd, 4 * PAGE, 5 * PAGE);
    const first = REGION_FIRST_PAGE;
    // Pages that held data before must become zero again.
    vm.writeRange(0, first, new Uint8Array(6 * PAGE).fill(0x11));
    vm.writeRange(0, first, src);
    const back = new Uint8Array(6 * PAGE);
    vm.readRanges(Uint32Array.of(0), Uint32Array.of(first), Uint32Array.of(6), 1, back);
    assert.deepEqual(back, src);
    const viaPages = new Uint8Array(6 * PAGE);
    vm.readPages(new Uint32Array(6), Uint32Array.from({ length: 6 }, (_, i) => first + i), 6, viaPages);
    assert.deepEqual(viaPages, src);
  });
});
