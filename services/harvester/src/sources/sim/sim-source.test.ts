import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GUEST_LAYOUT } from '../guest-layout.ts';
import { SimSource, type SimSourceOptions } from './sim-source.ts';
import { WorkloadCursor } from '@ckpt/common';

const MiB = 1024 * 1024;

export function fakeClock(): { now: () => number; advance: (ms: number) => void } {
  let t = 0;
  return { now: () => t, advance: (ms) => { t += ms; } };
}

function sim(over: Partial<SimSourceOptions>, clock = fakeClock()): SimSource {
  return new SimSource({
    slotBytes: [64 * MiB], vcpus: 1, ringEntries: 1024, workload: 'sequential', ratePagesPerSec: 1000, seed: 1,
    hotPages: 16, hotPercent: 90, fillPages: false, maxWritesPerVcpu: 0, tickUs: 1000, clock: clock.now, ...over,
  });
}

function drainAll(s: SimSource): Array<[number, number]> {
  const slots = new Uint32Array(100000);
  const offs = new Uint32Array(100000);
  const n = s.drain(slots, offs);
  return Array.from({ length: n }, (_, i) => [slots[i]!, offs[i]!]);
}

const regionGfn = GUEST_LAYOUT.regionGpa / 4096;
const statusGfn = GUEST_LAYOUT.statusGpa / 4096;

test('writes follow the workload and rate; each page is logged once per arm', () => {
  const c = fakeClock();
  const s = sim({ workload: 'random', seed: 42 }, c);
  s.start();
  c.advance(100); // 100 ms at 1000 pages/s = 100 writes
  const got = drainAll(s);
  const cursor = new WorkloadCursor({ workload: 'random', regionPages: 64 * 256 - 1024, vcpus: 1, seed: 42, hotPages: 16, hotPercent: 90 }, 0);
  const expected = new Set<number>();
  for (let i = 0; i < 100; i++) expected.add(regionGfn + cursor.nextPage());
  const region = new Set(got.filter(([, g]) => g >= regionGfn).map(([, g]) => g));
  assert.deepEqual([...region].sort(), [...expected].sort());
  assert.ok(got.some(([, g]) => g === statusGfn), 'status page logged');
  assert.equal(got.length, region.size + 1, 'no duplicates within one arm');
  // Without a reset, rewriting the same pages logs nothing new.
  c.advance(0.5);
  assert.equal(drainAll(s).length, 0);
  s.reset();
  const counters = new Float64Array(2);
  s.guestCounters(counters);
  assert.equal(counters[1], 100);
});

