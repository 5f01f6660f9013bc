/**
 * The replicator's decisions against a real redis-server: epochs apply atomically and only when
 * complete and verified; bad and out-of-place records are parked with a reason and change nothing;
 * gaps mark the image stale and ask for a baseline, which heals it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { Redis } from 'ioredis';
import { type CkptError, createLogger, silentLogger, SparseImage } from '@ckpt/common';
import { redisForTests } from '@ckpt/embedded/test-support';
import { encodeEpochRecord, type EpochRecord } from '@ckpt/proto';
import { StandbyStore, zeroMarkWork } from '@ckpt/standby';
import { Applier, checkZeroMarks, createReplicatorMetrics, MAX_EPOCH_ZERO_MARKS, type DeadLetterReason } from '../src/index.ts';

import { applierHarness } from './applier-harness.ts';
import { FakeHarvester, PAGE, SLOT_PAGES } from './fake-harvester.ts';
const db = redisForTests();

const setup = (vm: string, prefix?: string): ReturnType<typeof applierHarness> => applierHarness(db.redis, vm, {}, prefix);

const pages = (entries: [number, number][]): Map<number, number> => new Map(entries);
/** A record without its VM id (each kind of the union on its own). */
type WithoutVm<T> = T extends unknown ? Omit<T, 'vm'> : never;


test('epochs apply in order; the image equals the model after each commit; redelivery changes nothing', async () => {
  const t = setup('vm-a');
  const h = new FakeHarvester('vm-a', 100);
  await t.feed(h.epochRecords(pages([[1, 7], [2, 8], [500, 9], [1023, 10]])));
  let img = await t.image();
  assert.deepEqual([img.epoch, img.state, img.digest, img.bytesDigest], [0, 'ok', h.model.digest().toHex(), h.model.digest().toHex()]);
  const e1 = h.epochRecords(pages([[2, 0], [3, 11], [500, 12]]));
  // Nothing shows before the commit.
  await t.feed(e1.slice(0, -1));
  assert.equal((await t.image()).epoch, 0, 'no commit, no change');
  await t.feed(e1.slice(-1));
  img = await t.image();
  assert.deepEqual([img.epoch, img.digest, img.bytesDigest], [1, h.model.digest().toHex(), h.model.digest().toHex()]);
  // At-least-once delivery: the whole epoch again is parked as duplicates and changes nothing.
  await t.feed(e1);
  assert.deepEqual((await t.image()).epoch, 1);
  assert.ok(t.dead.length >= e1.length && t.dead.every((d) => d.reason === 'duplicate'), JSON.stringify(t.dead));
  assert.equal(t.resyncs.length, 0);
});

