/**
 * The guest and the dirty-page harvest against real KVM: the guest's page sequence, exact ring and
 * bitmap harvests, stamps, the reset accounting, a ring-full storm and pause latency.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { stampSeq, stampVcpu } from '@ckpt/common';
import { KvmVm, loadNative } from '../ts/index.ts';
import {
  MiB, PAGE, REGION_FIRST_PAGE, STAMP_MAGIC, drainAll, expectedFill, expectedPages, needKvm, sortedEqual, splitRegion,
  waitFor, waitWritten, withVm,
} from './kvm-test-support.ts';

const MEM = 64 * MiB;
const REGION_PAGES = MEM / PAGE - REGION_FIRST_PAGE;

test('the guest runs: idle loops without writing, a paced guest writes at about its rate', async (t) => {
  if (!needKvm(t)) return;
  await withVm({ slotBytes: [MEM], workload: 'idle', tickUs: 1000 }, async (vm) => {
    vm.start();
    await waitFor('idle loops', () => vm.guestCounters()[0]! > 20, 5000, vm);
    assert.equal(vm.guestCounters()[1], 0, 'an idle guest writes no page');
  });
  const rate = 2000;
  await withVm({ slotBytes: [MEM], vcpus: 2, workload: 'sequential', ratePagesPerSec: rate, ringEntries: 65536 }, async (vm) => {
    const t0 = performance.now();
    vm.start();
    await sleep(400);
    const c = vm.guestCounters();
    const elapsed = (performance.now() - t0) / 1000;
    for (let v = 0; v < 2; v++) {
      const pages = c[2 * v + 1]!;
      assert.ok(pages > 0, `vCPU ${v} wrote nothing`);
      // The token bucket never hands out more than rate x time plus one burst (10 ms worth).
      assert.ok(pages <= rate * elapsed + rate / 100 + 1, `vCPU ${v} wrote ${pages} pages in ${elapsed} s at ${rate}/s`);
      assert.ok(c[2 * v]! > 0);
    }
    assert.equal(vm.lastError(), null);
  });
});

/**
 * Starts the guest and runs `rounds` rounds: each lets every vCPU write K more pages (the first round's
 * K are granted at creation, maxWritesPerVcpu), waits for them, pauses, and calls `fn` with the guest paused.
 */
async function pausedRounds(vm: KvmVm, K: number, rounds: number, fn: (round: number) => void): Promise<void> {
  vm.start();
  for (let round = 0; round < rounds; round++) {
    if (round > 0) {
      vm.grantWrites(K);
      vm.resume();
    }
    await waitWritten(vm, K * (round + 1));
    vm.pause();
    fn(round);
  }
}

/** A sequential guest whose vCPUs each write `k` pages per grant, with room in its rings for a round. */
function grantedGuest(vcpus: number, k: number): Parameters<typeof withVm>[0] {
  return { slotBytes: [MEM], vcpus, ringEntries: 16384, workload: 'sequential', ratePagesPerSec: 0, maxWritesPerVcpu: k, tickUs: 2000 };
}

/** The region pages such a guest writes in its grant number `round` (0-based). */
function grantedPages(vcpus: number, k: number, round: number): Set<number> {
  const expected = new Set<number>();
  for (let v = 0; v < vcpus; v++) for (const p of expectedPages('sequential', REGION_PAGES, vcpus, v, 1, k, k * round)) expected.add(p);
  return expected;
}

