/**
 * `npm run bench:harvest [-- --json] [-- --quick]`: the harvester's costs on real KVM.
 *
 * 1. Per-page harvest cost (drain + reset) through the Node path, against the plain C loop
 *    (packages/kvm-native src/harvest-rounds.c) doing the same on the same guest, from the same thread,
 *    in alternating blocks of rounds: `nodeVsCRatio` (target <= 1.25). Rounds of 8000 pages split each
 *    path's cost into a cost per page (the slope: `nodeVsCMarginalRatio`) and a cost per call
 *    (`nodeCallUs`, `cCallUs`). Also against the same loop in a process and guest of its own
 *    (build/Release/kvm-harvest-baseline): `nodeVsCProcessRatio`.
 * 2. Ring vs bitmap harvest time on 1 GiB and 8 GiB guests with 100, 1000 and 30000 dirty pages
 *    (`ringVsBitmap8GiB100` = bitmap time / ring time; expect >= 10).
 * 3. Checkpoint pause p50/p99 with 1000 dirty pages per epoch on a 256 MiB guest (target p99 <= 2 ms).
 *
 * Figures drift on this shared 2-core machine; ratios measured in one run hold.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { percentile } from '@ckpt/common';
import { CheckpointCycle, KvmSource, type EpochSink } from '@ckpt/harvester';
import { kvmAvailability, KvmVm } from '@ckpt/kvm-native';

const HELP = `npm run bench:harvest -- [--json] [--quick] [--only 1,2,3]

The harvester's costs on real KVM (needs /dev/kvm and the native build):
  1  per-page drain+reset, Node path vs a plain C loop on the same guest (nodeVsCRatio, target <= 1.25),
     split into a cost per page and one per call (nodeVsCMarginalRatio, nodeCallUs, cCallUs),
     and vs the C loop in a process of its own (nodeVsCProcessRatio)
  2  ring vs bitmap harvest time, 1 and 8 GiB guests, 100/1000/30000 pages (ringVsBitmap8GiB100, expect >= 10)
  3  checkpoint pause p50/p99, 1000 dirty pages per epoch, 256 MiB guest (pauseP99Us, target <= 2000)

  --json    the last line of stdout is one JSON object with the figures
  --quick   fewer rounds (a smoke run; figures are noisier)
  --only    run only these sections (section 2 needs section 1's entries-per-page figure and runs it)
`;
const argv = process.argv.slice(2);
if (argv.includes('--help') || argv.includes('-h')) {
  process.stdout.write(HELP);
  process.exit(0);
}
const json = argv.includes('--json');
const quick = argv.includes('--quick');
const onlyAt = argv.indexOf('--only');
const only = onlyAt >= 0 ? new Set((argv[onlyAt + 1] ?? '').split(',').map(Number)) : new Set([1, 2, 3]);
const known = new Set(['--json', '--quick', '--only', '--help', '-h']);
const unknown = argv.filter((a, i) => !known.has(a) && !(i === onlyAt + 1 && onlyAt >= 0));
if (unknown.length > 0 || [...only].some((n) => ![1, 2, 3].includes(n))) {
  process.stderr.write(`bench:harvest: bad options: ${unknown.join(' ') || '--only takes a list of 1, 2, 3'}\n\n${HELP}`);
  process.exit(2);
}
const GiB = 1024 * 1024 * 1024;
const MiB = 1024 * 1024;
const SEQUENTIAL = 1;
const baselineTool = fileURLToPath(new URL('../packages/kvm-native/build/Release/kvm-harvest-baseline', import.meta.url));
const sleepBuf = new Int32Array(new SharedArrayBuffer(4));
const sleepMs = (ms: number): void => void Atomics.wait(sleepBuf, 0, 0, ms);
const say = (s: string): void => void process.stderr.write(s + '\n');

function median(v: number[]): number {
  return percentile(v, 50);
}

/**
 * How often the waits poll the guest's counters: as the C loop's POLL_NS (src/harvest-rounds.c), so both
 * paths find the guest's writes equally fresh in the caches (polled every 0.2 ms, the Node rounds came
 * 0-150 us later to the rings than the C rounds).
 */
const POLL_MS = 0.05;

