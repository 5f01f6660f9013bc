/**
 * The standby Redis loses or rolls back data under a running replicator: the image is never left
 * claiming to be fresh, and a baseline is asked for once.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { redisForTests } from '@ckpt/embedded/test-support';
import { applierHarness } from './applier-harness.ts';
import { FakeHarvester } from './fake-harvester.ts';

const db = redisForTests();

/** recordsFlowingMs 0: every VM counts as idle (its harvester gone), so the checks act at once. */
const setup = (vm: string, recordsFlowingMs = 0): ReturnType<typeof applierHarness> => applierHarness(db.redis, vm, { recordsFlowingMs });

const pages = (entries: [number, number][]): Map<number, number> => new Map(entries);

test('Redis restarted empty (its cache reloaded after the reconnect): the epochs that follow ask for one baseline, not one each', async () => {
  const t = setup('vm-empty');
  const h = new FakeHarvester('vm-empty', 700);
  await t.feed(h.epochRecords(pages([[1, 1], [2, 2]])));
  await t.feed(h.epochRecords(pages([[3, 3]])));
  await t.store.deleteAll(); // the restart without persistence
  t.applier.forget(); // what the replicator does after the connection error
  for (let i = 0; i < 5; i++) await t.feed(h.epochRecords(pages([[4 + i, 9]])));
  assert.equal(t.resyncs.length, 1, `each extra request can start another full baseline: ${JSON.stringify(t.resyncs)}`);
});

test('page keys lost from a live image (evicted, deleted) are found by a scrub: the image is marked stale and a baseline asked for', async () => {
  const t = setup('vm-evict');
  const h = new FakeHarvester('vm-evict', 800);
  await t.feed(h.epochRecords(pages([[1, 1], [2, 2], [3, 3], [600, 4]])));
  await t.feed(h.epochRecords(pages([[2, 5]])));
  assert.equal((await t.applier.scrub('vm-evict')).missing, 0, 'a whole image: nothing found');
  await db.redis.del(t.store.keys('vm-evict').page(800, 0, 600)); // evicted
  // Deltas that do not touch the page apply as before: nothing else notices.
  await t.feed(h.epochRecords(pages([[3, 6]])));
  assert.equal((await t.store.readMeta('vm-evict'))?.state, 'ok');
  const found = await t.applier.scrub('vm-evict');
  assert.equal(found.missing, 1);
  const m = await t.store.readMeta('vm-evict');
  assert.equal(m?.state, 'stale');
  assert.match(m?.staleReason ?? '', /pages-lost/);
  assert.equal(t.resyncs.length, 1);
  const gaps = (await t.metrics.gaps.get()).values.find((v) => v.labels.reason === 'pages-lost')?.value;
  assert.equal(gaps, 1);
  // The next epochs wait for the baseline, which heals the image.
  await t.feed(h.epochRecords(pages([[4, 7]])));
  assert.equal((await t.store.readMeta('vm-evict'))?.state, 'stale');
  const h2 = new FakeHarvester('vm-evict', 801);
  await t.feed(h2.epochRecords(pages([[1, 1], [600, 4]])));
  assert.equal((await t.store.readMeta('vm-evict'))?.state, 'ok');
  assert.equal((await t.applier.scrub('vm-evict')).missing, 0);
});

test('pages lost while records flow: the scrub only notes it, and the next delta\'s begin marks the image stale in the records\' order', async () => {
  const t = setup('vm-flow', 60_000);
  const h = new FakeHarvester('vm-flow', 810);
  await t.feed(h.epochRecords(pages([[1, 1], [5, 2]])));
  await db.redis.del(t.store.keys('vm-flow').page(810, 0, 5));
  assert.equal((await t.applier.scrub('vm-flow')).missing, 1);
  assert.equal((await t.store.readMeta('vm-flow'))?.state, 'ok', 'not marked beside records in flight');
  assert.equal(t.resyncs.length, 0);
  const [begin, ...rest] = h.epochRecords(pages([[1, 3]]));
  await t.feed([begin!]);
  const m = await t.store.readMeta('vm-flow');
  assert.equal(m?.state, 'stale', 'marked at the begin');
  assert.match(m?.staleReason ?? '', /^pages-lost: 1 page\(s\)/);
  assert.equal(t.resyncs.length, 1);
  await t.feed(rest);
  assert.equal((await t.store.readMeta('vm-flow'))?.epoch, 0, 'the epoch was not applied over the hole');
});

