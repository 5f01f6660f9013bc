/**
 * Shared by this package's tests: KVM availability (skip with a reason where /dev/kvm is unusable,
 * fail loudly where the addon was not built), VM cleanup, polling, and an independent model of
 * the guest's page sequence (docs/guest-program.md) to predict what the real guest writes.
 */
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { KVM_ERROR_CODES, KvmVm, kvmAvailability, type KvmVmOptions } from '../ts/index.ts';
import { WorkloadCursor, writeStamp } from '@ckpt/common';

export const MiB = 1024 * 1024;
export const PAGE = 4096;
export const REGION_FIRST_PAGE = 0x400000 / PAGE;
export { STAMP_MAGIC } from '@ckpt/common';

const availability = kvmAvailability();
if (!availability.usable && (availability.code === KVM_ERROR_CODES.NATIVE_MISSING || availability.code === KVM_ERROR_CODES.NATIVE_LOAD)) {
  // Not a host limitation: the package is broken or unbuilt, so fail instead of skipping.
  throw new Error(`${availability.reason}`);
}

/**
 * False (and the test skipped with the reason printed) when real KVM cannot be used here. With
 * CKPT_REQUIRE_KVM=1 (`npm test` sets it where /dev/kvm exists) an unusable KVM fails the test
 * instead, so the real-KVM tests cannot silently stop running where they are expected to.
 */
export function needKvm(t: TestContext): boolean {
  if (availability.usable) return true;
  const reason = `real KVM is not usable here: ${availability.reason}`;
  if (process.env.CKPT_REQUIRE_KVM === '1') throw new Error(`${reason} (CKPT_REQUIRE_KVM=1: /dev/kvm exists, so these tests must run; unset it to let them skip)`);
  process.stderr.write(`skip: ${t.name}: ${reason}\n`);
  t.skip(reason);
  return false;
}

/** Creates a VM, runs `fn`, and always destroys it. */
export async function withVm<T>(opts: KvmVmOptions, fn: (vm: KvmVm) => Promise<T> | T): Promise<T> {
  const vm = KvmVm.create(opts);
  try {
    return await fn(vm);
  } finally {
    vm.destroy();
  }
}

export async function waitFor(what: string, pred: () => boolean, timeoutMs = 10_000, vm?: KvmVm): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!pred()) {
    const err = vm?.lastError();
    if (err) throw new Error(`guest failed while waiting for ${what}: ${err}`);
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(1);
  }
}

/**
 * Waits until every vCPU has written at least `target` pages. The guest publishes pagesWritten after
 * a burst's stamps, so a published count means those stamps are in memory.
 */
export async function waitWritten(vm: KvmVm, target: number, timeoutMs = 10_000): Promise<Float64Array> {
  const c = new Float64Array(2 * vm.vcpuCount);
  await waitFor(`${target} pages per vCPU`, () => {
    vm.guestCounters(c);
    for (let v = 0; v < vm.vcpuCount; v++) if (c[2 * v + 1]! < target) return false;
    return true;
  }, timeoutMs, vm);
  return c;
}

/** Drains until the VM reports everything harvested; returns (slot, offset) pairs. */
export function drainAll(vm: KvmVm, cap = 1 << 16): { slots: number[]; offsets: number[] } {
  const s = new Uint32Array(cap);
  const o = new Uint32Array(cap);
  const slots: number[] = [];
  const offsets: number[] = [];
  for (;;) {
    const n = vm.drain(s, o);
    for (let i = 0; i < n; i++) {
      slots.push(s[i]!);
      offsets.push(o[i]!);
    }
    if (n < cap) return { slots, offsets };
  }
}

/** Splits harvested offsets of slot 0 into region page indexes and reserved-area pages. */
export function splitRegion(h: { slots: number[]; offsets: number[] }): { region: Set<number>; reserved: Set<number> } {
  const region = new Set<number>();
  const reserved = new Set<number>();
  h.offsets.forEach((off, i) => {
    if (h.slots[i] !== 0) throw new Error(`unexpected slot ${h.slots[i]}`);
    if (off >= REGION_FIRST_PAGE) region.add(off - REGION_FIRST_PAGE);
    else reserved.add(off);
  });
  return { region, reserved };
}

/* ---- the guest program's model (docs/guest-program.md), shared with the simulator */

/** Region page indexes the guest writes for vCPU `vcpu`, in order, for the first `count` writes after `skip`. */
export function expectedPages(workload: 'sequential' | 'random', regionPages: number, vcpus: number, vcpu: number,
  seed: number, count: number, skip = 0): number[] {
  const cursor = new WorkloadCursor({ workload, regionPages, vcpus, seed, hotPages: 1, hotPercent: 0 }, vcpu);
  const out: number[] = [];
  for (let i = 0; i < skip + count; i++) {
    const p = cursor.nextPage();
    if (i >= skip) out.push(p);
  }
  return out;
}

/** The fill words 4..1023 of a stamped page. */
export function expectedFill(vcpu: number, seq: number): Uint32Array {
  const words = new Uint32Array(PAGE / 4);
  writeStamp(words, 0, words.length, vcpu, seq, true);
  return words;
}

export function sortedEqual(a: Iterable<number>, b: Iterable<number>): boolean {
  const x = [...a].sort((p, q) => p - q);
  const y = [...b].sort((p, q) => p - q);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

/** KVM capability numbers (linux/kvm.h) that the tests hide. */
export const KVM_CAP = Object.freeze({ DIRTY_LOG_RING: 192, DIRTY_LOG_RING_ACQ_REL: 223 });

const DENY_KVM_CAP = fileURLToPath(new URL('../build/Release/deny-kvm-cap', import.meta.url));

/**
 * Runs `node --import tsx ARGS` as on a kernel without `caps`: under `deny-kvm-cap`, a seccomp filter
 * makes KVM_CHECK_EXTENSION answer 0 for them; everything else is the real /dev/kvm.
 */
export function nodeWithoutKvmCaps(caps: number[], args: string[]): SpawnSyncReturns<string> {
  if (!existsSync(DENY_KVM_CAP)) throw new Error(`${DENY_KVM_CAP} is missing: run npm run build:native`);
  return spawnSync(DENY_KVM_CAP, [caps.join(','), '--', process.execPath, '--import', 'tsx', ...args], { encoding: 'utf8', timeout: 60_000 });
}