/** Waits until the guest's vCPU 0 has written `target` pages in total. */
function waitWritten(vm: KvmVm, target: number, counters: Float64Array): void {
  const deadline = Date.now() + 10_000;
  for (;;) {
    vm.guestCounters(counters);
    if (counters[1]! >= target) return;
    if (Date.now() > deadline) throw new Error(`guest did not write ${target} pages in 10 s (at ${counters[1]})`);
    const err = vm.lastError();
    if (err) throw new Error(`guest vCPU failed: ${err}`);
    sleepMs(POLL_MS);
  }
}

/**
 * One timed harvest as the checkpoint cycle does it: everything drained into the arrays, then reset
 * (or cleared) in the same native call; returns entries seen. (The arrays hold a whole round here.)
 */
function drainAndReset(vm: KvmVm, slots: Uint32Array, offsets: Uint32Array): number {
  let n = 0;
  let got: number;
  do {
    got = vm.drain(slots, offsets, 0, true);
    n += got;
  } while (got === slots.length);
  return n;
}

/** One Node-path round: grant `pages` writes, wait until `target` are written, pause, time drain+reset (ns), resume. */
function timedRound(vm: KvmVm, pages: number, target: number, slots: Uint32Array, offsets: Uint32Array, counters: Float64Array): { ns: number; n: number } {
  vm.grantWrites(pages);
  waitWritten(vm, target, counters);
  vm.pause();
  const t0 = process.hrtime.bigint();
  const n = drainAndReset(vm, slots, offsets);
  const t1 = process.hrtime.bigint();
  vm.resume();
  return { ns: Number(t1 - t0), n };
}

/**
 * Median drain+reset time (us) per round of `pages` fresh dirty pages through the Node path, for
 * each of the given guests (ring sizes; 0 = bitmap). The guests exist side by side and take turns
 * in blocks of a few rounds (the others idle outside KVM_RUN), so drift on this shared machine
 * reaches all of them alike and their ratio holds, while no guest's harvest runs in caches another
 * one has just churned.
 */
function nodeHarvest(memBytes: number, pages: number, rounds: number, ringEntries: number[]): { us: number; seen: number }[] {
  const BLOCK = 5;
  const vms: KvmVm[] = [];
  const slots = new Uint32Array(Math.max(pages * 2, 1024));
  const offsets = new Uint32Array(slots.length);
  const counters = new Float64Array(2);
  const times: number[][] = ringEntries.map(() => []);
  const seen = ringEntries.map(() => 0);
  const written = ringEntries.map(() => 1);
  try {
    for (const ring of ringEntries) {
      vms.push(KvmVm.create({ slotBytes: [memBytes], vcpus: 1, ringEntries: ring, workload: SEQUENTIAL, ratePagesPerSec: 0, seed: 1, maxWritesPerVcpu: 1 }));
    }
    for (const vm of vms) {
      vm.start();
      waitWritten(vm, 1, counters);
      vm.pause();
      drainAndReset(vm, slots, offsets);
      vm.resume();
    }
    const round = (i: number, timed: boolean): void => {
      written[i]! += pages;
      const { ns, n } = timedRound(vms[i]!, pages, written[i]!, slots, offsets, counters);
      if (timed) {
        times[i]!.push(ns / 1000);
        seen[i] = n;
      }
    };
    for (let i = 0; i < vms.length; i++) for (let r = 0; r < 2; r++) round(i, false);
    for (let done = 0, turn = 0; done < rounds; done += BLOCK, turn++) {
      for (let k = 0; k < vms.length; k++) {
        const i = turn % 2 === 0 ? k : vms.length - 1 - k;
        for (let r = 0; r < Math.min(BLOCK, rounds - done); r++) round(i, true);
      }
    }
  } finally {
    for (const vm of vms) vm.destroy();
  }
  return times.map((t, i) => ({ us: median(t), seen: seen[i]! }));
}

interface PathFigures {
  /** Median drain+reset time per entry of the `pages` rounds (ns): the fixed cost per call included. */
  perPageNs: number;
  /** Median drain+reset time of one round (us), per round size. */
  roundUs: Record<number, number>;
}