test('an image that vanishes without standby forget (Redis lost it) stays reported, stale, and asks for a baseline; a forgotten one does not', async () => {
  const t = setup('vm-gone');
  const h = new FakeHarvester('vm-gone', 820);
  await t.feed(h.epochRecords(pages([[1, 1]])));
  await t.feed(h.epochRecords(pages([[2, 2]])));
  const age = async (): Promise<string | undefined> => /^ckpt_replicator_standby_age_seconds\{vm="vm-gone"\} (\S+)$/m.exec(await t.metrics.registry.metrics())?.[1];
  assert.ok(await age() !== undefined);
  for (const key of await db.redis.keys(`${t.store.prefix}:*`)) await db.redis.del(key); // lost, no tombstone
  assert.deepEqual(await t.store.wereForgotten(['vm-gone']), [false]);
  // A Redis restart fails the records in flight, and the replicator then clears its cache (forget()):
  // the check must not depend on it (it returned false, and the VM was dropped as never made).
  t.applier.forget();
  assert.equal(await t.applier.imageLost('vm-gone'), true, 'kept');
  t.applier.forget();
  assert.equal(await t.applier.imageLost('vm-gone'), true, 'still kept at the next check, the cache cleared again');
  assert.ok(t.resyncs.length >= 1, 'a baseline asked for');
  const gaps = (await t.metrics.gaps.get()).values.find((v) => v.labels.reason === 'image-lost')?.value;
  assert.equal(gaps, 1, 'counted once');
  assert.match(await t.metrics.registry.metrics(), /^ckpt_replicator_vm_stale\{vm="vm-gone"\} 1$/m);
  assert.ok(await age() !== undefined, 'its standby age is still reported, so the RPO alert can fire');
  // A VM this instance never knew an image of is not kept (junk ids).
  assert.equal(await t.applier.imageLost('vm-never'), false);
  // standby forget leaves a tombstone that tells the two apart.
  await db.redis.set(t.store.keys('vm-x').meta, 'x');
  await t.store.deleteVm('vm-x');
  assert.deepEqual(await t.store.wereForgotten(['vm-x', 'vm-gone']), [true, false]);

  // The image comes back without this instance (another member applied a baseline, or a backup put
  // back): the next check takes Redis's view, and the VM is no longer stale (it stayed stale for good).
  const other = applierHarness(db.redis, 'vm-gone', {}, t.store.prefix);
  await other.feed(new FakeHarvester('vm-gone', 821).epochRecords(pages([[1, 1]])));
  assert.equal(await t.applier.checkRolledBack('vm-gone'), false);
  assert.match(await t.metrics.registry.metrics(), /^ckpt_replicator_vm_stale\{vm="vm-gone"\} 0$/m);
  // A forgotten VM's tombstone goes with the next baseline: a loss of the new image is a loss again.
  await t.store.deleteVm('vm-gone');
  assert.deepEqual(await t.store.wereForgotten(['vm-gone']), [true]);
  await other.feed(new FakeHarvester('vm-gone', 822).epochRecords(pages([[1, 1]])));
  assert.deepEqual(await t.store.wereForgotten(['vm-gone']), [false]);
});

test('Redis rolled back under a VM whose harvester is gone: the gauges follow Redis, not the epoch last applied', async () => {
  const t = setup('vm-rb');
  const h = new FakeHarvester('vm-rb', 900);
  await t.feed(h.epochRecords(pages([[1, 1]])));
  const k = t.store.keys('vm-rb');
  const old = await db.redis.hgetallBuffer(k.meta); // the older snapshot: epoch 0
  const oldPage = await db.redis.getBuffer(k.page(900, 0, 1));
  for (let i = 0; i < 3; i++) await t.feed(h.epochRecords(pages([[1, 10 + i]])));
  // Redis comes back on the older snapshot; no records arrive (the primary died).
  await db.redis.del(k.meta);
  await db.redis.hset(k.meta, old);
  await db.redis.set(k.page(900, 0, 1), oldPage!);
  const epochGauge = async (): Promise<number> => Number(/^ckpt_replicator_last_applied_epoch\{vm="vm-rb"\} (\S+)$/m.exec(await t.metrics.registry.metrics())?.[1]);
  assert.equal(await epochGauge(), 3, 'before the check: the epoch last applied');
  assert.equal(await t.applier.checkRolledBack('vm-rb'), true);
  assert.equal(await epochGauge(), 0, 'the epoch Redis holds');
  assert.equal(await t.applier.checkRolledBack('vm-rb'), false, 'once');

  // The same after the cache was cleared (a failed record, a group join): the gauges still follow Redis.
  const h2 = new FakeHarvester('vm-rb', 901);
  await t.feed(h2.epochRecords(pages([[1, 1]])));
  const old2 = await db.redis.hgetallBuffer(k.meta);
  for (let i = 0; i < 2; i++) await t.feed(h2.epochRecords(pages([[2, 20 + i]])));
  assert.equal(await epochGauge(), 2);
  await db.redis.del(k.meta);
  await db.redis.hset(k.meta, old2);
  t.applier.forget();
  await t.applier.checkRolledBack('vm-rb');
  assert.equal(await epochGauge(), 0, 'the epoch Redis holds');
});

test('the scrub goes in steps of about 250 fields and hands each step\'s count to its pacer', async () => {
  const t = setup('vm-pace');
  const h = new FakeHarvester('vm-pace', 830);
  await t.feed(h.epochRecords(new Map(Array.from({ length: 900 }, (_, i) => [i, i + 1] as [number, number]))));
  const steps: number[] = [];
  const found = await t.store.missingPages('vm-pace', 830, (n) => { steps.push(n); return Promise.resolve(); });
  assert.deepEqual(found, { missing: 0, fields: [] });
  assert.ok(steps.length >= 2 && steps.every((n) => n > 0 && n <= 400), `steps ${steps.join(',')}`);
  assert.ok(steps.reduce((a, b) => a + b, 0) >= 900, 'every field counted');
});