test('a live harvester on a generation older than the image\'s (its clock went back) is asked for a baseline above the image\'s generation; a few stragglers are not', async () => {
  const t = setup('vm-gb');
  const current = new FakeHarvester('vm-gb', 5000);
  await t.feed(current.epochRecords(pages([[1, 1]])));
  await t.feed(current.epochRecords(pages([[2, 2]])));
  // Stragglers of an older process: two epochs of generation 4000, parked, no request.
  const straggler = new FakeHarvester('vm-gb', 4000);
  straggler.epoch = 3;
  await t.feed(straggler.epochRecords(pages([[3, 3]])));
  await t.feed(straggler.epochRecords(pages([[3, 4]])));
  assert.deepEqual(t.resyncs, []);
  // A restarted harvester whose clock is behind: generation 4500 < 5000, a baseline and epochs that keep coming.
  const behind = new FakeHarvester('vm-gb', 4500);
  for (let e = 0; e < 4; e++) await t.feed(behind.epochRecords(pages([[e + 1, 20 + e]])));
  assert.ok(t.dead.filter((d) => d.reason === 'old-generation').length >= 6, JSON.stringify(t.dead.map((d) => d.reason)));
  assert.equal(t.resyncs.length, 1, `one request, then the retry period: ${JSON.stringify(t.resyncs)}`);
  assert.match(t.resyncs[0]!, /^vm-gb: generation 4500 is older than the image's \(5000\)/);
  // The image is untouched: still the current generation's last epoch.
  assert.deepEqual([(await t.image()).epoch, (await t.image()).state], [1, 'ok']);
  assert.equal((await t.store.readMeta('vm-gb'))!.generation, 5000);
});

test('a standby deleted under the fence while an epoch is assembled (standby forget of a running VM) is a gap, not a digest mismatch', async () => {
  const t = setup('vm-fg');
  const h = new FakeHarvester('vm-fg', 600);
  await t.feed(h.epochRecords(pages([[1, 1], [2, 2], [3, 3]])));
  const e1 = h.epochRecords(pages([[2, 5], [4, 6]]));
  await t.feed(e1.slice(0, -1)); // staged, waiting for its commit
  // `standby forget` holds the fence while it deletes; here it has deleted the page hashes so far.
  assert.equal(await t.store.acquireFence('vm-fg', 'forget-1', 60_000), true);
  await db.redis.del(t.store.keys('vm-fg').hashes(600));
  assert.equal(await t.applier.handle(e1.at(-1)!, 'vm-fg'), 'retry', 'wait for the fence');
  await t.store.deleteVm('vm-fg');
  await t.store.releaseFence('vm-fg', 'forget-1');
  assert.equal(await t.applier.handle(e1.at(-1)!, 'vm-fg'), 'done');
  const mismatches = (await t.metrics.digestMismatches.get()).values[0]?.value ?? 0;
  assert.equal(mismatches, 0, 'no digest mismatch (CkptDigestMismatch would page)');
  assert.ok(!t.dead.some((d) => d.detail.includes('digest')), JSON.stringify(t.dead));
  assert.ok(t.resyncs.length >= 1, `a baseline is asked for: ${JSON.stringify(t.resyncs)}`);
});

test('the standby age (live RPO) grows while nothing is applied and drops when an epoch lands', async () => {
  const t = setup('vm-age');
  const h = new FakeHarvester('vm-age', 100);
  const sample = async (name: string): Promise<number> => {
    const m = new RegExp(`^${name}\\{vm="vm-age"\\} (\\S+)$`, 'm').exec(await t.metrics.registry.metrics());
    assert.ok(m, `${name} exported for vm-age`);
    return Number(m[1]);
  };
  await t.feed(h.epochRecords(pages([[1, 7]])));
  assert.equal(await sample('ckpt_replicator_last_applied_epoch'), 0);
  const a0 = await sample('ckpt_replicator_standby_age_seconds');
  await new Promise((r) => setTimeout(r, 400));
  const a1 = await sample('ckpt_replicator_standby_age_seconds');
  assert.ok(a1 - a0 >= 0.35, `age grows with no new epoch: ${a0} -> ${a1}`);
  await t.feed(h.epochRecords(pages([[2, 8]])));
  assert.equal(await sample('ckpt_replicator_last_applied_epoch'), 1);
  const a2 = await sample('ckpt_replicator_standby_age_seconds');
  assert.ok(a2 < a1 - 0.3, `age drops once epoch 1 is applied: ${a1} -> ${a2}`);
  // An epoch committed 5 s after its pause (held by the replication window) holds the guest as it was
  // at the pause: the age counts from there, and so does a replicator that loads the image afresh.
  h.commitDelayMs = 5000;
  await t.feed(h.epochRecords(pages([[3, 9]])));
  const a3 = await sample('ckpt_replicator_standby_age_seconds');
  assert.ok(a3 >= 5 && a3 < 6, `age of an epoch paused 5 s before its commit: ${a3}`);
  assert.ok(Date.now() - (await t.store.readMeta('vm-age'))!.pausedAtMs >= 5000, 'the image records the pause time');
  // Its partition moved to another replicator: this one stops reporting the VM instead of freezing it.
  t.metrics.forgetVm('vm-age');
  assert.doesNotMatch(await t.metrics.registry.metrics(), /vm="vm-age"/);
});

test('hostile zero marks: a delta asking for billions of pages cleared one by one is refused at once (it ran the replicator out of memory); a baseline\'s huge zero range costs what its generation holds (it held Redis 43 s)', async () => {
  const t = setup('vm-z');
  const SLOT = 2 ** 33; // a 32 TiB slot: the layout allows it (the simulator makes such guests)
  const rec = (r: WithoutVm<EpochRecord>): Buffer => Buffer.from(encodeEpochRecord({ vm: 'vm-z', ...r }));
  const begin = (epoch: number, baseline: boolean): Buffer => rec({ generation: 9, epoch, kind: 'begin', begin: { pageSize: PAGE, slots: [{ id: 0, pages: SLOT }], vcpus: 1, baseline, startedAtMs: 1 } });
  const page = new Uint8Array(PAGE).fill(7);
  const model = new SparseImage(PAGE, [SLOT]);
  const commit = (epoch: number, batches: number): Buffer => rec({ generation: 9, epoch, kind: 'commit', commit: {
    batches, pages: 1, zeroPages: 0, dataBytes: PAGE, digest: model.digest().toHex(), vcpuStates: [Uint8Array.of(1)], guestCounters: [0, 0], pauseUs: 1, startedAtMs: 1, committedAtMs: 1, pausedAtMs: 1,
  } });
  // A baseline writing one page at 2^26.
  model.writePages(0, 2 ** 26, 1, page, 0);
  await t.feed([begin(0, true), rec({ generation: 9, epoch: 0, kind: 'batch', batch: { seq: 0, slots: [0], firsts: [2 ** 26], counts: [1], zero: Uint8Array.of(0), compression: 'none', data: page, dataBytes: PAGE } }), commit(0, 1)]);
  assert.deepEqual(await t.image(), { epoch: 0, digest: model.digest().toHex(), state: 'ok', bytesDigest: model.digest().toHex() });
  // A delta marking 2^32 - 1 pages zero: 38 bytes of batch.
  const t0 = performance.now();
  await t.feed([begin(1, false), rec({ generation: 9, epoch: 1, kind: 'batch', batch: { seq: 0, slots: [0], firsts: [0], counts: [0xffffffff], zero: Uint8Array.of(1), compression: 'none', data: new Uint8Array(0), dataBytes: 0 } })]);
  assert.ok(performance.now() - t0 < 2000, `refused at once: ${performance.now() - t0} ms`);
  assert.equal(t.dead.at(-1)?.reason, 'invalid');
  assert.match(t.dead.at(-1)!.detail, /batch 0 marks 4294967295 pages zero that would be cleared one by one \(at most 262144 per batch\)/);
  const after = await t.image();
  assert.deepEqual([after.epoch, after.bytesDigest, after.state], [0, model.digest().toHex(), 'stale'], 'the image stays epoch 0, marked stale');
  assert.equal(t.resyncs.length, 1, 'a baseline is asked for');
  // A baseline whose second batch marks zero the 2^26 + 1 pages up to the one its first batch wrote:
  // the apply script probed each of them (43 s of Redis); now it looks among the pages the generation
  // holds when those are fewer. The page goes, the baseline applies, at once.
  const t2 = setup('vm-z2');
  const rec2 = (r: WithoutVm<EpochRecord>): Buffer => Buffer.from(encodeEpochRecord({ vm: 'vm-z2', ...r }));
  const zeroImage = new SparseImage(PAGE, [SLOT]);
  const t1 = performance.now();
  await t2.feed([
    rec2({ generation: 9, epoch: 0, kind: 'begin', begin: { pageSize: PAGE, slots: [{ id: 0, pages: SLOT }], vcpus: 1, baseline: true, startedAtMs: 1 } }),
    rec2({ generation: 9, epoch: 0, kind: 'batch', batch: { seq: 0, slots: [0, 0], firsts: [5, 2 ** 26], counts: [1, 1], zero: Uint8Array.of(0, 0), compression: 'none', data: Buffer.concat([page, page]), dataBytes: 2 * PAGE } }),
    rec2({ generation: 9, epoch: 0, kind: 'batch', batch: { seq: 1, slots: [0, 0], firsts: [0, 6], counts: [3, 2 ** 26 - 5], zero: Uint8Array.of(1, 1), compression: 'none', data: new Uint8Array(0), dataBytes: 0 } }),
  ]);
  zeroImage.writePages(0, 5, 1, page, 0); // page 5 lies between the two zero ranges: it stays
  await t2.feed([rec2({ generation: 9, epoch: 0, kind: 'commit', commit: {
    batches: 2, pages: 2, zeroPages: 0, dataBytes: 2 * PAGE, digest: zeroImage.digest().toHex(), vcpuStates: [Uint8Array.of(1)], guestCounters: [0, 0], pauseUs: 1, startedAtMs: 1, committedAtMs: 1, pausedAtMs: 1,
  } })]);
  assert.ok(performance.now() - t1 < 3000, `applied at once: ${performance.now() - t1} ms`);
  assert.deepEqual(t2.dead, []);
  assert.deepEqual(await t2.image(), { epoch: 0, digest: zeroImage.digest().toHex(), state: 'ok', bytesDigest: zeroImage.digest().toHex() });
  // Within the batch bound, an epoch may not exceed its own.
  const batch = { seq: 4, slots: [0], firsts: [0], counts: [1], zero: Uint8Array.of(1), compression: 'none' as const, data: new Uint8Array(0), dataBytes: 0 };
  const asm = { generation: 9, epoch: 1, baseline: false, maxWritten: {}, begin: { pageSize: PAGE, slots: [], vcpus: 1, baseline: false, startedAtMs: 1 }, nextSeq: 4, stagedBytes: 0 };
  assert.doesNotThrow(() => checkZeroMarks(batch, { ...asm, zeroMarks: MAX_EPOCH_ZERO_MARKS - 1 }));
  assert.throws(() => checkZeroMarks(batch, { ...asm, zeroMarks: MAX_EPOCH_ZERO_MARKS }), /brings epoch 9\/1's zero marks to 1048577 pages cleared one by one \(at most 1048576 per epoch\)/);
  assert.equal(zeroMarkWork({ baseline: false }, { slots: [0, 0], counts: [7, 9], zero: Uint8Array.of(1, 0) }), 7, 'a delta\'s zero pages count, its data pages do not');
  assert.equal(zeroMarkWork({ baseline: true }, { slots: [0], counts: [2 ** 30], zero: Uint8Array.of(1) }), 0, 'a baseline\'s zero marks are bounded by what its generation holds');
});

test('a VM whose standby record was edited into nonsense: its records fail as CKPT_ERR_STANDBY_CORRUPT (not retriable), parking one does not loop, other VMs go on', async () => {
  const t = setup('vm-c');
  const h = new FakeHarvester('vm-c', 300);
  await t.feed(h.epochRecords(pages([[1, 1]])));
  await db.redis.hset(t.store.keys('vm-c').meta, 'generation', '0300'); // a number, but not as written: the stale mark's compare-and-set never matched
  t.applier.forget();
  const rec = h.epochRecords(pages([[2, 2]]))[0]!;
  await assert.rejects(t.applier.handle(rec, 'vm-c'), (e: CkptError) => e.code === 'CKPT_ERR_STANDBY_CORRUPT' && !e.retriable && /generation is "0300"/.test(e.message));
  await t.applier.poison('vm-c', 'the standby record of vm-c is unusable'); // returned: it looped for good
  assert.equal(t.dead.at(-1)?.reason, 'invalid');
  // Another VM, same applier (same partition): unaffected.
  const other = new FakeHarvester('vm-c2', 5);
  for (const r of other.epochRecords(pages([[3, 3]]))) assert.equal(await t.applier.handle(r, 'vm-c2'), 'done');
  assert.equal((await t.store.readMeta('vm-c2'))?.epoch, 0);
});

test('a gzip\'d batch declaring far more bytes than a record holds (a decompression bomb) is refused before it is inflated', async () => {
  const t = setup('vm-bomb');
  const h = new FakeHarvester('vm-bomb', 200);
  await t.feed(h.epochRecords(pages([[1, 1]])));
  const e1 = h.epochRecords(pages([[7, 7]]));
  await t.applier.handle(e1[0]!, 'vm-bomb');
  const bomb = Buffer.from(encodeEpochRecord({ vm: 'vm-bomb', generation: 200, epoch: 1, kind: 'batch', batch: {
    seq: 0, slots: [0], firsts: [0], counts: [16_384], zero: Uint8Array.of(0), compression: 'gzip', data: gzipSync(Buffer.alloc(64 << 20)), dataBytes: 64 << 20,
  } }));
  await t.applier.handle(bomb, 'vm-bomb');
  assert.equal(t.dead.at(-1)?.reason, 'invalid');
  assert.match(t.dead.at(-1)!.detail, /batch 0 declares 67108864 bytes of pages, more than a record may hold \(1048576\)/);
  assert.equal((await t.image()).epoch, 0);
});

test('applies held back by a fence are logged with its holder once it held them a while, and again when they go on (a killed restorer\'s fence held a standby silently)', async () => {
  const store = new StandbyStore(db.redis, `fl${Math.random().toString(36).slice(2, 8)}`);
  const lines: string[] = [];
  const log = createLogger({ service: 'replicator' }, { level: 'info', write: (l) => lines.push(l) });
  const a = new Applier(store, { deadLetter: () => Promise.resolve(), requestResync: () => Promise.resolve(), processed: () => undefined },
    createReplicatorMetrics(), log, { maxRecordBytes: 1 << 20, resyncRetryMs: 60_000, fenceQuietMs: 200, fenceLogEveryMs: 60_000 });
  const h = new FakeHarvester('vm-f', 10);
  for (const r of h.epochRecords(pages([[1, 1]]))) assert.equal(await a.handle(r, 'vm-f'), 'done');
  assert.ok(await store.acquireFence('vm-f', 'restore-host-77-dead', 60_000));
  const e1 = h.epochRecords(pages([[2, 2]]));
  for (const r of e1.slice(0, -1)) assert.equal(await a.handle(r, 'vm-f'), 'done');
  const commit = e1.at(-1)!;
  assert.equal(await a.handle(commit, 'vm-f'), 'retry');
  assert.equal(lines.filter((l) => /wait on a restorer's fence/.test(l)).length, 0, 'a short fence is a restore at work: not logged');
  await new Promise((r) => setTimeout(r, 250));
  for (let i = 0; i < 3; i++) assert.equal(await a.handle(commit, 'vm-f'), 'retry');
  const warned = lines.filter((l) => /wait on a restorer's fence/.test(l));
  assert.equal(warned.length, 1, lines.join('\n'));
  const w = JSON.parse(warned[0]!) as { level: string; vm: string; holder: string; ttlMs: number; hint: string };
  assert.deepEqual([w.level, w.vm, w.holder], ['warn', 'vm-f', 'restore-host-77-dead']);
  assert.ok(w.ttlMs > 50_000, String(w.ttlMs));
  assert.match(w.hint, /npm run standby -- unfence --vm vm-f/);
  await store.releaseFence('vm-f', 'restore-host-77-dead');
  assert.equal(await a.handle(commit, 'vm-f'), 'done');
  assert.ok(lines.some((l) => /the fence is gone: applying again/.test(l)));
  assert.equal((await store.readMeta('vm-f'))?.epoch, 1);
});

test('an assembly keeps its VM reported while its records come, and not once its harvester abandoned it (killed during its first baseline)', async () => {
  const store = new StandbyStore(db.redis, `ab${Math.random().toString(36).slice(2, 8)}`);
  const a = new Applier(store, { deadLetter: () => Promise.resolve(), requestResync: () => Promise.resolve(), processed: () => undefined },
    createReplicatorMetrics(), silentLogger, { maxRecordBytes: 1 << 20, resyncRetryMs: 60_000, assemblyIdleMs: 300 });
  const h = new FakeHarvester('vm-ab', 12);
  const baseline = h.epochRecords(pages([[1, 1], [2, 2], [3, 3], [4, 4]]), 1);
  assert.equal(a.assembling('vm-ab'), false);
  for (const r of baseline.slice(0, 2)) assert.equal(await a.handle(r, 'vm-ab'), 'done'); // begin and one batch, then nothing
  assert.equal(a.assembling('vm-ab'), true, 'assembling while records come');
  await new Promise((r) => setTimeout(r, 350));
  assert.equal(a.assembling('vm-ab'), false, 'abandoned after assemblyIdleMs without a record');
  // Its records come again: assembling, and the baseline completes from what Redis holds.
  a.forget('vm-ab');
  for (const r of baseline.slice(2)) assert.equal(await a.handle(r, 'vm-ab'), 'done');
  assert.equal((await store.readMeta('vm-ab'))?.epoch, 0);
});

test('bad records are parked with their reason and the image stays the committed epoch', async () => {
  const t = setup('vm-b');
  const h = new FakeHarvester('vm-b', 200);
  await t.feed(h.epochRecords(pages([[1, 1], [2, 2]])));
  const before = await t.image();
  const bad: [Buffer, DeadLetterReason][] = [
    [Buffer.from([0xff, 0xff, 0x01]), 'malformed'],
    [Buffer.alloc(0), 'malformed'], // a tombstone: it was called schema-version
    [Buffer.alloc(2 << 20), 'oversize'],
  ];
  for (const [raw, reason] of bad) {
    await t.applier.handle(raw, 'vm-b');
    assert.equal(t.dead.at(-1)?.reason, reason);
  }
  // A record of another VM under this key.
  const other = new FakeHarvester('vm-zzz', 1).epochRecords(pages([[1, 1]]));
  await t.applier.handle(other[0]!, 'vm-b');
  assert.equal(t.dead.at(-1)?.reason, 'key-mismatch');
  // A record of this VM without a key (it could land on any partition): parked under no key, so its
  // dead letter carries its own bytes (filed under the body's VM, it carried none).
  await t.applier.handle(h.epochRecords(pages([[9, 9]]))[0]!, null);
  h.epoch--;
  assert.deepEqual(t.dead.at(-1), { vm: null, reason: 'key-mismatch', detail: 'record of VM vm-b arrived without a key: a VM\'s records must be keyed by its id, which keeps them in order on one partition' });
  // Generation 0, which no harvester uses: parked as invalid (it was a duplicate, and the VM went stale).
  await t.applier.handle(new FakeHarvester('vm-b', 0).epochRecords(pages([[1, 1]]))[0]!, 'vm-b');
  assert.deepEqual([t.dead.at(-1)?.reason, t.dead.at(-1)?.detail], ['invalid', 'generation 0: harvesters number generations from 1']);
  // A generation far ahead of the clock (a baseline at 2^53 - 1 took the image over for good): parked, the image untouched.
  const ahead = new FakeHarvester('vm-b', Number.MAX_SAFE_INTEGER);
  await t.applier.handle(ahead.epochRecords(pages([[1, 0]]))[0]!, 'vm-b');
  assert.equal(t.dead.at(-1)?.reason, 'invalid');
  assert.match(t.dead.at(-1)!.detail, /generation 9007199254740991 is more than a day ahead of this replicator's clock/);
  assert.equal((await t.image()).epoch, before.epoch);
  // A batch outside the layout: the epoch cannot complete, so the image goes stale and a baseline is asked for.
  const e1 = h.epochRecords(pages([[5, 5]]));
  await t.applier.handle(e1[0]!, 'vm-b');
  const bogus = Buffer.from(encodeEpochRecord({ vm: 'vm-b', generation: 200, epoch: 1, kind: 'batch', batch: {
    seq: 0, slots: [0], firsts: [SLOT_PAGES], counts: [1], zero: Uint8Array.of(0), compression: 'none', data: new Uint8Array(PAGE), dataBytes: PAGE,
  } }));
  await t.applier.handle(bogus, 'vm-b');
  assert.equal(t.dead.at(-1)?.reason, 'invalid');
  assert.match(t.dead.at(-1)!.detail, /outside slot 0/);
  const after = await t.image();
  assert.deepEqual([after.epoch, after.digest, after.bytesDigest], [before.epoch, before.digest, before.digest], 'image unchanged');
  assert.equal(after.state, 'stale');
  assert.equal(t.resyncs.length, 1);
  // The rest of the broken epoch applies nothing.
  await t.feed(e1.slice(1));
  assert.equal((await t.image()).epoch, 0);
});

test('a missing epoch marks the image stale, later epochs are ignored, and the next baseline heals it', async () => {
  const t = setup('vm-c');
  const h = new FakeHarvester('vm-c', 300);
  await t.feed(h.epochRecords(pages([[1, 1]])));
  h.epochRecords(pages([[2, 2]])); // epoch 1 is lost
  await t.feed(h.epochRecords(pages([[3, 3]]))); // epoch 2 arrives
  let img = await t.image();
  assert.deepEqual([img.epoch, img.state], [0, 'stale']);
  assert.equal(t.resyncs.length, 1);
  assert.match(t.resyncs[0]!, /missing-epoch/);
  // Epoch 2's batch and commit after its begin showed the gap, then all of epoch 3, are skipped and
  // counted while the VM waits for the baseline, not parked.
  const skipped = async (): Promise<number> => (await t.metrics.skippedWhileStale.get()).values[0]?.value ?? 0;
  assert.equal(await skipped(), 2);
  const parked = t.dead.length;
  await t.feed(h.epochRecords(pages([[4, 4]])));
  assert.equal(await skipped(), 5);
  assert.equal(t.dead.length, parked);
  assert.equal((await t.image()).epoch, 0);
  // The harvester answers with a new generation.
  const h2 = new FakeHarvester('vm-c', 301);
  await t.feed(h2.epochRecords(pages([[1, 1], [2, 2], [3, 3], [4, 4]])));
  await t.feed(h2.epochRecords(pages([[4, 0]])));
  img = await t.image();
  assert.deepEqual([img.epoch, img.state, img.digest, img.bytesDigest], [1, 'ok', h2.model.digest().toHex(), h2.model.digest().toHex()]);
  // The old generation's keys are gone.
  const old = await db.redis.keys(`${t.store.prefix}:{vm-c}:g300:*`);
  assert.deepEqual(old, []);
  // An old-generation record now is parked as such.
  await t.applier.handle(h.epochRecords(pages([[9, 9]]))[0]!, 'vm-c');
  assert.equal(t.dead.at(-1)?.reason, 'old-generation');
});

test('a VM whose first records are a delta (its baseline never seen, or junk ids) is asked for a baseline and leaves nothing in Redis', async () => {
  const t = setup('vm-nb');
  const h = new FakeHarvester('vm-nb', 310);
  h.epochRecords(pages([[1, 1]])); // the baseline this replicator never sees
  await t.feed(h.epochRecords(pages([[2, 2]])));
  assert.equal(t.resyncs.length, 1, 'a baseline is requested');
  assert.equal((await t.image()).state, 'none');
  assert.deepEqual(await db.redis.keys(`${t.store.prefix}:{vm-nb}:*`), [], 'no stale mark, no assembly: a VM without an image keeps no record');
  // A VM with an image still carries its stale mark.
  const u = setup('vm-nb2');
  const g = new FakeHarvester('vm-nb2', 311);
  await u.feed(g.epochRecords(pages([[1, 1]])));
  g.epochRecords(pages([[2, 2]])); // lost
  await u.feed(g.epochRecords(pages([[3, 3]])));
  const m = await u.store.readMeta('vm-nb2');
  assert.deepEqual([m?.epoch, m?.state], [0, 'stale']);
  assert.match(m?.staleReason ?? '', /missing-epoch/);
});

test('NEGATIVE: a commit whose digest does not match the pages is refused; the image keeps the last good epoch', async () => {
  const t = setup('vm-d');
  const h = new FakeHarvester('vm-d', 400);
  await t.feed(h.epochRecords(pages([[1, 1], [2, 2]])));
  const good = await t.image();
  const e1 = h.epochRecords(pages([[1, 99]]));
  // Corrupt one page byte in flight: the batch still decodes, the digest no longer matches.
  const batch = e1[1]!;
  batch.writeUInt8(batch.readUInt8(batch.length - 10) ^ 0xff, batch.length - 10);
  await t.feed(e1);
  const img = await t.image();
  assert.deepEqual([img.epoch, img.digest, img.bytesDigest, img.state], [0, good.digest, good.digest, 'stale']);
  assert.match(t.resyncs.join(), /digest-mismatch/);
});

test('out-of-order and unknown-epoch batches are parked and break continuity', async () => {
  const t = setup('vm-e');
  const h = new FakeHarvester('vm-e', 500);
  await t.feed(h.epochRecords(pages([[1, 1]])));
  const e1 = h.epochRecords(pages([[1, 2], [2, 2], [3, 2], [4, 2]]), 1);
  await t.feed([e1[0]!, e1[2]!]); // begin, then batch 1 before batch 0
  assert.equal(t.dead.at(-1)?.reason, 'out-of-order');
  assert.equal((await t.image()).state, 'stale');
  const t2 = setup('vm-f');
  const hf = new FakeHarvester('vm-f', 600);
  await t2.feed(hf.epochRecords(pages([[1, 1]])));
  const f1 = hf.epochRecords(pages([[1, 2]]));
  await t2.feed([f1[1]!]); // a batch without its begin
  assert.equal(t2.dead.at(-1)?.reason, 'unknown-epoch');
});

/** Runs `between` once, just before the store's next stale mark reaches Redis (another member acting meanwhile). */
function interleaveBeforeMark(store: StandbyStore, between: () => Promise<void>): { ran: boolean } {
  const state = { ran: false };
  const markStale = StandbyStore.prototype.markStale.bind(store);
  store.markStale = async (...args) => {
    if (!state.ran) {
      state.ran = true;
      await between();
    }
    return markStale(...args);
  };
  return state;
}

test('a gap judged on cached state is not marked when another replicator moved the image on meanwhile (compare-and-set)', async () => {
  // A rebalance overlaps two members on one partition for a moment: A still handles records from its
  // cached view while B, the new owner, applies the same epochs.
  const a = setup('vm-cas');
  const b = setup('vm-cas', a.store.prefix);
  const h = new FakeHarvester('vm-cas', 650);
  await a.feed(h.epochRecords(pages([[1, 1]])));
  const e1 = h.epochRecords(pages([[1, 2], [2, 3]]));
  // A decides from its cache (image at epoch 0, nothing assembled) that the commit of epoch 1 came
  // without its begin; B applies epoch 1 after A's decision, before A's mark reaches Redis.
  let between = interleaveBeforeMark(a.store, () => b.feed(e1));
  assert.equal(await a.applier.handle(e1.at(-1)!, 'vm-cas'), 'done');
  assert.ok(between.ran, 'A judged the commit a gap from its cache and tried to mark the image');
  let img = await a.image();
  assert.deepEqual([img.epoch, img.state, img.digest, img.bytesDigest], [1, 'ok', h.model.digest().toHex(), h.model.digest().toHex()]);
  // A reloaded, found the commit already applied, and parked it as a duplicate: no gap, no resync.
  // (A parked it once before its mark, too: the record is parked before the mark so that a failed send
  // is retried, and B acted after A's check. In production that window is one Redis round trip.)
  assert.deepEqual(a.dead.map((d) => d.reason), ['unknown-epoch', 'duplicate']);
  const gaps = async (t: ReturnType<typeof setup>): Promise<number> => (await t.metrics.gaps.get()).values.reduce((n, v) => n + v.value, 0);
  assert.equal(await gaps(a), 0);
  // The same for the assembly: A saw the begin of epoch 2, then batch 1 without batch 0; B staged
  // batch 0 meanwhile.
  const e2 = h.epochRecords(pages([[1, 6], [2, 7], [3, 8], [4, 9]]), 1); // begin, batch 0..3, commit
  await a.feed([e2[0]!]);
  between = interleaveBeforeMark(a.store, () => b.feed(e2.slice(0, 2)));
  await a.feed(e2.slice(2));
  assert.ok(between.ran, 'A judged batch 1 out of order from its cache');
  img = await a.image();
  assert.deepEqual([img.epoch, img.state, img.digest, img.bytesDigest], [2, 'ok', h.model.digest().toHex(), h.model.digest().toHex()]);
  assert.deepEqual([a.resyncs, b.resyncs], [[], []]);
  assert.equal(await gaps(a), 0);
  // And the image's state: B finds a real gap (epoch 3 is lost) and marks the image stale, while A,
  // from its cache (image fresh at epoch 2), judges a gap of its own. A's mark must not land on B's.
  h.epochRecords(pages([[3, 4]])); // epoch 3 is lost
  const e4 = h.epochRecords(pages([[4, 5]]));
  const e5 = h.epochRecords(pages([[5, 6]]));
  between = interleaveBeforeMark(a.store, () => b.feed(e4.slice(0, 1)));
  await a.feed([e5.at(-1)!]);
  assert.ok(between.ran, 'A judged the commit of epoch 5 a gap from its cache');
  const meta = await a.store.readMeta('vm-cas');
  assert.deepEqual([meta?.epoch, meta?.state], [2, 'stale'], 'the real gap is marked');
  assert.match(meta?.staleReason ?? '', /^missing-epoch: epoch \d+\/4 follows 2/, 'the reason is B\'s, not overwritten by A');
  assert.match(b.resyncs.join(), /missing-epoch/);
  assert.deepEqual([await gaps(a), await gaps(b)], [0, 1]);
});

test('batches staged with their writes in flight (as the replicator pipelines them) give the same image', async () => {
  const t = setup('vm-w');
  const h = new FakeHarvester('vm-w', 700);
  await t.feed(h.epochRecords(pages([[1, 1], [2, 2], [3, 3]])));
  const e1 = h.epochRecords(pages([[1, 0], [2, 5], [3, 6], [10, 7], [11, 8], [700, 9], [1000, 10]]), 2);
  const inFlight: Promise<Error | null>[] = [];
  for (const raw of e1.slice(0, -1)) {
    const rec = await t.applier.parse(raw, 'vm-w');
    assert.ok(rec);
    const r = await t.applier.apply(rec);
    if (typeof r !== 'string') inFlight.push(r.settled);
  }
  assert.equal(inFlight.length, e1.length - 2, 'every batch left its staging write in flight');
  assert.deepEqual(await Promise.all(inFlight), inFlight.map(() => null));
  await t.feed(e1.slice(-1));
  const img = await t.image();
  assert.deepEqual([img.epoch, img.state, img.digest, img.bytesDigest], [1, 'ok', h.model.digest().toHex(), h.model.digest().toHex()]);
});

test('NEGATIVE: a staging write that did not land (a lost batch or page) is caught at the commit; nothing of the epoch applies', async () => {
  for (const lose of ['batch', 'page'] as const) {
    const vm = `vm-lost-${lose}`;
    const t = setup(vm);
    const h = new FakeHarvester(vm, 800);
    await t.feed(h.epochRecords(pages([[1, 1], [2, 2], [3, 3]])));
    const good = await t.image();
    const e1 = h.epochRecords(pages([[1, 4], [2, 5], [3, 6], [4, 7]]), 2);
    await t.feed(e1.slice(0, -1));
    // What a write that failed in flight while a later one landed leaves behind.
    const k = t.store.keys(vm);
    if (lose === 'batch') assert.equal(await db.redis.hdel(k.stagedBatches(800, 1), '0'), 1);
    else assert.equal(await db.redis.del(`${k.stagePrefix(800, 1)}0:3`), 1);
    await t.feed(e1.slice(-1));
    const img = await t.image();
    assert.deepEqual([img.epoch, img.digest, img.bytesDigest, img.state], [0, good.digest, good.digest, 'stale'], lose);
    assert.match(t.resyncs.join(), lose === 'batch' ? /1 of 2 batches are staged/ : /page 0:3 is not staged/);
  }
});

test('a replicator that dies at a random moment (its Redis connection cut, 150 trials) leaves a committed epoch, and its successor catches up', async () => {
  // From Redis's side, kill -9 is a connection that closes: commands already sent run (a MULTI without
  // its EXEC is discarded, a script runs whole), the rest never arrive. Each trial cuts the connection
  // at a random moment while records are handled, checks the image, and a successor resumes from the
  // last record whose effect was durable (or a few records earlier, as an older committed offset would).
  const vm = 'vm-crash';
  const prefix = `crash${Math.random().toString(36).slice(2, 8)}`;
  let seed = 20261125;
  const rnd = (): number => {
    seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0;
    return seed / 2 ** 32;
  };
  const h = new FakeHarvester(vm, 500);
  const records: Buffer[] = [];
  const committed = new Set<string>();
  const addEpoch = (): void => {
    const touched = new Map<number, number>();
    const n = h.epoch === 0 ? 200 : 1 + Math.floor(rnd() * 24);
    for (let i = 0; i < n; i++) touched.set(Math.floor(rnd() * SLOT_PAGES), rnd() < 0.2 ? 0 : 1 + Math.floor(rnd() * 255));
    records.push(...h.epochRecords(touched, 4));
    committed.add(h.model.digest().toHex());
  };
  addEpoch();
  const check = new StandbyStore(db.redis, prefix);
  let resumeAt = 0;
  let midEpochKills = 0;
  const TRIALS = 150;
  for (let trial = 0; trial <= TRIALS; trial++) {
    const last = trial === TRIALS; // the successor that is left to finish
    while (records.length - resumeAt < 40) addEpoch();
    const conn = new Redis(db.server.port, '127.0.0.1', { enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => null, lazyConnect: true });
    await conn.connect();
    const resyncs: string[] = [];
    const applier = new Applier(new StandbyStore(conn, prefix), {
      deadLetter: () => Promise.resolve(),
      requestResync: (v, reason) => { resyncs.push(reason); return Promise.resolve(); },
      processed: () => undefined,
    }, createReplicatorMetrics(), silentLogger, { maxRecordBytes: 1 << 20, resyncRetryMs: 60_000 });
    const timer = last ? null : setTimeout(() => conn.disconnect(), rnd() * 25);
    try {
      for (let i = resumeAt; i < records.length; i++) {
        await applier.handle(records[i]!, vm);
        resumeAt = i + 1;
      }
    } catch {
      // died mid-record
    } finally {
      if (timer) clearTimeout(timer);
      conn.disconnect();
    }
    assert.deepEqual(resyncs, [], `trial ${trial}: a kill is not a gap`);
    const m = await check.readMeta(vm);
    if (m) {
      assert.equal(m.state, 'ok', `trial ${trial}: ${m.staleReason}`);
      assert.ok(committed.has(m.digest), `trial ${trial}: the image's digest ${m.digest} is no committed epoch's`);
      const bytes = await check.computeImageDigest(vm, m.generation, m.slots, m.pageSize);
      assert.equal(bytes.toHex(), m.digest, `trial ${trial}: the pages in Redis hash to the committed digest`);
      if (await check.readAssembly(vm)) midEpochKills++;
    }
    if (last) assert.equal(m?.digest, h.model.digest().toHex(), 'the successor caught up to the newest epoch');
    // An older committed offset: redeliver a few records that were already durable.
    resumeAt = Math.max(0, resumeAt - Math.floor(rnd() * 4));
  }
  assert.ok(midEpochKills >= TRIALS / 4, `kills landed inside epochs (${midEpochKills} of ${TRIALS} left an assembly behind)`);
});