/**
 * Drain+reset cost of the Node path and of the plain C loop (src/harvest-rounds.c through
 * harvestRoundsInC) on one guest, from this thread, in alternating blocks of rounds: the same guest,
 * threads and caches for both, so only the path differs. Rounds of each size in `sizes` take turns, so
 * a path's cost splits into a cost per page (the slope between the sizes) and a cost per call.
 */
function sameGuestHarvest(memBytes: number, sizes: number[], rounds: number, ringEntries: number): { node: PathFigures; c: PathFigures; seen: number } {
  const BLOCK = 5;
  const vm = KvmVm.create({ slotBytes: [memBytes], vcpus: 1, ringEntries, workload: SEQUENTIAL, ratePagesPerSec: 0, seed: 1, maxWritesPerVcpu: 1 });
  const slots = new Uint32Array(Math.max(Math.max(...sizes) * 2, 1024));
  const offsets = new Uint32Array(slots.length);
  const counters = new Float64Array(2);
  const nodeUs = new Map(sizes.map((k) => [k, [] as number[]]));
  const cUs = new Map(sizes.map((k) => [k, [] as number[]]));
  const nodePerPage: number[] = [];
  const cPerPage: number[] = [];
  let written = 1;
  let seen = 0;
  const nodeRound = (pages: number, timed: boolean): void => {
    written += pages;
    const { ns, n } = timedRound(vm, pages, written, slots, offsets, counters);
    if (!timed) return;
    nodeUs.get(pages)!.push(ns / 1000);
    if (pages === sizes[0]) {
      nodePerPage.push(ns / n);
      seen = n;
    }
  };
  const cRounds = (pages: number, n: number, timed: boolean): void => {
    const r = vm.harvestRoundsInC(pages, n, slots, offsets);
    written += n * pages;
    if (!timed) return;
    for (let i = 0; i < n; i++) {
      cUs.get(pages)!.push(r.us[i]!);
      if (pages === sizes[0]) cPerPage.push((r.us[i]! * 1000) / r.seen[i]!);
    }
  };
  try {
    vm.start();
    waitWritten(vm, 1, counters);
    vm.pause();
    drainAndReset(vm, slots, offsets);
    vm.resume();
    for (const pages of sizes) {
      for (let r = 0; r < 2; r++) nodeRound(pages, false);
      cRounds(pages, 2, false);
    }
    for (let done = 0, turn = 0; done < rounds; done += BLOCK, turn++) {
      const n = Math.min(BLOCK, rounds - done);
      for (const pages of turn % 2 === 0 ? sizes : [...sizes].reverse()) {
        const runNode = (): void => { for (let r = 0; r < n; r++) nodeRound(pages, true); };
        if (turn % 2 === 0) { runNode(); cRounds(pages, n, true); } else { cRounds(pages, n, true); runNode(); }
      }
    }
  } finally {
    vm.destroy();
  }
  const medians = (m: Map<number, number[]>): Record<number, number> => Object.fromEntries([...m].map(([k, v]) => [k, median(v)]));
  return { node: { perPageNs: median(nodePerPage), roundUs: medians(nodeUs) }, c: { perPageNs: median(cPerPage), roundUs: medians(cUs) }, seen };
}

/** A path's cost per page the guest wrote (ns, the slope between two round sizes) and per call (us, the rest). */
function splitCost(f: PathFigures, small: number, large: number): { marginalNs: number; callUs: number } {
  const marginalNs = ((f.roundUs[large]! - f.roundUs[small]!) * 1000) / (large - small);
  return { marginalNs, callUs: f.roundUs[small]! - (marginalNs * small) / 1000 };
}

interface CBaseline { drainResetUsMedian: number; perPageNs: number; pagesPerRoundSeen: number }

function cHarvest(memBytes: number, pages: number, rounds: number, mode: 'ring' | 'bitmap', ringEntries: number): CBaseline {
  const out = execFileSync(baselineTool, ['--mem-mib', String(memBytes / MiB), '--pages', String(pages), '--rounds', String(rounds), '--mode', mode, '--ring-entries', String(ringEntries)], { encoding: 'utf8' });
  const line = out.trim().split('\n').pop()!;
  return JSON.parse(line) as CBaseline;
}

