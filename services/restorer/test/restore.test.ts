/**
 * The restorer against a real redis-server: images built by the replicator's Applier come back byte
 * for byte with their epoch named; stale, corrupted and torn images are refused (negative tests); the
 * fence keeps the replicator from applying while an image is read; a multi-GiB sparse simulator guest
 * restores through the whole harvest → apply → restore path.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createServer } from 'node:net';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Producer } from 'kafkajs';
import { CkptError, createLogger, silentLogger, type SparseImage } from '@ckpt/common';
import { freePort, RedisServer } from '@ckpt/embedded';
import { redisForTests } from '@ckpt/embedded/test-support';
import { KafkaPublisher, openSource, runHarvest, ShadowVerifier, type EpochCommit } from '@ckpt/harvester';
import { Applier, createReplicatorMetrics } from '@ckpt/replicator';
import { StandbyStore } from '@ckpt/standby';
import { FakeHarvester, PAGE, SLOT_PAGES } from '../../replicator/test/fake-harvester.ts';
import { needKvm } from '@ckpt/kvm-native/test-support';
import { createRestorerMetrics, FileTarget, KvmTarget, restoreImage, SparseTarget, watchRunning } from '../src/index.ts';

let store: StandbyStore;
const db = redisForTests(({ redis }) => { store = new StandbyStore(redis); });

function applier(): Applier {
  return new Applier(store, { deadLetter: () => Promise.resolve(), requestResync: () => Promise.resolve(), processed: () => undefined },
    createReplicatorMetrics(), silentLogger, { maxRecordBytes: 64 << 20, resyncRetryMs: 1000 });
}

/** A baseline and one delta of `vm`, applied; returns the harvester (its model is the committed image). */
async function buildImage(vm: string, generation: number): Promise<FakeHarvester> {
  const h = new FakeHarvester(vm, generation);
  const a = applier();
  for (const rec of h.epochRecords(new Map([[1, 1], [2, 2], [300, 3], [700, 4], [1023, 5]]))) await a.handle(rec, vm);
  for (const rec of h.epochRecords(new Map([[2, 9], [300, 0], [512, 6]]))) await a.handle(rec, vm);
  return h;
}

function assertSameImage(got: SparseImage, want: SparseImage, slotPages: number): void {
  const zero = new Uint8Array(PAGE);
  for (let g = 0; g < slotPages; g++) {
    const a = got.page(0, g) ?? zero;
    const b = want.page(0, g) ?? zero;
    assert.equal(Buffer.compare(a, b), 0, `page ${g} differs`);
  }
  assert.equal(got.digest().toHex(), want.digest().toHex());
}