test('ring mode: drain returns exactly the pages the guest wrote, round after round', async (t) => {
  if (!needKvm(t)) return;
  const K = 300;
  const vcpus = 2;
  await withVm(grantedGuest(vcpus, K), async (vm) => {
    await pausedRounds(vm, K, 3, (round) => {
      const h = drainAll(vm, 1000); // a small array: several drain() calls per harvest
      const { region, reserved } = splitRegion(h);
      const expected = grantedPages(vcpus, K, round);
      assert.ok(sortedEqual(region, expected), `round ${round}: region pages differ (${region.size} vs ${expected.size})`);
      for (const p of reserved) assert.ok(p < REGION_FIRST_PAGE);
      // The status pages are written every loop.
      assert.ok(reserved.has(0x81) && reserved.has(0x82), `status pages missing: ${[...reserved].map((p) => p.toString(16)).join(',')}`);
      const returned = vm.reset();
      assert.equal(returned, h.slots.length, 'KVM reset every entry we marked (all were valid)');
      const s = vm.stats();
      assert.equal(s.entriesMarkedReset, s.resetReturnedTotal);
      assert.equal(s.invalidEntries, 0);
      assert.equal(s.ringEntriesLost, 0);
      assert.equal(s.entriesHarvested, s.entriesMarkedReset);
    });
    // Nothing written since the last reset while paused: an empty harvest.
    assert.equal(vm.drain(new Uint32Array(16), new Uint32Array(16)), 0);
    assert.equal(vm.reset(), 0);
    assert.equal(vm.lastError(), null);
  });
});

test('ring mode: drain(at, thenReset) fills from at, and resets in the same call only once all is drained', async (t) => {
  if (!needKvm(t)) return;
  const K = 300;
  await withVm({
    slotBytes: [MEM], vcpus: 1, ringEntries: 16384, workload: 'sequential', ratePagesPerSec: 0, maxWritesPerVcpu: K, tickUs: 2000,
  }, async (vm) => {
    await pausedRounds(vm, K, 2, (round) => {
      const before = vm.stats();
      const s = new Uint32Array(200).fill(0xffffffff);
      const o = new Uint32Array(200).fill(0xffffffff);
      // More than K entries are waiting: the first call fills [50, 200) and must not reset yet.
      assert.equal(vm.drain(s, o, 50, true), 150);
      assert.ok(s.subarray(0, 50).every((x) => x === 0xffffffff), 'nothing written below at');
      assert.equal(vm.stats().resetReturnedTotal, before.resetReturnedTotal, 'no reset while entries are left');
      const offsets = Array.from(o.subarray(50));
      let n: number;
      do {
        n = vm.drain(s, o, 0, true);
        offsets.push(...o.subarray(0, n));
      } while (n === s.length);
      const after = vm.stats();
      assert.equal(after.entriesMarkedReset, after.resetReturnedTotal, 'the last call reset every entry marked');
      assert.equal(after.resetReturnedTotal - before.resetReturnedTotal, offsets.length);
      const region = new Set(offsets.filter((x) => x >= REGION_FIRST_PAGE).map((x) => x - REGION_FIRST_PAGE));
      assert.ok(sortedEqual(region, expectedPages('sequential', REGION_PAGES, 1, 0, 1, K, K * round)), `round ${round}: region pages differ`);
    });
    // Re-armed: nothing more without new writes.
    assert.equal(vm.drain(new Uint32Array(16), new Uint32Array(16), 0, true), 0);
    assert.equal(vm.lastError(), null);
  });
});

test('harvestRoundsInC (the bench\'s plain C loop) harvests exactly the granted pages of the same guest, round after round', async (t) => {
  if (!needKvm(t)) return;
  const K = 300;
  const vcpus = 2;
  await withVm(grantedGuest(vcpus, K), async (vm) => {
    vm.start();
    await waitWritten(vm, K);
    vm.pause();
    drainAll(vm);
    vm.reset();
    vm.resume();
    const slots = new Uint32Array(4096);
    const offsets = new Uint32Array(4096);
    const { us, seen } = vm.harvestRoundsInC(K, 3, slots, offsets);
    assert.equal(us.length, 3);
    for (let r = 0; r < 3; r++) {
      assert.ok(us[r]! > 0, `round ${r} took ${us[r]} us`);
      // Every vCPU's K pages, plus the few status and stack pages the guest writes every loop.
      assert.ok(seen[r]! >= vcpus * K && seen[r]! < vcpus * K + 64, `round ${r} saw ${seen[r]} entries for ${vcpus * K} pages`);
    }
    // The arrays hold the last round: exactly the pages granted last.
    const region = new Set(Array.from(offsets.subarray(0, seen[2])).filter((x) => x >= REGION_FIRST_PAGE).map((x) => x - REGION_FIRST_PAGE));
    const expected = grantedPages(vcpus, K, 3);
    assert.ok(sortedEqual(region, expected), `last round: region pages differ (${region.size} vs ${expected.size})`);
    const st = vm.stats();
    assert.equal(st.entriesMarkedReset, st.resetReturnedTotal, 'every round reset what it drained');
    // The guest was resumed and has written everything granted; nothing is left un-harvested.
    const c = vm.guestCounters();
    for (let v = 0; v < vcpus; v++) assert.equal(c[2 * v + 1], 4 * K);
    vm.pause();
    assert.ok(drainAll(vm).offsets.every((x) => x < REGION_FIRST_PAGE), 'no region page left in the rings');
    assert.throws(() => vm.harvestRoundsInC(K, 4, slots.subarray(0, 0), offsets), /at least one entry/);
    assert.equal(vm.lastError(), null);
  });
  await withVm({ slotBytes: [MEM], workload: 'sequential', ratePagesPerSec: 0, maxWritesPerVcpu: 1 }, (vm) => {
    const small = new Uint32Array(16);
    assert.throws(() => loadNative().harvestRounds((vm as unknown as { handle: never }).handle, 1, 4, small, small, new Float64Array(2), new Float64Array(4)),
      (e: Error) => e instanceof RangeError && /hold 4 rounds/.test(e.message));
  });
});