interface PauseFigures {
  p50: number; p99: number; max: number;
  /** drain = the kick, the drain and the reset (one native call). */
  drainP50: number; copyP50: number;
  drainP99: number; copyP99: number;
  /** The slowest epochs' parts, to see where a tail comes from. */
  slowest: string[];
  /** The noise floor, interleaved with the epochs: a plain copy of the same 4 MB of freshly touched memory. */
  memcpyP50: number; memcpyP99: number; memcpyMax: number;
}

async function pauseBench(epochs: number): Promise<PauseFigures> {
  const source = new KvmSource({
    slotBytes: [256 * MiB], vcpus: 1, ringEntries: 4096, workload: SEQUENTIAL, ratePagesPerSec: 0, seed: 1, maxWritesPerVcpu: 1,
  });
  const nullSink: EpochSink = { begin: () => {}, segment: () => {}, commit: () => {} };
  const cycle = new CheckpointCycle(source);
  const counters = new Float64Array(2);
  const pauses: number[] = [];
  const drains: number[] = [];
  const copies: number[] = [];
  const parts: { pause: number; text: string }[] = [];
  // Reference copy: 1000 pages from a 64 MiB buffer whose pages were each just touched, as the guest does.
  const refSrc = new Uint8Array(64 * MiB).fill(1);
  const refDst = new Uint8Array(1000 * 4096).fill(0);
  const memcpys: number[] = [];
  try {
    source.start();
    await cycle.cut(nullSink); // baseline
    let written = 1;
    for (let e = 0; e < epochs; e++) {
      source.grantWrites(1000);
      written += 1000;
      waitWritten(source.vm, written, counters);
      const c = await cycle.cut(nullSink);
      if (c.pages < 1000) throw new Error(`epoch carried ${c.pages} pages, expected >= 1000`);
      pauses.push(c.pauseUs);
      drains.push(c.drainUs);
      copies.push(c.copyUs);
      const off = ((e * 1000) % 15000) * 4096;
      for (let k = 0; k < 1000; k++) refSrc[off + k * 4096]!++;
      const t = performance.now();
      refDst.set(refSrc.subarray(off, off + refDst.byteLength));
      memcpys.push(Math.round((performance.now() - t) * 1000));
      parts.push({ pause: c.pauseUs, text: `${c.pauseUs} us = kick+drain+reset ${c.drainUs} + copy ${c.copyUs} + vCPU state ${c.pauseUs - c.drainUs - c.copyUs}` });
    }
  } finally {
    source.close();
  }
  return {
    p50: percentile(pauses, 50), p99: percentile(pauses, 99), max: Math.max(...pauses),
    drainP50: percentile(drains, 50), copyP50: percentile(copies, 50),
    drainP99: percentile(drains, 99), copyP99: percentile(copies, 99),
    memcpyP50: percentile(memcpys, 50), memcpyP99: percentile(memcpys, 99), memcpyMax: Math.max(...memcpys),
    slowest: parts.sort((a, b) => b.pause - a.pause).slice(0, 3).map((x) => x.text),
  };
}

/** Whether this process's code runs from huge pages (npm run bench:harvest passes --use-largepages=silent, as the services do). */
function codeOnHugePages(): boolean {
  try {
    return readFileSync('/proc/self/smaps', 'utf8').split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/).some((b) => / r-xp /.test(b.split('\n')[0]!) && /AnonHugePages:\s+[1-9]/.test(b));
  } catch {
    return false;
  }
}