async function rejects(p: Promise<unknown>, code: string): Promise<CkptError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof CkptError, String(err));
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected ${code}`);
}

test('an applied image comes back byte for byte, with its epoch, vCPU state and counters', async () => {
  const h = await buildImage('vm-a', 4);
  const t = new SparseTarget();
  const metrics = createRestorerMetrics();
  const img = await restoreImage(store, 'vm-a', t, { metrics });
  assert.equal(img.generation, 4);
  assert.equal(img.epoch, 1);
  assert.equal(img.state, 'ok');
  assert.equal(img.digest, h.model.digest().toHex());
  assert.deepEqual(img.vcpuStates.map((b) => [...b]), [[1, 2, 3]]);
  assert.deepEqual(img.guestCounters, [1, 2]);
  assert.equal(img.imageBytes, SLOT_PAGES * PAGE);
  assert.equal(img.fenceWaitMs, 0, 'a free fence is no wait');
  assertSameImage(t.image!, h.model, SLOT_PAGES);
  assert.equal(t.restored, img);
  assert.equal(await db.redis.exists(store.keys('vm-a').fence), 0, 'the fence is released');
  const text = await metrics.registry.metrics();
  assert.match(text, /ckpt_restorer_restores_total\{outcome="ok"\} 1/);
  assert.match(text, new RegExp(`ckpt_restorer_bytes_total ${SLOT_PAGES * PAGE}`));
  // The gauges the dashboards read (a failover restore usually ends before the first scrape).
  const endedAt = Number(/^ckpt_restorer_last_restore_end_timestamp_seconds\{outcome="ok"\} (\S+)$/m.exec(text)?.[1]);
  assert.ok(Math.abs(endedAt - Date.now() / 1000) < 60, `ended at ${endedAt}`);
  assert.match(text, /^ckpt_restorer_last_restore_end_timestamp_seconds\{outcome="error"\} 0$/m);
  assert.ok(Number(/^ckpt_restorer_last_restore_duration_seconds (\S+)$/m.exec(text)?.[1]) > 0);
});

test('raw slot files and the vCPU state JSON, written only once verified', async () => {
  const h = await buildImage('vm-f', 2);
  const dir = mkdtempSync(join(tmpdir(), 'ckpt-restore-'));
  try {
    // Left by a restore killed with kill -9 (one of a slot the image does not have), and another VM's.
    for (const f of ['vm-f.slot7.raw.partial', 'vm-f.vcpus.json.partial', 'vm-fx.slot0.raw.partial', 'vm-f.slot0.raw.partial.keep']) writeFileSync(join(dir, f), 'x');
    const t = new FileTarget(dir);
    await restoreImage(store, 'vm-f', t);
    assert.deepEqual(readdirSync(dir).sort(), ['vm-f.slot0.raw', 'vm-f.slot0.raw.partial.keep', 'vm-f.vcpus.json', 'vm-fx.slot0.raw.partial'], 'this VM\'s leftovers removed, nothing else');
    const raw = readFileSync(join(dir, 'vm-f.slot0.raw'));
    assert.equal(raw.byteLength, SLOT_PAGES * PAGE);
    for (let g = 0; g < SLOT_PAGES; g++) {
      const want = h.model.page(0, g) ?? new Uint8Array(PAGE);
      assert.equal(Buffer.compare(raw.subarray(g * PAGE, (g + 1) * PAGE), want), 0, `page ${g}`);
    }
    const st = JSON.parse(readFileSync(join(dir, 'vm-f.vcpus.json'), 'utf8')) as { generation: number; epoch: number; vcpuStates: string[]; digest: string };
    assert.equal(st.generation, 2);
    assert.equal(st.epoch, 1);
    assert.equal(st.digest, h.model.digest().toHex());
    assert.deepEqual([...Buffer.from(st.vcpuStates[0]!, 'base64')], [1, 2, 3]);
    assert.deepEqual(readdirSync(dir).filter((f) => f.startsWith('vm-f.') && f.endsWith('.partial')), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a stale image is refused unless the caller takes the newest verified epoch', async () => {
  const h = await buildImage('vm-s', 3);
  await store.markStale('vm-s', 'missing-epoch: test');
  const metrics = createRestorerMetrics();
  const err = await rejects(restoreImage(store, 'vm-s', new SparseTarget(), { metrics }), 'CKPT_ERR_RESTORE_STALE');
  assert.match(err.message, /stale \(missing-epoch: test\).*epoch 3\/1.*--allow-stale/);
  assert.match(await metrics.registry.metrics(), /ckpt_restorer_restores_total\{outcome="refused-stale"\} 1/);
  const t = new SparseTarget();
  const img = await restoreImage(store, 'vm-s', t, { allowStale: true });
  assert.equal(img.state, 'stale');
  assertSameImage(t.image!, h.model, SLOT_PAGES);
});

test('a standby record edited into nonsense: refused naming the key and the field (it failed with "l.slots is not iterable" and a stack)', async () => {
  await buildImage('vm-bad', 2);
  await db.redis.hset(store.keys('vm-bad').meta, 'slots', '{"id":0}');
  const err = await rejects(restoreImage(store, 'vm-bad', new SparseTarget()), 'CKPT_ERR_STANDBY_CORRUPT');
  assert.match(err.message, /the standby record of vm-bad \(ckpt:\{vm-bad\}:meta\) is unusable: slots is not a list of slots/);
  assert.equal(await db.redis.exists(store.keys('vm-bad').fence), 0, 'the fence is released');
});

test('no image: a clear error', async () => {
  await rejects(restoreImage(store, 'vm-none', new SparseTarget()), 'CKPT_ERR_RESTORE_NO_IMAGE');
});

test('NEGATIVE: an image corrupted behind the replicator\'s back is refused, and no file is left', async () => {
  await buildImage('vm-c', 5);
  await db.redis.setrange(store.keys('vm-c').page(5, 0, 700), 17, 'Z');
  const dir = mkdtempSync(join(tmpdir(), 'ckpt-restore-'));
  const metrics = createRestorerMetrics();
  try {
    const err = await rejects(restoreImage(store, 'vm-c', new FileTarget(dir), { metrics }), 'CKPT_ERR_RESTORE_DIGEST');
    assert.match(err.message, /does not verify.*epoch 5\/1.*every page it lists is there, so page bytes were changed; refusing/);
    assert.deepEqual(readdirSync(dir), [], 'nothing written survives a refused restore');
    const text = await metrics.registry.metrics();
    assert.match(text, /ckpt_restorer_restores_total\{outcome="refused-digest"\} 1/);
    assert.doesNotMatch(text, /^ckpt_restorer_last_restore_end_timestamp_seconds\{outcome="refused-digest"\} 0$/m, 'a refused restore has an end time too');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('NEGATIVE: a vCPU state changed behind the replicator\'s back is refused before a page is read; an image applied before vCPU digests existed still restores', async () => {
  const h = await buildImage('vm-v', 6);
  const meta = store.keys('vm-v').meta;
  assert.match(String(await db.redis.hget(meta, 'vcpuDigest')), /^[0-9a-f]{64}$/, 'the apply stores the digest of the vCPU states');
  const state = await db.redis.hgetBuffer(meta, 'vcpu:0');
  assert.ok(state && state.length > 0);
  const flipped = Buffer.from(state);
  flipped[1]! ^= 0x40;
  await db.redis.hset(meta, 'vcpu:0', flipped);
  const target = new SparseTarget();
  const err = await rejects(restoreImage(store, 'vm-v', target), 'CKPT_ERR_RESTORE_DIGEST');
  assert.match(err.message, /the vCPU state of vm-v's standby image does not verify.*epoch 6\/1/);
  assert.equal(target.image, null, 'refused before the target was opened');
  // As applied before 2026-11-25: no vcpuDigest field; nothing to check the states against.
  await db.redis.hset(meta, 'vcpu:0', state);
  await db.redis.hdel(meta, 'vcpuDigest');
  const img = await restoreImage(store, 'vm-v', new SparseTarget());
  assert.equal(img.digest, h.model.digest().toHex());
  assert.equal(img.vcpuVerified, false, 'said, not a silent downgrade');
});

/** An image of 4 chunks whose next epoch (changing the first and last chunk) is staged, waiting for its commit. */
async function imageWithPendingEpoch(vm: string): Promise<{ h: FakeHarvester; before: string; commit: () => Promise<void> }> {
  const h = await buildImage(vm, 7);
  const before = h.model.digest().toHex();
  const a = applier();
  const recs = h.epochRecords(new Map([[3, 0x31], [1020, 0x32]]));
  for (const rec of recs.slice(0, -1)) await a.handle(rec, vm);
  return { h, before, commit: async () => { await a.handle(recs.at(-1)!, vm); } };
}

test('NEGATIVE: without the fence, an epoch applied mid-read gives a torn image, which the digest check refuses', async () => {
  const { commit } = await imageWithPendingEpoch('vm-t');
  let applied = false;
  const err = await rejects(restoreImage(store, 'vm-t', new SparseTarget(), {
    unsafeNoFence: true, window: 1,
    afterWindow: async () => { if (!applied) { applied = true; await commit(); } },
  }), 'CKPT_ERR_RESTORE_DIGEST');
  assert.match(err.message, /epoch 7\/1/);
  assert.equal((await store.readMeta('vm-t'))!.epoch, 2, 'the epoch really was applied during the read');
});

test('the fence holds the replicator back while an image is read: the restore is one committed epoch', async () => {
  const { h, before, commit } = await imageWithPendingEpoch('vm-g');
  let tried: Promise<void> | null = null;
  const t = new SparseTarget();
  const img = await restoreImage(store, 'vm-g', t, {
    window: 1,
    afterWindow: async () => {
      if (tried) return;
      // The replicator tries to apply: the script answers FENCED and the Applier asks to retry later.
      tried = commit();
      await new Promise((r) => setTimeout(r, 50));
    },
  });
  assert.equal(img.epoch, 1);
  assert.equal(img.digest, before);
  assert.equal((await store.readMeta('vm-g'))!.epoch, 1, 'nothing was applied while fenced');
  await (tried as Promise<void> | null);
  // Fence released: the same commit now applies.
  await commit();
  const m = await store.readMeta('vm-g');
  assert.equal(m!.epoch, 2);
  assert.equal(m!.digest, h.model.digest().toHex());
});

test('a fence held by another restorer: waits, then says so', async () => {
  await buildImage('vm-b', 1);
  assert.ok(await store.acquireFence('vm-b', 'someone-else', 5000));
  try {
    const err = await rejects(restoreImage(store, 'vm-b', new SparseTarget(), { fenceWaitMs: 300 }), 'CKPT_ERR_RESTORE_BUSY');
    assert.equal(err.retriable, true);
    assert.match(err.message, /still held by someone-else after waiting 0\.3 s; .*expires by itself in 4\.\d s; .*npm run standby -- unfence --vm vm-b/);
    assert.ok(Number(err.context.fenceWaitMs) >= 300, `the wait is in the error: ${String(err.context.fenceWaitMs)}`);
  } finally {
    await store.releaseFence('vm-b', 'someone-else');
  }
  assert.equal(await db.redis.exists(store.keys('vm-b').fence), 0);
});

test('a fence held for a while by someone else: one log line naming the holder, and the wait is not restore time', async () => {
  await buildImage('vm-w', 2);
  assert.ok(await store.acquireFence('vm-w', 'forget-4242-1', 60_000));
  const release = setTimeout(() => { void store.releaseFence('vm-w', 'forget-4242-1'); }, 800);
  const lines: string[] = [];
  const log = createLogger({ service: 'restorer' }, { level: 'warn', write: (l) => lines.push(l) });
  const metrics = createRestorerMetrics();
  try {
    const img = await restoreImage(store, 'vm-w', new SparseTarget(), { log, metrics });
    assert.ok(img.fenceWaitMs >= 700, `the wait is reported: ${img.fenceWaitMs} ms`);
    assert.ok(img.durationMs < 500, `the restore time excludes the wait: ${img.durationMs} ms`);
    const sum = Number(/^ckpt_restorer_duration_seconds_sum (\S+)$/m.exec(await metrics.registry.metrics())?.[1]);
    assert.ok(sum < 0.5, `the duration histogram excludes the wait: ${sum} s`);
  } finally {
    clearTimeout(release);
  }
  assert.equal(lines.length, 1, lines.join('\n'));
  const rec = JSON.parse(lines[0]!) as { level: string; msg: string; holder: string; maxWaitMs: number };
  assert.equal(rec.level, 'warn');
  assert.match(rec.msg, /vm-w is fenced by forget-4242-1 \(for \d+\.\d s more.*\): waiting up to 30 s/);
  assert.equal(rec.holder, 'forget-4242-1');
  assert.equal(rec.maxWaitMs, 30_000);
});

test('an interrupted restore (SIGINT, SIGTERM) stops between reads: the fence released, no file and no directory of its own left', async () => {
  await buildImage('vm-int', 3);
  const parent = mkdtempSync(join(tmpdir(), 'ckpt-restore-'));
  const dir = join(parent, 'new', 'out');
  const abort = new AbortController();
  try {
    // One chunk per round trip: four windows; the signal comes after the first.
    const err = await rejects(restoreImage(store, 'vm-int', new FileTarget(dir), { window: 1, signal: abort.signal, afterWindow: () => { abort.abort('SIGTERM'); return Promise.resolve(); } }),
      'CKPT_ERR_RESTORE_INTERRUPTED');
    assert.equal(err.retriable, true);
    assert.match(err.message, /the restore of vm-int was interrupted \(SIGTERM\)/);
    assert.equal(await db.redis.exists(store.keys('vm-int').fence), 0, 'the fence is released');
    assert.deepEqual(readdirSync(parent), [], 'the directories it made are gone, with the .partial file');
  } finally {
    rmSync(parent, { recursive: true, force: true });
  }
});

test('an output file that cannot be sized (a slot beyond the file system) leaves nothing behind', () => {
  const parent = mkdtempSync(join(tmpdir(), 'ckpt-restore-'));
  try {
    const t = new FileTarget(join(parent, 'out'));
    assert.throws(() => t.open({ vm: 'vm-big', pageSize: PAGE, slots: [{ id: 0, pages: 2 ** 50 }], vcpus: 0, vcpuStateBytes: 0 }),
      (e: CkptError) => e.code === 'CKPT_ERR_RESTORE_OUTPUT' && /cannot size .*vm-big\.slot0\.raw\.partial to slot 0's 1125899906842624 pages/.test(e.message));
    assert.deepEqual(readdirSync(parent), []);
  } finally {
    rmSync(parent, { recursive: true, force: true });
  }
});

test('real KVM: an image whose vCPU state this host cannot load is refused before a page is read', async (t) => {
  if (!needKvm(t)) return;
  await buildImage('vm-st', 5); // the fake harvester's vCPU state is 3 bytes
  const target = new KvmTarget();
  let windows = 0;
  const err = await rejects(restoreImage(store, 'vm-st', target, { afterWindow: () => { windows++; return Promise.resolve(); } }), 'CKPT_ERR_RESTORE_LAYOUT');
  assert.match(err.message, /the image's vCPU state is 3 bytes per vCPU, and this host's KVM helper saves and loads \d+: .*--out DIR/);
  assert.equal(target.vm, null, 'the VM it made is destroyed');
  assert.equal(windows, 0, 'no page was read');
});

/**
 * Harvests a guest for a baseline and `epochs` more, applying every record straight to Redis (Kafka is
 * not the subject here; the pipeline tests cover it). Returns the harvester's shadow and last commit.
 */
async function harvestIntoRedis(vm: string, src: Parameters<typeof openSource>[0], epochs: number): Promise<{ shadow: ShadowVerifier; last: EpochCommit }> {
  const a = applier();
  const producer = { send: async (r: { messages: { key: string; value: Buffer }[] }) => { for (const m of r.messages) assert.equal(await a.handle(m.value, m.key), 'done'); return []; } } as unknown as Producer;
  const { source } = openSource(src);
  const shadow = new ShadowVerifier(source);
  const publisher = new KafkaPublisher({ producer, topic: 't', vm, maxRecordBytes: 1_000_000, compression: 'none', maxInFlightBytes: 8 << 20, windowBytes: 0, publishTimeoutMs: 10_000, log: silentLogger });
  let last: EpochCommit | null = null;
  try {
    const s = await runHarvest(source, { epochs, intervalMs: 30, sinks: [shadow, publisher], cycle: { generation: 11 }, onEpoch: (c) => { last = c; } });
    assert.ok(s.pagesHarvested > 500, `pages were dirtied: ${s.pagesHarvested}`);
    assert.equal(s.vcpuError, null);
  } finally {
    source.close();
  }
  return { shadow, last: last! };
}

const guest = { devPath: '/dev/kvm', slots: 1, workload: 'random', seed: 3, hotPages: 256, hotPercent: 90, ringEntries: 65536 } as const;

test('real KVM: a restored guest resumes on a fresh VM and its progress counters advance from the epoch', async (t) => {
  if (!needKvm(t)) return;
  const { last } = await harvestIntoRedis('vm-kvm', { ...guest, source: 'kvm', memMib: 64, vcpus: 2, rate: 20000, fill: false }, 5);
  const target = new KvmTarget();
  try {
    const img = await restoreImage(store, 'vm-kvm', target);
    assert.equal(img.digest, last.digest);
    assert.equal(img.guestCounters.length, 4, 'two vCPUs, two counters each');
    // resume(): no vCPU error, and every vCPU's pages-written counter moved past the epoch's.
    const r = await target.resume(150);
    assert.equal(r.running, true, `resumed guest advanced: ${r.detail}`);
    assert.equal(target.vm!.lastError(), null);
  } finally {
    target.vm?.destroy();
  }
});

test('real KVM: the failover service (RESTORER_* env, --keep-running) runs the restored guest, is ready only then, and stops on SIGTERM', async (t) => {
  if (!needKvm(t)) return;
  await harvestIntoRedis('vm-fo', { ...guest, source: 'kvm', memMib: 32, vcpus: 1, rate: 20000, fill: false }, 3);
  const port = await freePort();
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('../src/main.ts', import.meta.url))], {
    env: { ...process.env, RESTORER_VM: 'vm-fo', RESTORER_REDIS_URL: db.server.url, RESTORER_RESUME_MS: '150', RESTORER_KEEP_RUNNING: 'true', RESTORER_METRICS_PORT: String(port) },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr.on('data', (d: Buffer) => { log += d.toString(); });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  try {
    const base = `http://127.0.0.1:${port}`;
    let ready = 0;
    for (const deadline = Date.now() + 30_000; Date.now() < deadline && ready !== 200;) {
      ready = await fetch(`${base}/readyz`).then((r) => r.status, () => 0);
      if (ready !== 200) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(ready, 200, `ready once the guest runs; log: ${log}`);
    assert.match(log, /running \(pages written per vCPU/);
    const text = await (await fetch(`${base}/metrics`)).text();
    assert.match(text, /^ckpt_restorer_restores_total\{outcome="ok"\} 1$/m);
    assert.match(text, /^ckpt_restorer_resume_checks_total\{result="running"\} 1$/m);
    assert.match(text, /^ckpt_restorer_last_resume_running 1$/m);
    assert.ok(Number(/^ckpt_restorer_throughput_bytes_per_second (\S+)$/m.exec(text)?.[1]) > 0, 'throughput recorded');
    assert.match(text, /^process_cpu_seconds_total /m, 'process metrics on');
  } finally {
    child.kill('SIGTERM');
  }
  assert.equal(await exited, 0, log);
  assert.match(log, /stopped; the guest was paused/);
  assert.equal(await db.redis.exists(store.keys('vm-fo').runClaim), 0, 'the run claim is released once the guest is gone');
});