test('drain(at, thenReset) fills from at and resets only once everything is drained, as the native helper does', () => {
  const c = fakeClock();
  const s = sim({ workload: 'sequential', ratePagesPerSec: 0, ringEntries: 1024 }, c);
  s.start();
  c.advance(50); // the ring fills to its soft limit and stalls the vCPU
  const slots = new Uint32Array(600).fill(0xffffffff);
  const offs = new Uint32Array(600).fill(0xffffffff);
  assert.equal(s.drain(slots, offs, 100, true), 500, 'fills [100, 600)');
  assert.ok(offs.subarray(0, 100).every((x) => x === 0xffffffff), 'nothing written below at');
  assert.equal(s.stats().resetReturnedTotal, 0, 'no reset while entries are left');
  assert.equal(s.stats().vcpusStalledRingFull, 1);
  const rest = s.drain(slots, offs, 0, true);
  assert.ok(rest < 600, 'the rest fit');
  const st = s.stats();
  assert.equal(st.resetReturnedTotal, 500 + rest, 'reset in the same call');
  assert.equal(st.vcpusStalledRingFull, 0, 'the reset woke the vCPU');
  assert.throws(() => s.drain(slots, offs, 601), { name: 'RangeError', message: /at \(601\) exceeds the arrays' length \(600\)/ });
});

test('a ring at its soft limit stalls the vCPU until reset; counts match the kernel rule', () => {
  const c = fakeClock();
  const s = sim({ workload: 'sequential', ratePagesPerSec: 0, ringEntries: 1024 }, c);
  s.start();
  c.advance(50); // would be 10000 writes at SIM_MAX_RATE; the ring stops it
  let st = s.stats();
  assert.equal(st.ringFullExits, 1);
  assert.equal(st.vcpusStalledRingFull, 1);
  const first = drainAll(s);
  assert.ok(first.length >= 1024 - 64 && first.length <= 1024 - 64 + 1, `soft limit = size - reserved, got ${first.length}`);
  c.advance(10);
  assert.equal(drainAll(s).length, 0, 'stalled: no writes until reset');
  assert.equal(s.reset(), first.length);
  st = s.stats();
  assert.equal(st.entriesMarkedReset, st.resetReturnedTotal);
  c.advance(1);
  assert.ok(drainAll(s).length > 0, 'runs again after the reset');
});

test('hostile entries are dropped and counted, valid ones still come through', () => {
  const c = fakeClock();
  const s = sim({}, c);
  s.start();
  c.advance(10);
  for (const k of ['slot', 'as-id', 'offset', 'flags'] as const) assert.equal(s.injectHostile(0, k, 2), 2);
  c.advance(10);
  const got = drainAll(s);
  assert.ok(got.every(([slot, g]) => slot === 0 && g < 64 * 256));
  assert.equal(s.stats().invalidEntries, 8);
  assert.equal(s.reset(), got.length + 8, 'the kernel resets the dropped entries too');
});

test('a slot of 2^32 pages or more is refused with a clear error (its page numbers would not fit 32 bits; it hung)', () => {
  const TiB = 2 ** 40;
  assert.throws(() => sim({ slotBytes: [32 * TiB] }),
    (e: Error) => e instanceof RangeError && /slot 0 would hold 8589934592 pages.*--slots/.test(e.message));
  // Split over slots, the same guest is fine.
  assert.deepEqual(sim({ slotBytes: [8 * TiB, 8 * TiB, 8 * TiB, 8 * TiB] }).slots.map((x) => x.pages), [2 ** 31, 2 ** 31, 2 ** 31, 2 ** 31]);
});

test('a 16 TiB sparse guest costs memory only for written pages; the workload writes below 4 GiB', () => {
  const c = fakeClock();
  const s = sim({ slotBytes: [3 * 1024 * MiB, 16 * 1024 * 1024 * MiB - 3 * 1024 * MiB], vcpus: 2, workload: 'random', ratePagesPerSec: 10000 }, c);
  s.start();
  c.advance(100);
  const got = drainAll(s);
  assert.ok(got.some(([slot]) => slot === 1), 'writes reach the second slot');
  assert.ok(got.every(([slot, g]) => slot === 0 || g < (1024 * MiB) / 4096), 'and stay within the first 4 GiB');
  assert.ok(s.memory.populatedCount <= 2002 + 2);
});

test('guestCpuMs adds up the CPU clock around the guest\'s writes only, and is null without a clock', () => {
  const c = fakeClock();
  // A clock that moves 2 ms on every read: the source reads it before and after a call's writes.
  let reads = 0;
  const s = sim({ cpuClockMs: () => 2 * reads++ }, c);
  const counters = new Float64Array(2);
  s.start();
  s.guestCounters(counters); // no time has passed: nothing is due and the clock is not read
  assert.deepEqual([reads, s.guestCpuMs], [0, 0]);
  c.advance(20);
  s.guestCounters(counters);
  assert.ok(counters[1]! > 0, 'the guest wrote pages');
  assert.deepEqual([reads, s.guestCpuMs], [2, 2]);
  s.pause();
  c.advance(20);
  s.guestCounters(counters); // a paused guest writes nothing
  assert.deepEqual([reads, s.guestCpuMs], [2, 2]);
  assert.equal(sim({}, c).guestCpuMs, null);
});
