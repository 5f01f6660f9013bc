/**
 * Probing the host, validating options, and the typed errors of the TS wrapper, against real KVM.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { KvmError } from '@ckpt/common';
import { KVM_ERROR_CODES, KvmVm, kvmAvailability, loadNative, probeKvm, toKvmError, type KvmVmOptions } from '../ts/index.ts';
import { KVM_CAP, MiB, needKvm, nodeWithoutKvmCaps, withVm } from './kvm-test-support.ts';

const small: KvmVmOptions = { slotBytes: [64 * MiB], ratePagesPerSec: 100 };

function assertKvmError(fn: () => unknown, code: string, pattern?: RegExp): KvmError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof KvmError, `expected a KvmError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (pattern) assert.match(err.message, pattern);
    return err;
  }
  assert.fail(`expected ${code}`);
}

test('probe reports this host\'s KVM capabilities', (t) => {
  if (!needKvm(t)) return;
  const p = probeKvm();
  assert.equal(p.apiVersion, 12);
  assert.equal(p.pageSize, 4096);
  assert.ok(p.dirtyRingMaxBytes >= 65536 * 16 || p.dirtyRingAcqRelMaxBytes >= 65536 * 16, JSON.stringify(p));
  assert.equal(p.dirtyRingAcqRelMaxBytes & (p.dirtyRingAcqRelMaxBytes - 1), 0, 'ring max is a power of two');
  assert.equal(p.manualProtect & 1, 1, 'manual protect is supported');
  assert.ok(p.recommendedVcpus >= 1 && p.maxVcpus >= p.recommendedVcpus, JSON.stringify(p));
  assert.deepEqual(kvmAvailability(), { usable: true });
});

test('the exported layout and state size match docs/guest-program.md', () => {
  const n = loadNative();
  assert.deepEqual({ ...n.guestLayout }, {
    pageTablesGpa: 0x1000, controlGpa: 0x80000, statusGpa: 0x81000, statusStride: 0x1000, codeGpa: 0x100000,
    stacksGpa: 0x110000, stackBytes: 0x4000, regionGpa: 0x400000, regionEndGpa: 0xfec00000, probeGpa: 0xff000, maxVcpus: 64, maxGib: 125, stampMagic: 0x4b43,
  });
  assert.ok(Object.isFrozen(n.guestLayout));
  // struct kvm_regs (144 bytes) + struct kvm_sregs (312 bytes) on x86-64.
  assert.equal(n.vcpuStateBytes, 144 + 312);
});

test('a missing device is CKPT_ERR_KVM_NO_DEVICE, never a crash', () => {
  const dev = '/dev/no-such-kvm-device';
  const e = assertKvmError(() => probeKvm(dev), KVM_ERROR_CODES.NO_DEVICE, /^cannot open \/dev\/no-such-kvm-device: no such device; this host needs KVM/);
  assert.equal(e.context.syscall, 'open');
  assert.equal(e.context.errno, 2);
  assertKvmError(() => KvmVm.create({ ...small, devPath: dev }), KVM_ERROR_CODES.NO_DEVICE);
  const a = kvmAvailability(dev);
  assert.equal(a.usable, false);
  if (!a.usable) {
    assert.equal(a.code, KVM_ERROR_CODES.NO_DEVICE);
    assert.match(a.reason, /use --source sim/);
  }
});

test('a user who may not open the KVM device gets CKPT_ERR_KVM_PERMISSION from every entry point, never a crash', (t) => {
  if (!needKvm(t)) return;
  if (process.getuid?.() !== 0) {
    t.skip('needs root, to start a child that drops to user nobody');
    process.stderr.write(`skip: ${t.name}: not root\n`);
    return;
  }
  // A private node of the same device, mode 0600 and owned by root, so the test does not depend on
  // /dev/kvm's own mode (0666 on some hosts). Where mknod is not allowed, /dev/kvm if others may not open it.
  const dir = mkdtempSync(join(tmpdir(), 'ckpt-kvm-perm-'));
  try {
    chmodSync(dir, 0o755);
    let dev = join(dir, 'kvm');
    const rdev = statSync('/dev/kvm').rdev;
    const made = spawnSync('mknod', ['-m', '600', dev, 'c', String((rdev >> 8) & 0xfff), String((rdev & 0xff) | ((rdev >> 12) & 0xfff00))]);
    // On a file system mounted nodev the node exists but opens for nobody, root included.
    if (made.status !== 0 || !kvmAvailability(dev).usable) {
      if ((statSync('/dev/kvm').mode & 0o006) !== 0) {
        t.skip('no private device node here (mknod refused, or the temp dir is nodev) and /dev/kvm is open to everyone: no device to deny');
        process.stderr.write(`skip: ${t.name}: no device to deny\n`);
        return;
      }
      dev = '/dev/kvm';
    }
    const child = fileURLToPath(new URL('./as-other-user.ts', import.meta.url));
    const r = spawnSync(process.execPath, ['--import', 'tsx', child, dev, '65534', '65534'], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { uid: number; probe: { code: string; message: string }; create: { code: string; message: string }; availability: { usable: boolean; code?: string; reason?: string } };
    assert.equal(out.uid, 65534);
    assert.equal(out.probe.code, KVM_ERROR_CODES.PERMISSION, out.probe.message);
    assert.match(out.probe.message, new RegExp(`^cannot open ${dev}: permission denied; make sure the user can open /dev/kvm`));
    assert.equal(out.create.code, KVM_ERROR_CODES.PERMISSION, out.create.message);
    assert.deepEqual([out.availability.usable, out.availability.code], [false, KVM_ERROR_CODES.PERMISSION]);
    // The same device is fine for root: it is the permission, not the node.
    assert.equal(probeKvm(dev).apiVersion, 12);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

const ON_OLDER_KERNEL = fileURLToPath(new URL('./on-older-kernel.ts', import.meta.url));
type OlderKernel = {
  probe: { dirtyRingMaxBytes: number; dirtyRingAcqRelMaxBytes: number };
  availability: { usable: boolean };
  ring: { code: string; message?: string; acqRel?: boolean; pagesWritten?: number; entries?: number };
  bitmap: { code: string; message?: string; entries?: number };
};

function onOlderKernel(caps: number[]): OlderKernel {
  const r = nodeWithoutKvmCaps(caps, [ON_OLDER_KERNEL]);
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as OlderKernel;
}

test('a kernel without the dirty ring (real /dev/kvm, the capability hidden by seccomp): a ring is refused with a clear error, bitmap mode works', (t) => {
  if (!needKvm(t)) return;
  const out = onOlderKernel([KVM_CAP.DIRTY_LOG_RING, KVM_CAP.DIRTY_LOG_RING_ACQ_REL]);
  assert.deepEqual([out.probe.dirtyRingMaxBytes, out.probe.dirtyRingAcqRelMaxBytes], [0, 0]);
  assert.equal(out.availability.usable, true, 'KVM itself is usable');
  assert.equal(out.ring.code, KVM_ERROR_CODES.NO_DIRTY_RING, out.ring.message);
  assert.match(String(out.ring.message), /^cannot use a dirty ring on \/dev\/kvm: KVM_CAP_DIRTY_LOG_RING is absent; use ringEntries 0 \(bitmap mode\)$/);
  assert.equal(out.bitmap.code, 'none', out.bitmap.message);
  assert.ok(out.bitmap.entries! >= 200, JSON.stringify(out.bitmap));
  // Without the filter the same host has the ring: the denial, not the host, made the difference.
  assert.ok(probeKvm().dirtyRingMaxBytes > 0);
});

test('a kernel with the dirty ring but without its ACQ_REL variant: the helper falls back to KVM_CAP_DIRTY_LOG_RING and harvests', async (t) => {
  if (!needKvm(t)) return;
  const out = onOlderKernel([KVM_CAP.DIRTY_LOG_RING_ACQ_REL]);
  assert.equal(out.probe.dirtyRingAcqRelMaxBytes, 0);
  assert.ok(out.probe.dirtyRingMaxBytes > 0);
  assert.equal(out.ring.code, 'none', out.ring.message);
  assert.equal(out.ring.acqRel, false);
  assert.ok(out.ring.entries! >= 200, JSON.stringify(out.ring));
  // And where ACQ_REL is there, it is the one enabled.
  await withVm({ ...small, ringEntries: 4096 }, (vm) => assert.equal(vm.stats().acqRel, probeKvm().dirtyRingAcqRelMaxBytes > 0));
});

test('a device that is not KVM is a typed syscall error', () => {
  // /dev/null opens, but KVM_GET_API_VERSION fails with ENOTTY.
  const e = assertKvmError(() => probeKvm('/dev/null'), KVM_ERROR_CODES.SYSCALL, /^cannot use \/dev\/null/);
  assert.equal(e.context.syscall, 'ioctl(KVM_GET_API_VERSION)');
  assert.equal(e.context.errnoName, 'ENOTTY');
});

test('bad ring sizes are rejected before the kernel sees them, with what is allowed', (t) => {
  if (!needKvm(t)) return;
  const max = Math.max(probeKvm().dirtyRingAcqRelMaxBytes, probeKvm().dirtyRingMaxBytes) / 16;
  for (const ringEntries of [3000, 512, 1000, max * 2, -4, 1.5]) {
    const e = assertKvmError(() => KvmVm.create({ ...small, ringEntries }), KVM_ERROR_CODES.RING_SIZE);
    assert.match(e.message, /^cannot use a dirty ring of/);
    if (ringEntries > 0 && Number.isInteger(ringEntries)) assert.match(e.message, new RegExp(`from 1024 to ${max}, or 0 for bitmap mode`));
  }
});

test('the kernel refusing a ring size maps to CKPT_ERR_KVM_RING_SIZE', (t) => {
  if (!needKvm(t)) return;
  const n = loadNative();
  const max = probeKvm().dirtyRingAcqRelMaxBytes;
  // Past the wrapper's checks, straight to KVM_ENABLE_CAP: above the maximum.
  let raw: unknown;
  try {
    n.createVm({
      devPath: '/dev/kvm', slotBytes: [64 * MiB], vcpus: 1, ringBytes: max * 2, loadGuest: true, workload: 0,
      ratePagesPerSec: 0, seed: 1, hotPages: 1, hotPercent: 0, fillPages: false, maxWritesPerVcpu: 0, tickUs: 1000, probeFullRings: true,
    });
  } catch (err) {
    raw = err;
  }
  assert.ok(raw instanceof Error);
  const r = raw as Error & { op: string; syscall: string; errno: number };
  assert.equal(r.op, 'enable-dirty-ring');
  assert.equal(r.syscall, 'ioctl(KVM_ENABLE_CAP)');
  const k = toKvmError(raw);
  assert.equal(k.code, KVM_ERROR_CODES.RING_SIZE);
  assert.match(k.message, /^cannot enable a dirty ring of \d+ bytes per vCPU: /);
  assert.equal(k.context.syscall, 'ioctl(KVM_ENABLE_CAP)');
});

test('toKvmError maps native failures to stable codes with the syscall in context', () => {
  const native = (message: string, op: string, syscall: string, errno: number): Error =>
    Object.assign(new Error(message), { op, syscall, errno });
  const perm = toKvmError(native('cannot open /dev/kvm: Permission denied (open)', 'open-dev', 'open', 13), '/dev/kvm');
  assert.equal(perm.code, KVM_ERROR_CODES.PERMISSION);
  assert.equal(perm.message, 'cannot open /dev/kvm: permission denied; make sure the user can open /dev/kvm (root or the kvm group)');
  assert.deepEqual([perm.context.syscall, perm.context.errno, perm.context.errnoName], ['open', 13, 'EACCES']);
  assert.equal(toKvmError(native('cannot create a VM on /dev/kvm: Operation not permitted', 'create-vm', 'ioctl(KVM_CREATE_VM)', 1)).code, KVM_ERROR_CODES.PERMISSION);
  assert.equal(toKvmError(native('x', 'open-dev', 'open', 19)).code, KVM_ERROR_CODES.NO_DEVICE);
  assert.equal(toKvmError(native('cannot enable the dirty ring: KVM_CAP_DIRTY_LOG_RING is absent', 'enable-dirty-ring', 'ioctl(KVM_CHECK_EXTENSION)', 95)).code, KVM_ERROR_CODES.NO_DIRTY_RING);
  assert.equal(toKvmError(native('x', 'enable-manual-protect', 'ioctl(KVM_CHECK_EXTENSION)', 95)).code, KVM_ERROR_CODES.NO_MANUAL_PROTECT);
  assert.equal(toKvmError(native('cannot use the VM: it was destroyed', 'use-vm', '', 0)).code, KVM_ERROR_CODES.STATE);
  const sys = toKvmError(native('cannot create vCPU 0: Cannot allocate memory (ioctl(KVM_CREATE_VCPU))', 'create-vcpu', 'ioctl(KVM_CREATE_VCPU)', 12));
  assert.equal(sys.code, KVM_ERROR_CODES.SYSCALL);
  assert.equal(sys.retriable, true);
  assert.equal(sys.context.syscall, 'ioctl(KVM_CREATE_VCPU)');
  assert.ok(sys.cause instanceof Error);
  const other = toKvmError(new Error('boom'));
  assert.equal(other.code, KVM_ERROR_CODES.SYSCALL);
  assert.equal(other.retriable, false);
  const k = new KvmError('CKPT_ERR_KVM_STATE', 'already typed');
  assert.equal(toKvmError(k), k);
});

test('argument mistakes are TypeError/RangeError naming the argument', async (t) => {
  if (!needKvm(t)) return;
  assert.throws(() => KvmVm.create({ slotBytes: [3 * MiB] }), { name: 'RangeError', message: /options\.slotBytes\[0\] must be a positive multiple of 2 MiB/ });
  assert.throws(() => KvmVm.create({ slotBytes: [4 * MiB] }), { name: 'RangeError', message: /options\.slotBytes\[0\] must be at least 8 MiB/ });
  assert.throws(() => KvmVm.create({ slotBytes: [64 * MiB, 0] }), { name: 'RangeError', message: /options\.slotBytes\[1\]/ });
  assert.throws(() => KvmVm.create({ slotBytes: [64 * MiB], vcpus: 0 }), { name: 'RangeError', message: /options\.vcpus must be 1\.\.64/ });
  assert.throws(() => KvmVm.create({ slotBytes: [64 * MiB], vcpus: 65 }), { name: 'RangeError', message: /options\.vcpus/ });
  assert.throws(() => KvmVm.create({ slotBytes: [64 * MiB], tickUs: 0 }), { name: 'RangeError', message: /options\.tickUs/ });
  assert.throws(() => KvmVm.create({ slotBytes: [64 * MiB], workload: 'hotset', hotPages: 1e9 }), { name: 'RangeError', message: /options\.hotPages/ });
  assert.throws(() => KvmVm.create({ slotBytes: [64 * MiB], workload: 7 }), { name: 'RangeError', message: /workload/ });
  assert.throws(() => KvmVm.create({ slotBytes: [200 * 1024 * MiB] }), { name: 'RangeError', message: /at most 125 GiB|125 GiB limit/ });
  const n = loadNative();
  assert.throws(() => n.createVm({ devPath: 7 } as never), { name: 'TypeError', message: /options\.devPath must be a string/ });
  assert.throws(() => n.bindDrain({} as never, new Uint32Array(1), new Uint32Array(1)), { name: 'TypeError', message: /vm must be a VM returned by createVm/ });

  await withVm(small, (vm) => {
    assert.throws(() => vm.drain(new Int32Array(4) as never, new Uint32Array(4)), { name: 'TypeError', message: /^slots must be a Uint32Array/ });
    assert.throws(() => vm.drain(new Uint32Array(4), new Uint32Array(8), 5), { name: 'RangeError', message: /^at \(5\) exceeds the arrays' length \(4\)/ });
    assert.throws(() => vm.drain(new Uint32Array(4), new Uint32Array(4), 0, 1 as never), { name: 'TypeError', message: /^thenReset must be a boolean/ });
    assert.throws(() => vm.drain(new Uint32Array(4), [0, 0] as never), { name: 'TypeError', message: /^offsets must be a Uint32Array/ });
    assert.throws(() => vm.drain(new Uint32Array(4), new Uint32Array(4), '1' as never), { name: 'TypeError', message: /^at must be a number/ });
    assert.throws(() => vm.drain(new Uint32Array(4), new Uint32Array(4), 1.5), { name: 'RangeError', message: /^at must be an integer/ });
    assert.throws(() => vm.drain(new Uint32Array(4), new Uint32Array(4), Number.NaN), { name: 'RangeError', message: /^at must be an integer/ });
    assert.throws(() => vm.drain(new Uint32Array(4), new Uint32Array(4), 0, null as never), { name: 'TypeError', message: /^thenReset must be a boolean/ });
    assert.throws(() => vm.readPages(Uint32Array.of(5), Uint32Array.of(0), 1, new Uint8Array(4096)), { name: 'RangeError', message: /slot 5 out of range/ });
    assert.throws(() => vm.readPages(Uint32Array.of(0), Uint32Array.of(1 << 20), 1, new Uint8Array(4096)), { name: 'RangeError', message: /outside slot 0/ });
    assert.throws(() => vm.readPages(Uint32Array.of(0), Uint32Array.of(0), 1, new Uint8Array(100)), { name: 'RangeError', message: /out holds 100 bytes/ });
    assert.throws(() => vm.readPages(Uint32Array.of(0), Uint32Array.of(0), 2, new Uint8Array(8192)), { name: 'RangeError', message: /count \(2\) exceeds/ });
    assert.throws(() => vm.readRanges(Uint32Array.of(0), Uint32Array.of(16383), Uint32Array.of(2), 1, new Uint8Array(8192)), { name: 'RangeError', message: /outside slot 0/ });
    assert.throws(() => vm.writeRange(0, 0, new Uint8Array(100)), { name: 'RangeError', message: /whole pages/ });
    assert.throws(() => vm.grantWrites(-1), { name: 'RangeError', message: /^n must be an integer/ });
    assert.throws(() => vm.getVcpuState(1, new Uint8Array(vm.vcpuStateBytes)), { name: 'RangeError', message: /index 1 out of range/ });
    assert.throws(() => vm.getVcpuState(0, new Uint8Array(10)), { name: 'RangeError', message: /vcpuStateBytes/ });
    assert.throws(() => vm.setVcpuState(0, new Uint8Array(10)), { name: 'RangeError', message: /vcpuStateBytes/ });
    assert.throws(() => vm.guestCounters(new Float64Array(1)), { name: 'RangeError', message: /2 \* vcpus/ });
  });
});

test('destroy is idempotent and a destroyed VM fails with CKPT_ERR_KVM_STATE', (t) => {
  if (!needKvm(t)) return;
  const vm = KvmVm.create(small);
  vm.start();
  vm.pause();
  const s = new Uint32Array(4096);
  const o = new Uint32Array(4096);
  vm.drain(s, o, 0, true); // binds these arrays to the VM (KvmVm.drain)
  vm.destroy();
  vm.destroy();
  assert.equal(vm.lastError(), null);
  assertKvmError(() => vm.drain(new Uint32Array(4), new Uint32Array(4)), KVM_ERROR_CODES.STATE, /^cannot use the VM: it was destroyed/);
  assertKvmError(() => vm.drain(s, o, 0, true), KVM_ERROR_CODES.STATE, /^cannot use the VM: it was destroyed/); // arrays bound before the destroy
  assertKvmError(() => vm.start(), KVM_ERROR_CODES.STATE);
  // Many VMs created and destroyed: no fd or thread leak makes this fail.
  for (let i = 0; i < 20; i++) {
    const v = KvmVm.create({ ...small, vcpus: 2 });
    v.start();
    v.destroy();
  }
});

test('a VM created for restore (loadGuest=false) refuses to start without vCPU state', (t) => {
  if (!needKvm(t)) return;
  const vm = KvmVm.create({ ...small, loadGuest: false });
  try {
    assertKvmError(() => vm.start(), KVM_ERROR_CODES.STATE, /has no state; .*setVcpuState\(\)/);
  } finally {
    vm.destroy();
  }
});

test('bitmap mode and the ring report their mode and stats', (t) => {
  if (!needKvm(t)) return;
  for (const ringEntries of [0, 2048]) {
    const vm = KvmVm.create({ ...small, ringEntries });
    try {
      const s = vm.stats();
      assert.equal(vm.mode, ringEntries ? 'ring' : 'bitmap');
      assert.equal(s.mode, vm.mode);
      assert.equal(vm.ringEntries, ringEntries);
      assert.equal(s.ringEntries, ringEntries);
      assert.equal(s.acqRel, ringEntries > 0);
      assert.deepEqual(vm.slotPages, [16384]);
      assert.equal(vm.pageSize, 4096);
      assert.equal(vm.vcpuCount, 1);
    } finally {
      vm.destroy();
    }
  }
});