test('readPages returns the stamps and fill words of docs/guest-program.md', async (t) => {
  if (!needKvm(t)) return;
  const K = 24;
  const vcpus = 2;
  // fillPages writes 1024 words a page; the biggest ring keeps the whole round.
  await withVm({
    slotBytes: [MEM], vcpus, ringEntries: 65536, workload: 'sequential', ratePagesPerSec: 0, maxWritesPerVcpu: K, fillPages: true,
  }, async (vm) => {
    vm.start();
    await waitWritten(vm, K);
    vm.pause();
    const { region } = splitRegion(drainAll(vm));
    vm.reset();
    const pages: { vcpu: number; seq: number; index: number }[] = [];
    for (let v = 0; v < vcpus; v++) {
      expectedPages('sequential', REGION_PAGES, vcpus, v, 1, K).forEach((index, i) => pages.push({ vcpu: v, seq: i + 1, index }));
    }
    assert.ok(sortedEqual(region, pages.map((p) => p.index)));
    const slots = new Uint32Array(pages.length);
    const offsets = Uint32Array.from(pages, (p) => REGION_FIRST_PAGE + p.index);
    const out = new Uint8Array(pages.length * PAGE);
    vm.readPages(slots, offsets, pages.length, out);
    pages.forEach((p, i) => {
      const words = new Uint32Array(out.buffer, i * PAGE, PAGE / 4);
      assert.equal(stampVcpu(words, 0), p.vcpu, `page ${p.index}: magic and vcpu`);
      assert.equal(stampSeq(words, 0), p.seq, `page ${p.index}: seq`);
      assert.equal(words[0]! & 0xffff, STAMP_MAGIC, `page ${p.index}: magic`);
      assert.deepEqual([words[2], words[3]], [0, 0], `page ${p.index}: words 2 and 3 are never written`);
      const fill = expectedFill(p.vcpu, p.seq);
      for (let k = 4; k < PAGE / 4; k++) if (words[k] !== fill[k]) assert.fail(`page ${p.index}: word ${k} is ${words[k]}, expected ${fill[k]}`);
    });
    // readRanges reads the same bytes, back to back.
    const viaRanges = new Uint8Array(K * PAGE);
    const n = vm.readRanges(Uint32Array.of(0), Uint32Array.of(REGION_FIRST_PAGE), Uint32Array.of(K), 1, viaRanges);
    assert.equal(n, K * PAGE);
    assert.deepEqual(viaRanges, out.subarray(0, K * PAGE));
    // So does the resident path (memcpy from the mapping), split into one range per page.
    const viaMapping = new Uint8Array(K * PAGE);
    const firsts = Uint32Array.from({ length: K }, (_, i) => REGION_FIRST_PAGE + i);
    assert.equal(vm.readRanges(new Uint32Array(K), firsts, new Uint32Array(K).fill(1), K, viaMapping, true), K * PAGE);
    assert.deepEqual(viaMapping, viaRanges);
  });
});