async function main(): Promise<void> {
  const a = kvmAvailability();
  if (!a.usable) {
    say(`bench:harvest: needs real KVM and it is not usable here: ${a.reason}`);
    process.exitCode = 1;
    return;
  }
  if (!existsSync(baselineTool)) throw new Error(`the C baseline is not built (${baselineTool}): run npm run build:native`);
  const rounds = quick ? 8 : 25;
  const ring = 65536;
  const out: Record<string, unknown> = {};

  let entriesPerPage = 0;
  if (only.has(1) || only.has(2)) {
    const hugeCode = codeOnHugePages();
    say(`1/3 per-page drain+reset: Node path vs plain C loop (1 GiB guest, 1000 pages/round; 8000 for the slope; Node's code ${hugeCode ? 'on 2 MiB pages, as the services run it' : 'on 4 KiB pages: --use-largepages did not apply here'})`);
    // The comparison: the C loop on the same guest from the same thread, alternating blocks.
    // Rounds of 8000 pages too: the slope between the two sizes is a path's cost per page, the rest its
    // cost per call (for the Node path, the entry into Node-API on caches the guest has just churned).
    const SMALL = 1000;
    const LARGE = 8000;
    const same = sameGuestHarvest(GiB, [SMALL, LARGE], quick ? 20 : 60, ring);
    const nodeVsCRatio = same.node.perPageNs / same.c.perPageNs;
    const seen = same.seen;
    say(`    same guest: node ${same.node.perPageNs.toFixed(1)} ns/page (${seen} entries/round), C ${same.c.perPageNs.toFixed(1)} ns/page: ratio ${nodeVsCRatio.toFixed(2)} (target <= 1.25)`);
    const nodeSplit = splitCost(same.node, SMALL, LARGE);
    const cSplit = splitCost(same.c, SMALL, LARGE);
    const marginalRatio = nodeSplit.marginalNs / cSplit.marginalNs;
    say(`    split by round size (median ${SMALL} / ${LARGE}-page rounds: node ${same.node.roundUs[SMALL]!.toFixed(1)} / ${same.node.roundUs[LARGE]!.toFixed(1)} us, C ${same.c.roundUs[SMALL]!.toFixed(1)} / ${same.c.roundUs[LARGE]!.toFixed(1)} us): per page node ${nodeSplit.marginalNs.toFixed(1)} ns, C ${cSplit.marginalNs.toFixed(1)} ns, ratio ${marginalRatio.toFixed(2)}; per call node ${nodeSplit.callUs.toFixed(1)} us, C ${cSplit.callUs.toFixed(1)} us`);
    // The C loop in a process and guest of its own; Node and C alternate in blocks, so drift on this
    // shared machine reaches both; each side's figure is the median of its blocks' medians. Where the
    // scheduler puts each process's threads moves this one (docs/harvester.md).
    const blocks = quick ? 2 : 3;
    const nodeNs: number[] = [];
    const cNs: number[] = [];
    for (let b = 0; b < blocks; b++) {
      const [node1000] = nodeHarvest(GiB, 1000, rounds, [ring]);
      nodeNs.push((node1000!.us * 1000) / node1000!.seen);
      cNs.push(cHarvest(GiB, 1000, rounds, 'ring', ring).perPageNs);
    }
    const nodePerPageNs = median(nodeNs);
    const cPerPageNs = median(cNs);
    const nodeVsCProcessRatio = nodePerPageNs / cPerPageNs;
    say(`    C in its own process: node ${nodePerPageNs.toFixed(1)} ns/page, C ${cPerPageNs.toFixed(1)} ns/page: ratio ${nodeVsCProcessRatio.toFixed(2)} (${blocks} alternating blocks: node ${nodeNs.map((x) => x.toFixed(1)).join(', ')}; C ${cNs.map((x) => x.toFixed(1)).join(', ')})`);
    // Entries the host logs per page the guest writes (1 under the kernel's once-per-arm rule; more
    // on hosts that log every store, such as kvm-pvm). A round must fit in the ring's soft limit.
    entriesPerPage = seen / 1000;
    Object.assign(out, {
      entriesPerPage: Number(entriesPerPage.toFixed(2)),
      nodeCodeOnHugePages: hugeCode, nodeVsCRatio: Number(nodeVsCRatio.toFixed(3)), nodePerPageNs: Number(same.node.perPageNs.toFixed(1)), cPerPageNs: Number(same.c.perPageNs.toFixed(1)),
      nodeVsCMarginalRatio: Number(marginalRatio.toFixed(3)), nodeMarginalNsPerPage: Number(nodeSplit.marginalNs.toFixed(1)), cMarginalNsPerPage: Number(cSplit.marginalNs.toFixed(1)),
      nodeCallUs: Number(nodeSplit.callUs.toFixed(2)), cCallUs: Number(cSplit.callUs.toFixed(2)),
      nodeVsCProcessRatio: Number(nodeVsCProcessRatio.toFixed(3)), nodeProcessPerPageNs: Number(nodePerPageNs.toFixed(1)), cProcessPerPageNs: Number(cPerPageNs.toFixed(1)),
    });
  }

  if (only.has(2)) {
    say('2/3 ring vs bitmap (drain + reset/clear, median per round; ring and bitmap guests harvested in the same rounds)');
    say(`    this host logs ${entriesPerPage.toFixed(2)} ring entries per dirtied page`);
    const grid: Record<string, { ringUs: number | null; bitmapUs: number; ratio: number | null; cRingUs: number | null; cBitmapUs: number; note?: string }> = {};
    for (const memGiB of [1, 8]) {
      for (const pages of [100, 1000, 30000]) {
        const fits = pages * entriesPerPage * 1.1 < ring - 1024;
        // Small rounds take microseconds and this machine is noisy: take more of them for the median.
        const n = pages <= 1000 ? rounds * 4 : rounds;
        const cb = cHarvest(memGiB * GiB, pages, n, 'bitmap', ring).drainResetUsMedian;
        if (!fits) {
          const b = nodeHarvest(memGiB * GiB, pages, n, [0])[0]!.us;
          const note = `ring n/a: ${pages} pages x ${entriesPerPage.toFixed(1)} entries/page exceed the largest ring (${ring} entries) on this host`;
          grid[`${memGiB}GiB/${pages}`] = { ringUs: null, bitmapUs: b, ratio: null, cRingUs: null, cBitmapUs: cb, note };
          say(`    ${memGiB} GiB, ${String(pages).padStart(5)} pages: bitmap ${b.toFixed(1)} us; ${note}   (C: bitmap ${cb.toFixed(1)} us)`);
          continue;
        }
        // Ring and bitmap guests side by side, harvested in the same rounds.
        const [ringRun, bitmapRun] = nodeHarvest(memGiB * GiB, pages, n, [ring, 0]);
        const r = ringRun!.us;
        const b = bitmapRun!.us;
        const cr = cHarvest(memGiB * GiB, pages, n, 'ring', ring).drainResetUsMedian;
        grid[`${memGiB}GiB/${pages}`] = { ringUs: r, bitmapUs: b, ratio: b / r, cRingUs: cr, cBitmapUs: cb };
        say(`    ${memGiB} GiB, ${String(pages).padStart(5)} pages: ring ${r.toFixed(1)} us, bitmap ${b.toFixed(1)} us, bitmap/ring ${(b / r).toFixed(2)}   (C: ring ${cr.toFixed(1)} us, bitmap ${cb.toFixed(1)} us)`);
      }
    }
    out.ringVsBitmap8GiB100 = Number((grid['8GiB/100']!.ratio ?? 0).toFixed(2));
    out.ringVsBitmap = grid;
  }

  if (only.has(3)) {
    say('3/3 checkpoint pause, 256 MiB guest, 1000 dirty pages per epoch');
    const p = await pauseBench(quick ? 50 : 200);
    say(`    pause p50 ${p.p50} us, p99 ${p.p99} us, max ${p.max} us (target p99 <= 2000 us); p50 parts: kick+drain+reset ${p.drainP50} us, copy ${p.copyP50} us`);
    say(`    p99 of each part: kick+drain+reset ${p.drainP99} us, copy ${p.copyP99} us`);
    say(`    slowest: ${p.slowest.join('; ')}`);
    say(`    noise floor in this run: a plain 4 MB memcpy p50 ${p.memcpyP50} us, p99 ${p.memcpyP99} us, max ${p.memcpyMax} us; pause p99 / memcpy p99 = ${(p.p99 / p.memcpyP99).toFixed(2)}`);
    Object.assign(out, {
      pauseP50Us: p.p50, pauseP99Us: p.p99, pauseMaxUs: p.max, pauseDrainP50Us: p.drainP50, pauseCopyP50Us: p.copyP50,
      pauseDrainP99Us: p.drainP99, pauseCopyP99Us: p.copyP99,
      memcpy4MBP50Us: p.memcpyP50, memcpy4MBP99Us: p.memcpyP99, pauseP99VsMemcpyP99: Number((p.p99 / p.memcpyP99).toFixed(2)),
    });
  }

  if (json) process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err: unknown) => {
  say(`bench:harvest: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});
