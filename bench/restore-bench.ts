/**
 * `npm run bench:restore [-- --json] [-- --quick]`: what a failover costs.
 *
 * 1. Restore throughput from Redis into memory (fenced read, digest recomputed, pages copied into one
 *    buffer per slot) of a 256 MiB image of incompressible pages, in MB/s, against `redis-benchmark
 *    -t set,get -d 4096 -P 32` (its GET line) on the same redis-server in the same run: `ratioToRedisGet` (target
 *    restore >= 500 MB/s).
 * 2. RTO of a 256 MiB real guest (simulator when KVM is not usable): `npm run drill` runs with
 *    kill -9 of the primary; from the kill to the restored guest running on a fresh VM (target < 2 s).
 * 3. RPO with 25 ms epochs, from the same drills: guest time lost, in epochs (target <= 2).
 */
import { randomFillSync } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { Redis } from 'ioredis';
import { pageHash, percentile } from '@ckpt/common';
import { runDrill } from '@ckpt/drill';
import { RedisServer } from '@ckpt/embedded';
import { restoreImage, type ImageLayout, type RestoreTarget } from '@ckpt/restorer';
import { CHUNK_PAGES, ChunkDigest, hashValue, pageField, StandbyStore } from '@ckpt/standby';
import { benchArgs } from './bench-args.ts';

const { json, quick } = benchArgs('bench:restore');
const say = (s: string): void => void process.stderr.write(s + '\n');

const PAGE = 4096;
const MEM = 256 * 2 ** 20;

/** Copies the image into one buffer per slot (the "into memory" of the target). */
class DenseTarget implements RestoreTarget {
  slots: Uint8Array[] = [];
  private ps = PAGE;
  open(l: ImageLayout): void {
    this.ps = l.pageSize;
    if (this.slots.length !== l.slots.length) this.slots = l.slots.map((s) => new Uint8Array(s.pages * l.pageSize));
  }
  write(slot: number, firstPage: number, bytes: Uint8Array): void { this.slots[slot]!.set(bytes, firstPage * this.ps); }
  finish(): void {}
  abort(): void {}
}

/** A committed 256 MiB image of random pages, written straight into the standby layout. */
async function seedImage(redis: Redis, store: StandbyStore, vm: string): Promise<void> {
  const k = store.keys(vm);
  const d = new ChunkDigest(vm, PAGE);
  const chunk = new Uint8Array(CHUNK_PAGES * PAGE);
  const words = new Uint32Array(chunk.buffer);
  const out = new Uint32Array(2);
  const chunks = MEM / chunk.byteLength;
  for (let c = 0; c < chunks; c++) {
    randomFillSync(chunk);
    d.add(0, c, chunk);
    const pages: (string | Buffer)[] = [];
    const hashes: (string | Buffer)[] = [];
    for (let p = 0; p < CHUNK_PAGES; p++) {
      const gfn = c * CHUNK_PAGES + p;
      pageHash(words, p * (PAGE >>> 2), PAGE >>> 2, 0, gfn, out);
      pages.push(k.page(1, 0, gfn), Buffer.from(chunk.subarray(p * PAGE, (p + 1) * PAGE)));
      hashes.push(pageField(0, gfn), hashValue(out[0]!, out[1]!));
    }
    await redis.mset(...pages);
    await redis.hset(k.hashes(1), ...hashes);
  }
  await redis.hset(k.meta, 'generation', '1', 'epoch', '0', 'digest', d.digest.toHex(), 'state', 'ok', 'pageSize', String(PAGE),
    'slots', JSON.stringify([{ id: 0, pages: MEM / PAGE }]), 'vcpus', '0', 'guestCounters', '[]', 'committedAtMs', String(Date.now()));
}

async function restoreThroughput(): Promise<{ restoreMBps: number; redisGetMBps: number; runs: number[] }> {
  const server = await RedisServer.start();
  const redis = new Redis(server.port, '127.0.0.1');
  try {
    const store = new StandbyStore(redis);
    await seedImage(redis, store, 'bench-vm');
    const target = new DenseTarget();
    // One warm-up restore (JIT, buffers), not counted: a restorer service restores warm.
    await restoreImage(store, 'bench-vm', target);
    const runs: number[] = [];
    for (let i = 0; i < (quick ? 3 : 7); i++) {
      const img = await restoreImage(store, 'bench-vm', target);
      runs.push(img.mbps);
    }
    // SET first, so GET reads a 4 KiB value (the benchmark's key is fixed without -r).
    const text = execFileSync('redis-benchmark', ['-p', String(server.port), '-t', 'set,get', '-d', '4096', '-P', '32', '-n', quick ? '50000' : '200000', '-q', '--csv'], { encoding: 'utf8' });
    const line = text.split('\n').find((l) => l.startsWith('"GET"'));
    const rps = line ? Number(line.split(',')[1]!.replace(/"/g, '')) : NaN;
    return { restoreMBps: percentile(runs, 50), redisGetMBps: Number(((rps * 4096) / 1e6).toFixed(1)), runs };
  } finally {
    redis.disconnect();
    await server.stop();
  }
}

say('bench:restore: 1/2 restore throughput of a 256 MiB image from Redis into memory');
const t = await restoreThroughput();
const ratio = Number((t.restoreMBps / t.redisGetMBps).toFixed(3));
say(`  restore ${t.restoreMBps} MB/s (median of ${t.runs.join(', ')}); redis-benchmark GET 4 KiB -P 32: ${t.redisGetMBps} MB/s; ratio ${ratio} (target restore >= 500 MB/s: ${t.restoreMBps >= 500 ? 'met' : 'MISSED'})`);

say('bench:restore: 2/2 drills: 256 MiB guest, 25 ms epochs, kill -9 of the primary');
const drill = await runDrill({
  scenarios: Array.from({ length: quick ? 1 : 3 }, () => 'primary-crash' as const), source: 'auto', memMib: 256, vcpus: 2, rate: 2000, intervalMs: 25, runS: quick ? 2 : 4, seed: 7,
  onPhase: () => undefined,
});
for (const s of drill.scenarios) say(`  ${s.verified ? 'verified' : 'FAILED'}: RTO ${s.rtoMs} ms, RPO ${s.rpoMs} ms = ${s.rpoEpochs} epochs, restore ${s.restoreMBps} MB/s${s.problems.length ? ': ' + s.problems.join('; ') : ''}`);
if (!drill.verified) {
  say('bench:restore: a drill did not verify; no figures for RTO and RPO');
  process.exit(1);
}
// A verified scenario measured both.
const rtoMs = percentile(drill.scenarios.map((s) => s.rtoMs ?? NaN), 50);
const rpoEpochs = Math.max(...drill.scenarios.map((s) => s.rpoEpochs ?? NaN));
say(`  ${drill.source} guest: RTO median ${rtoMs} ms (target < 2000: ${rtoMs < 2000 ? 'met' : 'MISSED'}); RPO worst ${rpoEpochs} epochs (target <= 2: ${rpoEpochs <= 2 ? 'met' : 'MISSED'})`);
if (json) {
  process.stdout.write(JSON.stringify({
    restoreMBps: t.restoreMBps, redisGetMBps: t.redisGetMBps, ratioToRedisGet: ratio, restoreRuns: t.runs,
    source: drill.source, rtoMs, rtoRunsMs: drill.scenarios.map((s) => s.rtoMs), rpoEpochs, rpoRunsMs: drill.scenarios.map((s) => s.rpoMs),
    drillRestoreMBps: drill.scenarios.map((s) => s.restoreMBps),
  }) + '\n');
}