test('bitmap mode harvests the same region pages as the ring for the same workload', async (t) => {
  if (!needKvm(t)) return;
  const K = 400;
  const seed = 7;
  const expected = new Set(expectedPages('random', REGION_PAGES, 1, 0, seed, K));
  const harvest = async (ringEntries: number): Promise<Set<number>> => withVm({
    slotBytes: [MEM], ringEntries, workload: 'random', seed, ratePagesPerSec: 0, maxWritesPerVcpu: K, tickUs: 2000,
  }, async (vm) => {
    vm.start();
    await waitWritten(vm, K);
    vm.pause();
    const { region } = splitRegion(drainAll(vm, 64));
    const cleared = vm.reset();
    const s = vm.stats();
    if (ringEntries === 0) {
      assert.equal(s.mode, 'bitmap');
      assert.equal(s.bitmapPagesCleared, cleared);
      assert.equal(s.entriesHarvested, cleared, 'bitmap: every harvested page was cleared');
    } else {
      assert.equal(s.entriesMarkedReset, s.resetReturnedTotal);
    }
    // Re-armed: one more write round reports only the new pages.
    vm.grantWrites(10);
    vm.resume();
    await waitWritten(vm, K + 10);
    vm.pause();
    const next = splitRegion(drainAll(vm)).region;
    assert.ok(sortedEqual(next, new Set(expectedPages('random', REGION_PAGES, 1, 0, seed, 10, K))), `${ringEntries}: second round`);
    vm.reset();
    return region;
  });
  const ring = await harvest(16384);
  const bitmap = await harvest(0);
  assert.ok(sortedEqual(ring, expected), 'ring: the random workload\'s pages');
  assert.ok(sortedEqual(bitmap, expected), 'bitmap: the same pages');
});

test('a guest of 4 GiB and more: the workload region ends below the APIC window at 0xfec00000, memory above is mapped but not written', async (t) => {
  if (!needKvm(t)) return;
  const K = 300;
  const seed = 11;
  const GiB = 1024 * MiB;
  await withVm({ slotBytes: [4 * GiB, 2 * GiB], ringEntries: 16384, workload: 'random', seed, ratePagesPerSec: 0, maxWritesPerVcpu: K, tickUs: 2000 }, async (vm) => {
    vm.start();
    await waitWritten(vm, K);
    vm.pause();
    const h = drainAll(vm);
    assert.ok(h.slots.every((s) => s === 0), 'nothing above 4 GiB was written');
    const { region } = splitRegion(h);
    // KVM turns a write to the local APIC page (0xfee00000) into an MMIO exit, memslot or not: a
    // region up to 4 GiB stopped a 4 GiB guest's vCPUs once its workload got there.
    const regionPages = 0xfec00000 / PAGE - REGION_FIRST_PAGE;
    const control = new Uint8Array(PAGE);
    vm.readRanges(Uint32Array.of(0), Uint32Array.of(loadNative().guestLayout.controlGpa / PAGE), Uint32Array.of(1), 1, control);
    assert.equal(new DataView(control.buffer).getUint32(16, true), regionPages, 'the guest\'s region_pages');
    assert.ok(sortedEqual(region, new Set(expectedPages('random', regionPages, 1, 0, seed, K))));
    // The second slot is there: readable (zeros) through readRanges without allocating it.
    const out = new Uint8Array(16 * PAGE).fill(1);
    vm.readRanges(Uint32Array.of(1), Uint32Array.of(524288 - 16), Uint32Array.of(16), 1, out);
    assert.ok(out.every((b) => b === 0));
  });
});

