/**
 * The run claim (run-claim.ts) against a real redis-server: a second restorer waits for a claim whose
 * holder stopped renewing and takes it, refuses one still renewed, and a holder whose claim is taken
 * is told at once; Redis out of reach leaves the claim's holder running; `standby forget` keeps it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Redis } from 'ioredis';
import { CkptError, type Logger } from '@ckpt/common';
import { redisForTests } from '@ckpt/embedded/test-support';
import { StandbyStore } from '@ckpt/standby';
import { createRestorerMetrics, RunClaim } from '../src/index.ts';

let store: StandbyStore;
const db = redisForTests(({ redis }) => { store = new StandbyStore(redis); });
const TTL = 1000;

async function code(p: Promise<unknown>): Promise<CkptError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof CkptError, String(err));
    return err;
  }
  assert.fail('expected a CkptError');
}

async function gauge(metrics: ReturnType<typeof createRestorerMetrics>): Promise<number> {
  return (await metrics.runClaimHeld.get()).values[0]!.value;
}

test('a claim that is renewed outlives its TTL; a second restorer waits for it and refuses (ALREADY_RUNNING), then takes it once released', async () => {
  const metrics = createRestorerMetrics();
  const first = await RunClaim.take(store, 'vm-c1', { ttlMs: TTL, metrics });
  try {
    assert.equal(await db.redis.get(store.keys('vm-c1').runClaim), first.token);
    assert.equal(await gauge(metrics), 1);
    const t0 = performance.now();
    const err = await code(RunClaim.take(store, 'vm-c1', { ttlMs: TTL }));
    const waited = performance.now() - t0;
    assert.equal(err.code, 'CKPT_ERR_RESTORE_ALREADY_RUNNING', err.message);
    assert.ok(err.message.includes(first.token), `names the holder: ${err.message}`);
    // Its TTL plus 2 s: three TTLs, so the first claim was renewed while it waited.
    assert.ok(waited >= TTL + 2000 && waited < TTL + 6000, `waited ${waited.toFixed(0)} ms`);
    assert.equal(first.lostTo, undefined, 'a waiter takes nothing from the holder');
    assert.equal(await db.redis.get(store.keys('vm-c1').runClaim), first.token);

    const second = RunClaim.take(store, 'vm-c1', { ttlMs: TTL });
    await new Promise((r) => setTimeout(r, 300));
    await first.release();
    assert.equal(await gauge(metrics), 0);
    const taken = await second;
    assert.equal(await db.redis.get(store.keys('vm-c1').runClaim), taken.token, 'released, then taken by the waiter');
    await taken.release();
    assert.equal(await db.redis.exists(store.keys('vm-c1').runClaim), 0, 'release deletes it');
  } finally {
    await first.release();
  }
});

test('a claim whose holder died (no renewals) expires and the next restorer takes it', async () => {
  await db.redis.set(store.keys('vm-c2').runClaim, 'run-gone-1-x', 'PX', 600);
  const t0 = performance.now();
  const c = await RunClaim.take(store, 'vm-c2', { ttlMs: TTL });
  try {
    assert.ok(performance.now() - t0 >= 400, 'it waited for the old claim to expire');
    assert.equal(await db.redis.get(store.keys('vm-c2').runClaim), c.token);
  } finally {
    await c.release();
  }
});

test('a holder whose claim is taken learns it within a renewal (its signal aborts), and does not delete the new holder\'s claim', async () => {
  const metrics = createRestorerMetrics();
  const c = await RunClaim.take(store, 'vm-c3', { ttlMs: TTL, metrics });
  await db.redis.set(store.keys('vm-c3').runClaim, 'run-other-2-y', 'PX', 60_000);
  try {
    const t0 = performance.now();
    await new Promise<void>((resolve) => {
      c.lostSignal.addEventListener('abort', () => resolve(), { once: true });
      setTimeout(resolve, 3 * TTL).unref();
    });
    assert.ok(c.lostSignal.aborted && performance.now() - t0 < TTL, `told within a third of the TTL or so (${(performance.now() - t0).toFixed(0)} ms)`);
    assert.equal(c.lostTo, 'run-other-2-y');
    assert.equal(await gauge(metrics), 0);
  } finally {
    await c.release();
  }
  assert.equal(await db.redis.get(store.keys('vm-c3').runClaim), 'run-other-2-y', 'the other holder keeps its claim');
  await db.redis.del(store.keys('vm-c3').runClaim);
});

test('standby forget keeps the run claim; a claim removed by hand is taken again by its holder at the next renewal', async () => {
  const c = await RunClaim.take(store, 'vm-c4', { ttlMs: TTL });
  try {
    await db.redis.set(store.keys('vm-c4').meta, 'x');
    assert.ok(await store.deleteVm('vm-c4') >= 1);
    assert.equal(await db.redis.get(store.keys('vm-c4').runClaim), c.token, 'forget deletes the image, not who runs the guest');
    await db.redis.del(store.keys('vm-c4').runClaim);
    await new Promise((r) => setTimeout(r, TTL / 3 + 300));
    assert.equal(await db.redis.get(store.keys('vm-c4').runClaim), c.token, 'taken again at the next renewal');
    assert.equal(c.lostTo, undefined);
  } finally {
    await c.release();
  }
});

test('Redis out of reach: the holder keeps its guest (no abort), reports the claim as not held past its TTL, and renews once Redis answers', async () => {
  const redis = new Redis(db.server.port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false });
  redis.on('error', () => undefined);
  await redis.connect();
  const metrics = createRestorerMetrics();
  const warnings: string[] = [];
  const log: Logger = { debug: () => undefined, info: () => undefined, warn: (m: string) => void warnings.push(m), error: () => undefined, child: () => log };
  const c = await RunClaim.take(new StandbyStore(redis), 'vm-c5', { ttlMs: TTL, metrics, log });
  try {
    redis.disconnect();
    await new Promise((r) => setTimeout(r, TTL * 2));
    assert.equal(c.lostSignal.aborted, false, 'Redis out of reach is not a lost claim');
    assert.equal(await gauge(metrics), 0, 'not held past its TTL');
    assert.equal(warnings.filter((w) => /cannot renew vm-c5's run claim/.test(w)).length, 1, `said once: ${warnings.join(' | ')}`);
    await redis.connect();
    await new Promise((r) => setTimeout(r, TTL / 3 + 400));
    assert.equal(await gauge(metrics), 1, 'renewed again');
    assert.equal(await db.redis.get(store.keys('vm-c5').runClaim), c.token, 'the expired claim was taken again');
    assert.ok(warnings.some((w) => /renewed again \(it had expired/.test(w)), warnings.join(' | '));
  } finally {
    await c.release();
    redis.disconnect();
  }
});

test('a signal ends the wait for another holder\'s claim: INTERRUPTED, and that claim is left alone', async () => {
  await db.redis.set(store.keys('vm-c6').runClaim, 'run-alive-3-z', 'PX', 60_000);
  const ac = new AbortController();
  setTimeout(() => ac.abort('SIGTERM'), 300);
  const err = await code(RunClaim.take(store, 'vm-c6', { ttlMs: TTL, signal: ac.signal }));
  assert.equal(err.code, 'CKPT_ERR_RESTORE_INTERRUPTED');
  assert.match(err.message, /interrupted \(SIGTERM\) while it waited for run-alive-3-z's run claim/);
  assert.equal(await db.redis.get(store.keys('vm-c6').runClaim), 'run-alive-3-z');
  await db.redis.del(store.keys('vm-c6').runClaim);
});