test('real KVM: a second --keep-running restorer of the same VM refuses to run it (ALREADY_RUNNING), and one whose run claim is taken stops its guest (CLAIM_LOST)', { timeout: 90_000 }, async (t) => {
  if (!needKvm(t)) return;
  await harvestIntoRedis('vm-two', { ...guest, source: 'kvm', memMib: 32, vcpus: 1, rate: 20000, fill: false }, 3);
  const env = { ...process.env, RESTORER_VM: 'vm-two', RESTORER_REDIS_URL: db.server.url, RESTORER_RESUME_MS: '150', RESTORER_KEEP_RUNNING: 'true', RESTORER_RUN_CLAIM_TTL_MS: '1000' };
  const port = await freePort();
  const first = spawn(process.execPath, ['--import', 'tsx', MAIN], { env: { ...env, RESTORER_METRICS_PORT: String(port) }, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  first.stderr.on('data', (d: Buffer) => { log += d.toString(); });
  const exited = new Promise<number | null>((r) => first.once('exit', (code) => r(code)));
  try {
    let ready = 0;
    for (const deadline = Date.now() + 30_000; Date.now() < deadline && ready !== 200;) {
      ready = await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.status, () => 0);
      if (ready !== 200) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(ready, 200, `the first runs the guest; log: ${log}`);
    assert.match(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text(), /^ckpt_restorer_run_claim_held 1$/m);
    const holder = await db.redis.get(store.keys('vm-two').runClaim);
    assert.match(String(holder), /^run-/);

    // A second failover pod (its node was declared lost while the first still runs): it waits for the
    // claim to expire, sees it renewed, and never restores or runs the guest.
    const second = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const c = spawn(process.execPath, ['--import', 'tsx', MAIN, '--json'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      c.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
      c.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
      c.once('exit', (code) => resolve({ code, stdout, stderr }));
    });
    assert.equal(second.code, 1, second.stderr);
    assert.equal((JSON.parse(second.stdout.trim().split('\n').at(-1)!) as { code: string }).code, 'CKPT_ERR_RESTORE_ALREADY_RUNNING', second.stderr);
    assert.match(second.stderr, new RegExp(`claimed by ${holder}.*waiting up to 3\\.0 s`));
    assert.doesNotMatch(second.stderr, /resumed for/, 'the second never ran the guest');
    assert.equal(await db.redis.get(store.keys('vm-two').runClaim), holder, 'the first keeps its claim');

    // The claim taken over (as by a restorer that reached Redis while the first could not): the first
    // stops its guest within a renewal.
    await db.redis.set(store.keys('vm-two').runClaim, 'run-elsewhere-1-abc', 'PX', 60_000);
    const code = await Promise.race([exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 10_000))]);
    assert.equal(code, 1, `the first stopped; log: ${log}`);
    assert.match(log, /another restorer \(run-elsewhere-1-abc\) took the run claim of vm-two's guest while the guest ran here: it was paused and its VM destroyed.*\[CKPT_ERR_RESTORE_CLAIM_LOST\]/);
    assert.equal(await db.redis.get(store.keys('vm-two').runClaim), 'run-elsewhere-1-abc', 'the new holder\'s claim is not released by the loser');
  } finally {
    first.kill('SIGTERM');
    await db.redis.del(store.keys('vm-two').runClaim);
  }
});

test('real KVM: a restored guest that does not run is not counted as running, and SIGTERM ends a long --resume-ms check at once (INTERRUPTED, exit 143, metrics written)', { timeout: 90_000 }, async (t) => {
  if (!needKvm(t)) return;
  await harvestIntoRedis('vm-nr', { ...guest, source: 'kvm', memMib: 32, vcpus: 1, rate: 20000, fill: false }, 3);
  const dir = mkdtempSync(join(tmpdir(), 'ckpt-restore-'));
  const metricsFile = join(dir, 'restore.prom');
  try {
    // SIGTERM two seconds into a 60 s check: it waited out the whole check, past the 10 s hard exit,
    // with no JSON line and no metrics file.
    const t0 = Date.now();
    const run = restoreCliAsync(['--vm', 'vm-nr', '--redis-url', db.server.url, '--resume-ms', '60000', '--json', '--metrics-file', metricsFile]);
    await new Promise((r) => setTimeout(r, 2500));
    run.child.kill('SIGTERM');
    const r = await run.done;
    assert.equal(r.code, 143, r.stderr);
    assert.ok(Date.now() - t0 < 9000, `stopped at once, not at the 10 s hard exit (${Date.now() - t0} ms)`);
    assert.equal((JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { code: string }).code, 'CKPT_ERR_RESTORE_INTERRUPTED', r.stderr);
    assert.match(r.stderr, /interrupted \(SIGTERM\) while its guest was being checked/, 'the signal came during the check');
    assert.match(readFileSync(metricsFile, 'utf8'), /^ckpt_restorer_last_resume_running -1$/m, 'metrics written; no check finished');

    // A vCPU state the guest cannot run from (zeroed: real mode at 0, no progress), with the digest of the
    // states removed as in an image applied before they existed: the image verifies, the guest does not run.
    const meta = store.keys('vm-nr').meta;
    const state = await db.redis.hgetBuffer(meta, 'vcpu:0');
    await db.redis.hset(meta, 'vcpu:0', Buffer.alloc(state!.length));
    await db.redis.hdel(meta, 'vcpuDigest');
    const bad = restoreCli(['--vm', 'vm-nr', '--redis-url', db.server.url, '--resume-ms', '200', '--json', '--metrics-file', metricsFile]);
    assert.equal(bad.status, 1, String(bad.stderr));
    assert.equal(lastJson(bad).code, 'CKPT_ERR_RESTORE_NOT_RUNNING');
    assert.match(String(bad.stderr), /restore: FAILED: the restored guest did not make progress: .* \[CKPT_ERR_RESTORE_NOT_RUNNING\]/, 'the runbook reads the code from this line');
    const text = readFileSync(metricsFile, 'utf8');
    assert.match(text, /^ckpt_restorer_resume_checks_total\{result="not-running"\} 1$/m);
    assert.match(text, /^ckpt_restorer_resume_checks_total\{result="running"\} 0$/m);
    assert.match(text, /^ckpt_restorer_last_resume_running 0$/m);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a 4 GiB sparse simulator guest: harvested, applied, restored to memory and to a sparse file', async () => {
  const vm = 'vm-big';
  const { shadow, last: commit } = await harvestIntoRedis(vm, { ...guest, source: 'sim', memMib: 4096, vcpus: 1, rate: 3000, fill: true }, 4);
  const last = commit.digest;
  const t = new SparseTarget();
  const img = await restoreImage(store, vm, t);
  assert.equal(img.imageBytes, 4 * 2 ** 30);
  assert.equal(img.generation, 11);
  assert.equal(img.epoch, 4);
  assert.equal(img.digest, last);
  const want = shadow.shadow;
  assert.equal(t.image!.populatedCount, [...want.populated(0)].filter((g) => want.page(0, g)!.some((b) => b !== 0)).length);
  for (const g of want.populated(0)) assert.equal(Buffer.compare(t.image!.page(0, g) ?? new Uint8Array(PAGE), want.page(0, g)!), 0, `page ${g}`);
  const dir = mkdtempSync(join(tmpdir(), 'ckpt-restore-'));
  try {
    // The output directory need not exist yet.
    await restoreImage(store, vm, new FileTarget(join(dir, 'new', 'dir')));
    const f = join(dir, 'new', 'dir', `${vm}.slot0.raw`);
    assert.ok(existsSync(f));
    const st = statSync(f);
    assert.equal(st.size, 4 * 2 ** 30);
    assert.ok(st.blocks * 512 < 256 << 20, `the raw image is sparse (${st.blocks * 512} bytes allocated)`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('NEGATIVE: npm run restore exits 1 and says FAILED on a corrupted image; 0 with files on a good one', async () => {
  const main = fileURLToPath(new URL('../src/main.ts', import.meta.url));
  const dir = mkdtempSync(join(tmpdir(), 'ckpt-restore-'));
  try {
    await buildImage('vm-cli', 3);
    const prom = join(dir, 'restore.prom');
    const run = (): ReturnType<typeof spawnSync> => spawnSync(process.execPath, ['--import', 'tsx', main, '--vm', 'vm-cli', '--redis-url', db.server.url, '--out', dir, '--json', '--metrics-file', prom], { encoding: 'utf8' });
    const good = run();
    assert.equal(good.status, 0, String(good.stderr));
    assert.match(readFileSync(prom, 'utf8'), /ckpt_restorer_restores_total\{outcome="ok"\} 1/);
    assert.equal((JSON.parse(String(good.stdout).trim().split('\n').at(-1)!) as { verified: boolean }).verified, true);
    // A metrics file that cannot be written is a warning; the restore's outcome stands.
    const noMetrics = spawnSync(process.execPath, ['--import', 'tsx', main, '--vm', 'vm-cli', '--redis-url', db.server.url, '--out', dir, '--metrics-file', join(dir, 'missing', 'm.prom')], { encoding: 'utf8' });
    assert.equal(noMetrics.status, 0, String(noMetrics.stderr));
    assert.match(String(noMetrics.stderr), /warning: cannot write the metrics file/);
    await db.redis.setrange(store.keys('vm-cli').page(3, 0, 1), 5, 'Q');
    const bad = run();
    assert.equal(bad.status, 1, String(bad.stderr));
    assert.match(String(bad.stderr), /FAILED: the standby image of vm-cli does not verify.*\[CKPT_ERR_RESTORE_DIGEST\]$/m, 'the code ends the log line (the runbook reads it there)');
    assert.equal((JSON.parse(String(bad.stdout).trim().split('\n').at(-1)!) as { code: string }).code, 'CKPT_ERR_RESTORE_DIGEST');
    assert.match(readFileSync(prom, 'utf8'), /ckpt_restorer_restores_total\{outcome="refused-digest"\} 1/);
    const misused = spawnSync(process.execPath, ['--import', 'tsx', main, '--out', dir, '--keep-running'], { encoding: 'utf8', env: { ...process.env, RESTORER_VM: 'vm-cli', RESTORER_REDIS_URL: db.server.url } });
    assert.equal(misused.status, 2, String(misused.stderr));
    assert.match(String(misused.stderr), /--keep-running needs --resume-ms N/);
    assert.match(String(misused.stderr), /restore --help lists the options/, 'a pointer to the help, not the whole help burying the error');
    const help = spawnSync(process.execPath, ['--import', 'tsx', main, '--help'], { encoding: 'utf8' });
    assert.equal(help.status, 0);
    assert.match(help.stdout, /env: RESTORER_KEEP_RUNNING/, 'the help names the environment variables');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

const MAIN = fileURLToPath(new URL('../src/main.ts', import.meta.url));
const restoreCli = (args: string[], env: Record<string, string> = {}): ReturnType<typeof spawnSync> =>
  spawnSync(process.execPath, ['--import', 'tsx', MAIN, ...args], { encoding: 'utf8', env: { ...process.env, ...env } });
/** The last stdout line, which --json promises is one JSON object. */
const lastJson = (r: ReturnType<typeof spawnSync>): Record<string, unknown> => JSON.parse(String(r.stdout).trim().split('\n').at(-1)!) as Record<string, unknown>;

test('npm run restore waiting for a fence: says so on one line, and reports the wait apart from durationMs', async () => {
  await buildImage('vm-cw', 2);
  const dir = mkdtempSync(join(tmpdir(), 'ckpt-restore-'));
  try {
    // Expires by itself after 3 s (spawnSync blocks this process meanwhile); the child takes well under 2 s to start.
    assert.ok(await store.acquireFence('vm-cw', 'restore-otherhost-99-abc', 3000));
    const r = restoreCli(['--vm', 'vm-cw', '--redis-url', db.server.url, '--out', dir, '--json']);
    assert.equal(r.status, 0, String(r.stderr));
    const out = lastJson(r);
    assert.ok(Number(out.fenceWaitMs) >= 1000, `fenceWaitMs includes the wait: ${String(out.fenceWaitMs)}`);
    assert.ok(Number(out.durationMs) < 500, `durationMs excludes it: ${String(out.durationMs)}`);
    assert.equal(out.code, null);
    // The image's age at the end of the restore, the fence wait included.
    assert.ok(Number(out.imageAgeMs) >= Number(out.fenceWaitMs), `imageAgeMs ${String(out.imageAgeMs)}`);
    assert.match(String(r.stderr), /committed \d{4}-\d\d-\d\dT[^,]+, \d+\.\d s before this restore ended/);
    const waiting = String(r.stderr).split('\n').filter((l) => l.includes('is fenced by'));
    assert.equal(waiting.length, 1, String(r.stderr));
    assert.match(waiting[0]!, /vm-cw is fenced by restore-otherhost-99-abc .*waiting up to 30 s/);
    assert.match(String(r.stderr), /after \d+ ms waiting for the fence/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** Runs the restore command in the background; resolves with its exit and output once it exits. */
function restoreCliAsync(args: string[], onStderr?: (all: string) => void): { child: ReturnType<typeof spawn>; done: Promise<{ code: number | null; stdout: string; stderr: string }> } {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); onStderr?.(stderr); });
  return { child, done: new Promise((resolve) => child.once('exit', (code) => resolve({ code, stdout, stderr }))) };
}

test('npm run restore stopped by SIGTERM or SIGINT: exit 143/130, an INTERRUPTED JSON line, its fence wait ended, nothing kept', { timeout: 60_000 }, async () => {
  await buildImage('vm-sig', 2);
  for (const [sig, code] of [['SIGTERM', 143], ['SIGINT', 130]] as const) {
    const parent = mkdtempSync(join(tmpdir(), 'ckpt-restore-'));
    assert.ok(await store.acquireFence('vm-sig', 'restore-other-1-abc', 60_000));
    try {
      const t0 = Date.now();
      const run = restoreCliAsync(['--vm', 'vm-sig', '--redis-url', db.server.url, '--out', join(parent, 'out'), '--json'], (all) => {
        if (/is fenced by restore-other-1-abc/.test(all) && run.child.exitCode === null && !run.child.killed) run.child.kill(sig);
      });
      const r = await run.done;
      assert.equal(r.code, code, r.stderr);
      assert.ok(Date.now() - t0 < 15_000, 'it stops at once, not after its 30 s fence wait');
      assert.match(r.stderr, new RegExp(`restore: ${sig}: stopping[\\s\\S]*restore: INTERRUPTED: the restore of vm-sig was interrupted \\(${sig}\\)`));
      assert.match(r.stderr, /nothing was kept \(it held no fence yet\)/, 'it was waiting for another holder\'s fence: it released none');
      const out = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Record<string, unknown>;
      assert.equal(out.code, 'CKPT_ERR_RESTORE_INTERRUPTED');
      assert.equal(out.retriable, true);
      assert.deepEqual(readdirSync(parent), []);
      assert.equal(await db.redis.get(store.keys('vm-sig').fence), 'restore-other-1-abc', 'the other holder\'s fence is untouched');
    } finally {
      await store.releaseFence('vm-sig', 'restore-other-1-abc');
      rmSync(parent, { recursive: true, force: true });
    }
  }
});

test('npm run restore when Redis stops answering (SIGSTOP) mid-restore: fails within --redis-timeout-ms as CKPT_ERR_REDIS_LOST, retriable; it hung for good', { timeout: 60_000 }, async () => {
  const server = await RedisServer.start();
  const { Redis } = await import('ioredis');
  const redis = new Redis(server.url);
  try {
    const own = new StandbyStore(redis);
    const h = new FakeHarvester('vm-stop', 3);
    const a = new Applier(own, { deadLetter: () => Promise.resolve(), requestResync: () => Promise.resolve(), processed: () => undefined },
      createReplicatorMetrics(), silentLogger, { maxRecordBytes: 64 << 20, resyncRetryMs: 1000 });
    for (const rec of h.epochRecords(new Map([[1, 1], [2, 2]]))) await a.handle(rec, 'vm-stop');
    assert.ok(await own.acquireFence('vm-stop', 'restore-other-2-def', 60_000));
    const dir = mkdtempSync(join(tmpdir(), 'ckpt-restore-'));
    let stoppedAt = 0;
    const run = restoreCliAsync(['--vm', 'vm-stop', '--redis-url', server.url, '--out', join(dir, 'out'), '--json', '--redis-timeout-ms', '1000'], (all) => {
      if (!stoppedAt && /is fenced by restore-other-2-def/.test(all)) {
        stoppedAt = Date.now();
        process.kill(server.pid!, 'SIGSTOP');
      }
    });
    const r = await run.done;
    process.kill(server.pid!, 'SIGCONT');
    try {
      assert.equal(r.code, 1, r.stderr);
      assert.ok(stoppedAt > 0 && Date.now() - stoppedAt < 10_000, `failed ${Date.now() - stoppedAt} ms after Redis stopped`);
      const out = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Record<string, unknown>;
      assert.equal(out.code, 'CKPT_ERR_REDIS_LOST', r.stderr);
      assert.equal(out.retriable, true);
      assert.match(String(out.message), /cannot restore: Redis stopped answering \(Command timed out\); nothing was kept/);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace for a lost connection');
      assert.deepEqual(readdirSync(dir), []);

      // SIGTERM while Redis does not answer (a long --redis-timeout-ms): reported at once, exit soon
      // after. It waited for the 5 s cut-off, reported 7 s after the signal and exited at the 10 s hard exit.
      let termAt = 0;
      const slow = restoreCliAsync(['--vm', 'vm-stop', '--redis-url', server.url, '--out', join(dir, 'out'), '--json', '--redis-timeout-ms', '60000'], (all) => {
        if (termAt || !/is fenced by restore-other-2-def/.test(all)) return;
        process.kill(server.pid!, 'SIGSTOP');
        setTimeout(() => { termAt = Date.now(); slow.child.kill('SIGTERM'); }, 300);
      });
      const s = await slow.done;
      const tookMs = Date.now() - termAt;
      process.kill(server.pid!, 'SIGCONT');
      assert.equal(s.code, 143, s.stderr);
      assert.equal((JSON.parse(s.stdout.trim().split('\n').at(-1)!) as { code: string }).code, 'CKPT_ERR_RESTORE_INTERRUPTED');
      assert.match(s.stderr, /INTERRUPTED: the restore of vm-stop was interrupted \(SIGTERM\): nothing was kept \(it held no fence yet\)/);
      assert.ok(termAt > 0 && tookMs < 3000, `exited ${tookMs} ms after SIGTERM`);
      assert.deepEqual(readdirSync(dir), []);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  } finally {
    redis.disconnect();
    await server.stop();
  }
});

test('npm run restore with a malformed VM id: exit 2, a configuration error, before any connection', () => {
  // Port 1: nothing listens, so reaching for Redis would fail with exit 1 instead.
  // The error names the setting as it was given: the failover Deployment sets RESTORER_VM.
  for (const [args, env, named] of [[['--vm', 'bad id!'], {}, '--vm'], [[], { RESTORER_VM: 'bad id!' }, 'RESTORER_VM']] as const) {
    const r = restoreCli([...args, '--redis-url', 'redis://127.0.0.1:1', '--out', tmpdir()], env);
    assert.equal(r.status, 2, String(r.stderr));
    assert.ok(String(r.stderr).includes(`restore: invalid configuration:\n  - ${named} "bad id!" is not a VM id (1-200 of A-Z a-z 0-9 . _ : -)`), String(r.stderr));
    assert.doesNotMatch(String(r.stderr), /connect/);
  }
});

test('npm run restore against a Redis nobody listens on names the connection\'s own error (it said only "Connection is closed.")', () => {
  const r = restoreCli(['--vm', 'vm-a', '--redis-url', 'redis://127.0.0.1:1', '--out', tmpdir()], {});
  assert.equal(r.status, 1, String(r.stderr));
  assert.match(String(r.stderr), /cannot connect to Redis at redis:\/\/127\.0\.0\.1:1: connect ECONNREFUSED 127\.0\.0\.1:1/);
});

test('NEGATIVE: npm run restore --json when the restore fails: one JSON object with code and message, nulls for what is unknown', async () => {
  await buildImage('vm-cf', 2);
  const port = await new Promise<{ port: number; close: () => void }>((resolve) => {
    const srv = createServer().listen(0, '127.0.0.1', () => resolve({ port: (srv.address() as { port: number }).port, close: () => srv.close() }));
  });
  try {
    // Not one of the restorer's own errors underneath (EADDRINUSE from node:net): still one JSON line.
    const r = restoreCli(['--vm', 'vm-cf', '--redis-url', db.server.url, '--out', tmpdir(), '--json', '--metrics-port', String(port.port)]);
    assert.equal(r.status, 1, String(r.stderr));
    const out = lastJson(r);
    assert.equal(out.code, 'CKPT_ERR_RESTORE_METRICS_PORT');
    assert.match(String(out.message), new RegExp(`cannot serve /metrics on port ${port.port}: .*EADDRINUSE.*--metrics-port`));
    assert.equal(out.verified, false);
    assert.equal(out.vm, 'vm-cf');
    for (const k of ['generation', 'epoch', 'digest', 'imageBytes', 'bytesRead', 'durationMs', 'fenceWaitMs', 'restoreMBps', 'resumed', 'imageAgeMs', 'vcpuVerified']) assert.equal(out[k], null, k);
  } finally {
    port.close();
  }
});

test('NEGATIVE: npm run restore --resume-ms on a host without that KVM device: a hint naming restore\'s own options', async (t) => {
  if (!needKvm(t)) return; // the native helper must load for the device to be looked for
  await buildImage('vm-nd', 2);
  const r = restoreCli(['--vm', 'vm-nd', '--redis-url', db.server.url, '--resume-ms', '300', '--dev-path', '/dev/nope', '--json']);
  assert.equal(r.status, 1, String(r.stderr));
  assert.match(String(r.stderr), /FAILED: cannot open \/dev\/nope: no such device; .*--dev-path.*--out DIR/);
  assert.doesNotMatch(String(r.stderr), /--source/, 'restore has no --source');
  const out = lastJson(r);
  assert.equal(out.code, 'CKPT_ERR_KVM_NO_DEVICE');
  assert.match(String(out.message), /--out DIR/);
  assert.equal(out.durationMs, null);
  const help = restoreCli(['--help']);
  for (const flag of ['--dev-path', '--out']) assert.ok(String(help.stdout).includes(flag), `the hint names an option restore has: ${flag}`);
});

test('a disk that fills up: CKPT_ERR_RESTORE_OUTPUT naming the file, and no file left, final-named or partial (the raw files were renamed before the vCPU state was written)', async (t) => {
  await buildImage('vm-full', 3);
  // The vCPU state file cannot be written (a directory stands in its way): the raw files must not have
  // been renamed yet, and nothing may stay behind.
  const dir = mkdtempSync(join(tmpdir(), 'ckpt-restore-'));
  try {
    mkdirSync(join(dir, 'vm-full.vcpus.json.partial'));
    const err = await rejects(restoreImage(store, 'vm-full', new FileTarget(dir)), 'CKPT_ERR_RESTORE_OUTPUT');
    assert.match(err.message, /cannot finish the restored files in /);
    rmdirSync(join(dir, 'vm-full.vcpus.json.partial'));
    assert.deepEqual(readdirSync(dir), [], 'no raw file renamed, no partial left');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  // A real ENOSPC: a tmpfs of 8 KiB takes two of the image's pages.
  const mnt = mkdtempSync(join(tmpdir(), 'ckpt-full-'));
  try {
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=8k', 'tmpfs', mnt], { encoding: 'utf8' });
    if (m.status !== 0) {
      t.diagnostic(`skipped the ENOSPC half: cannot mount a small tmpfs here (${(m.stderr || m.error?.message || '').trim()}); needs root`);
      return;
    }
    try {
      const err = await rejects(restoreImage(store, 'vm-full', new FileTarget(mnt)), 'CKPT_ERR_RESTORE_OUTPUT');
      assert.match(err.message, /cannot write .*vm-full\.slot0\.raw\.partial: ENOSPC/);
      assert.deepEqual(readdirSync(mnt), []);
    } finally {
      spawnSync('umount', [mnt]);
    }
  } finally {
    rmSync(mnt, { recursive: true, force: true });
  }
});

test('an output directory that cannot be made is a clear CKPT_ERR_RESTORE_OUTPUT at once (under /proc, Node\'s recursive mkdir looped for good)', () => {
  // In a child with a deadline: a regression loops synchronously, which no in-process timeout stops.
  const code = `
    import { FileTarget } from '${fileURLToPath(new URL('../src/index.ts', import.meta.url))}';
    const layout = { vm: 'vm-a', pageSize: 4096, slots: [{ id: 0, pages: 1 }], vcpus: 1 };
    for (const dir of ['/proc/nope', '/proc/nope/deeper']) {
      try { new FileTarget(dir).open(layout); console.log('opened ' + dir); } catch (e) { console.log(e.code + ' ' + e.message); }
    }`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.signal, null, `the check did not finish in 30 s: ${r.stderr}`);
  const lines = r.stdout.trim().split('\n');
  assert.equal(lines.length, 2, r.stdout + r.stderr);
  for (const [i, dir] of ['/proc/nope', '/proc/nope/deeper'].entries()) {
    assert.ok(lines[i]!.startsWith('CKPT_ERR_RESTORE_OUTPUT ') && lines[i]!.includes(dir), lines[i]);
  }
});

test('watchRunning: a kept-running guest whose vCPU fails is reported at the next poll (the failover pod stayed ready with nothing running); a stop ends the watch', async () => {
  let err: string | null = null;
  const stop = new AbortController();
  const t0 = Date.now();
  const watching = watchRunning(() => err, stop.signal, 20);
  setTimeout(() => { err = 'KVM_EXIT_SHUTDOWN (triple fault)'; }, 100);
  assert.equal(await watching, 'KVM_EXIT_SHUTDOWN (triple fault)');
  assert.ok(Date.now() - t0 < 1000);
  const quiet = new AbortController();
  const stopped = watchRunning(() => null, quiet.signal, 20);
  setTimeout(() => quiet.abort('SIGTERM'), 50);
  assert.equal(await stopped, null);
  assert.equal(await watchRunning(() => 'never polled', AbortSignal.abort(), 20), null, 'already stopped');
  stop.abort();
});

test('NEGATIVE: a page gone from Redis (evicted, deleted) is refused, and the error says pages are missing, not changed', async () => {
  await buildImage('vm-gone', 5);
  await db.redis.del(store.keys('vm-gone').page(5, 0, 700));
  const err = await rejects(restoreImage(store, 'vm-gone', new SparseTarget()), 'CKPT_ERR_RESTORE_DIGEST');
  assert.match(err.message, /does not verify.*; 1 of its 5 pages are missing from Redis \(evicted under a maxmemory policy, or deleted\); refusing/);
});

test('bytesRead counts the pages Redis held, not the zero gaps between them in a chunk (it said 54.7 MiB read for 2.1 MiB of pages)', async () => {
  await buildImage('vm-br', 4);
  // Pages 1, 2, 512, 700 and 1023 hold data (300 was zeroed by the second epoch): five pages, four chunks.
  const img = await restoreImage(store, 'vm-br', new SparseTarget());
  assert.equal(img.bytesRead, 5 * PAGE);
  assert.equal(img.vcpuVerified, true);
});