test('drain keeps its arrays bound between calls, binds again when they change, and never writes through a detached one', async (t) => {
  if (!needKvm(t)) return;
  const K = 300;
  await withVm(grantedGuest(1, K), async (vm) => {
    let s = new Uint32Array(4096);
    let o = new Uint32Array(4096);
    await pausedRounds(vm, K, 4, (round) => {
      if (round === 1) {
        // The caller's buffer is transferred away: its memory now belongs to `moved`, and `s` reads
        // length 0. A drain through the pointer bound in round 0 would write into `moved`.
        const moved = new Uint32Array(structuredClone(s.buffer, { transfer: [s.buffer] }));
        moved.fill(0xffffffff);
        assert.equal(s.length, 0);
        assert.equal(vm.drain(s, o, 0, true), 0, 'no room: nothing drained, nothing reset');
        assert.ok(moved.every((x) => x === 0xffffffff), 'nothing was written through the detached array\'s old pointer');
        s = new Uint32Array(4096);
      }
      if (round === 2) o = new Uint32Array(8192); // other arrays: bound again, the smaller length counts
      const n = vm.drain(s, o, 0, true);
      assert.ok(n < s.length, `round ${round}: drained ${n}, all in one call`);
      const region = new Set(Array.from(o.subarray(0, n)).filter((x) => x >= REGION_FIRST_PAGE).map((x) => x - REGION_FIRST_PAGE));
      assert.ok(sortedEqual(region, grantedPages(1, K, round)), `round ${round}: region pages differ (${region.size}), nothing lost to the detached array`);
      const st = vm.stats();
      assert.equal(st.entriesMarkedReset, st.resetReturnedTotal, `round ${round}: reset in the same call`);
    });
    assert.equal(vm.lastError(), null);
  });
});

test('bitmap mode: a drain into small arrays resumes where it stopped, and reset clears only what was emitted', async (t) => {
  if (!needKvm(t)) return;
  const K = 200;
  await withVm({ slotBytes: [32 * MiB, 32 * MiB], ringEntries: 0, workload: 'sequential', ratePagesPerSec: 0, maxWritesPerVcpu: K, tickUs: 2000 }, async (vm) => {
    vm.start();
    await waitWritten(vm, K);
    vm.pause();
    const s = new Uint32Array(50);
    const o = new Uint32Array(50);
    assert.equal(vm.drain(s, o), 50);
    const first = new Set(Array.from(o));
    // Reset after a partial harvest: the pages not yet emitted stay dirty and come back.
    assert.equal(vm.reset(), 50);
    const rest = drainAll(vm);
    vm.reset();
    const all = new Set([...first, ...rest.offsets]);
    assert.equal(all.size, first.size + rest.offsets.length, 'no page reported twice');
    for (let i = 0; i < K; i++) assert.ok(all.has(REGION_FIRST_PAGE + i), `region page ${i} missing`);
  });
});

test('a ring-full storm is survived: vCPUs stall, resume after reset, and keep advancing', async (t) => {
  if (!needKvm(t)) return;
  // 4096 entries: on kvm-pvm a ring smaller than its emulation batch (1024 stores) plus the reserve is
  // overrun on every fill and, under load, the guest can stay stalled (see the issue note).
  await withVm({ slotBytes: [MEM], vcpus: 2, ringEntries: 4096, workload: 'random', ratePagesPerSec: 0, seed: 3 }, async (vm) => {
    vm.start();
    await waitFor('a full ring', () => vm.stats().vcpusStalledRingFull > 0, 5000, vm);
    const c = new Float64Array(4);
    let last = vm.guestCounters(c)[1]! + c[3]!;
    let progressed = 0;
    for (let i = 0; i < 24; i++) {
      // Half the rounds harvest a paused guest, half a running one (stalled vCPUs stay parked).
      const paused = i % 2 === 0;
      if (paused) vm.pause();
      drainAll(vm, 512);
      vm.reset();
      if (paused) vm.resume();
      await sleep(10);
      vm.guestCounters(c);
      const now = c[1]! + c[3]!;
      if (now > last) progressed++;
      last = now;
    }
    const s = vm.stats();
    assert.ok(s.ringFullExits > 0, JSON.stringify(s));
    assert.ok(progressed >= 20, `the guest advanced in only ${progressed} of 24 rounds`);
    // Hosts whose kernel overruns the ring's reserve (kvm-pvm here) lose entries; the helper
    // recovers the ring and says how many.
    t.diagnostic(`ring-full exits ${s.ringFullExits}, entries lost to kernel ring overflows ${s.ringEntriesLost}`);
    assert.equal(s.entriesMarkedReset, s.resetReturnedTotal);
    assert.equal(s.invalidEntries, 0);
    assert.equal(vm.lastError(), null);
    assert.equal(s.runErrors, 0);
  });
});

interface ProbeTrials {
  trials: number;
  /** Trials whose first harvest drained the whole ring (every overrun does: all its slots are published). */
  drainedFull: number;
  /** Losses counted by the harvest that drained the overrun ring. */
  caughtAtPause: number;
  /** Losses counted by any other harvest: the overrun of an earlier harvest, found late. */
  caughtLater: number;
  probes: number;
  probePageChanged: boolean;
  probeFailed: boolean;
}

/**
 * Trials of: the guest fills pages until its 4096-entry ring is full (1030 entries a page on hosts
 * that log every store), pause, harvest (drain + reset, where a ring drained full is probed), resume;
 * then the guest writes one more page and a second paused harvest shows whether ghosts of a kernel
 * overrun were still there. Stops after `wantOverruns` overruns.
 */
async function probeTrials(probeFullRings: boolean, maxTrials: number, wantOverruns: number): Promise<ProbeTrials> {
  const r: ProbeTrials = { trials: 0, drainedFull: 0, caughtAtPause: 0, caughtLater: 0, probes: 0, probePageChanged: false, probeFailed: false };
  await withVm({
    slotBytes: [MEM], vcpus: 1, ringEntries: 4096, workload: 'sequential', ratePagesPerSec: 0, fillPages: true, maxWritesPerVcpu: 1, probeFullRings,
  }, async (vm) => {
    const probeGfn = loadNative().guestLayout.probeGpa / PAGE;
    const probePage = (): Uint8Array => {
      const out = new Uint8Array(PAGE);
      vm.readPages(new Uint32Array([0]), new Uint32Array([probeGfn]), 1, out);
      return out;
    };
    const before = probePage();
    vm.start();
    let written = 1;
    await waitWritten(vm, written);
    const harvest = (): number => {
      vm.pause();
      const n = drainAll(vm, 8192).slots.length;
      vm.reset();
      vm.resume();
      return n;
    };
    harvest();
    for (; r.trials < maxTrials && r.caughtAtPause + r.caughtLater < wantOverruns; r.trials++) {
      const s0 = vm.stats();
      vm.grantWrites(5);
      written += 5;
      await waitFor('a full ring', () => vm.stats().vcpusStalledRingFull > 0 || vm.guestCounters()[1]! >= written, 5000, vm);
      const full = harvest() === 4096;
      if (full) r.drainedFull++;
      const s1 = vm.stats();
      await waitWritten(vm, written);
      harvest();
      const s2 = vm.stats();
      if (s1.ringEntriesLost > s0.ringEntriesLost) {
        if (full) r.caughtAtPause++;
        else r.caughtLater++;
      }
      if (s2.ringEntriesLost > s1.ringEntriesLost) r.caughtLater++;
      assert.equal(s2.entriesMarkedReset, s2.resetReturnedTotal, 'the ring is back in step with the kernel');
    }
    r.probes = vm.stats().ringProbes;
    r.probeFailed = vm.stats().ringProbeFailed;
    r.probePageChanged = Buffer.compare(before, probePage()) !== 0;
    assert.equal(vm.lastError(), null);
  });
  return r;
}

test('a ring drained full is proven at the pause: a kernel overrun is caught before its epoch is committed', async (t) => {
  if (!needKvm(t)) return;
  const on = await probeTrials(true, 150, 2);
  t.diagnostic(`probe on: ${JSON.stringify(on)}`);
  if (on.drainedFull === 0) {
    // Kernels that keep their reserve never hand over a full ring: nothing is suspect, nothing to prove.
    process.stderr.write(`note: this kernel never filled a 4096-entry ring to the last entry in ${on.trials} trials; the overrun probe had nothing to prove here\n`);
    assert.equal(on.caughtLater + on.caughtAtPause, 0);
    return;
  }
  assert.equal(on.probeFailed, false, 'this kernel logs the probe');
  assert.ok(on.probes >= on.drainedFull, `every ring drained full was probed: ${JSON.stringify(on)}`);
  assert.equal(on.caughtLater, 0, `no overrun may show only after the pause that harvested it: ${JSON.stringify(on)}`);
  assert.equal(on.probePageChanged, false, 'the probe puts the page back');
  // NEGATIVE: without the probe, the same overruns show only at the next harvest (after the epoch
  // that missed the overwritten entries would have been committed). Only where this kernel overruns.
  if (on.caughtAtPause === 0) {
    process.stderr.write(`note: this kernel did not overrun a ring in ${on.trials} trials (${on.drainedFull} drained full, all proven clean); the negative half needs an overrun\n`);
    return;
  }
  const off = await probeTrials(false, 200, 1);
  t.diagnostic(`probe off: ${JSON.stringify(off)}`);
  assert.equal(off.probes, 0);
  assert.equal(off.caughtAtPause, 0, JSON.stringify(off));
  assert.ok(off.caughtLater > 0, `without the probe an overrun must show late in ${off.trials} trials: ${JSON.stringify(off)}`);
});

test('pause returns quickly and leaves every vCPU parked', async (t) => {
  if (!needKvm(t)) return;
  await withVm({ slotBytes: [MEM], vcpus: 2, ringEntries: 65536, workload: 'random', ratePagesPerSec: 0 }, async (vm) => {
    vm.start();
    await sleep(20);
    const times: number[] = [];
    const c = new Float64Array(4);
    const c2 = new Float64Array(4);
    for (let i = 0; i < 20; i++) {
      const t0 = performance.now();
      vm.pause();
      times.push(performance.now() - t0);
      // Parked: nothing moves while paused.
      vm.guestCounters(c);
      await sleep(3);
      vm.guestCounters(c2);
      assert.deepEqual(c2, c, 'counters moved while paused');
      drainAll(vm);
      vm.reset();
      vm.resume();
      await sleep(5);
    }
    times.sort((a, b) => a - b);
    const median = times[times.length >> 1]!;
    assert.ok(median < 20, `median pause ${median.toFixed(3)} ms`);
    assert.ok(times.at(-1)! < 1000, `slowest pause ${times.at(-1)!.toFixed(1)} ms`);
    assert.ok(vm.stats().kicks > 0, 'running vCPUs were kicked');
  });
});

test('pause, resume and reset before start or twice are harmless', async (t) => {
  if (!needKvm(t)) return;
  await withVm({ slotBytes: [MEM] }, (vm) => {
    vm.pause();
    vm.resume();
    assert.equal(vm.drain(new Uint32Array(8), new Uint32Array(8)), 0);
    assert.equal(vm.reset(), 0);
    vm.start();
    vm.start();
    vm.pause();
    vm.pause();
    vm.resume();
    vm.resume();
    assert.equal(vm.lastError(), null);
  });
});

test('KvmVm defaults give a paced sequential guest with a 4096-entry ring', async (t) => {
  if (!needKvm(t)) return;
  const vm = KvmVm.create({ slotBytes: [MEM] });
  try {
    assert.equal(vm.mode, 'ring');
    assert.equal(vm.ringEntries, 4096);
    vm.start();
    await waitFor('pages', () => vm.guestCounters()[1]! > 10, 5000, vm);
  } finally {
    vm.destroy();
  }
});

test('the dirty ring is mapped when the vCPU is made: a first lap drains without page faults', async (t) => {
  if (!needKvm(t)) return;
  // 20000 entries fill 79 of the ring's 256 pages. Unmapped, each would fault once, inside the pause.
  const K = 20_000;
  await withVm({
    slotBytes: [128 * MiB], vcpus: 1, ringEntries: 65536, workload: 'sequential', ratePagesPerSec: 0, maxWritesPerVcpu: K,
  }, async (vm) => {
    vm.start();
    await waitWritten(vm, K);
    vm.pause();
    const s = new Uint32Array(32768).fill(1); // touched now, so only the ring can fault below
    const o = new Uint32Array(32768).fill(1);
    const before = process.resourceUsage().minorPageFault;
    const n = vm.drain(s, o, 0, false);
    const faults = process.resourceUsage().minorPageFault - before;
    assert.ok(n >= K, `drained ${n} entries`);
    assert.ok(faults < 20, `${faults} page faults while draining ${n} entries (${Math.ceil((n * 16) / PAGE)} ring pages)`);
    assert.equal(vm.reset(), n);
    assert.equal(vm.lastError(), null);
  });
});
