/**
 * redisSafety() against a real redis-server whose settings the test changes with CONFIG SET: an
 * allkeys-* policy with a memory limit evicts pages, volatile-* risks the fence, AOF off is reported.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { redisForTests } from '@ckpt/embedded/test-support';
import { evictionProblem, redisSafety, safetyFromInfo } from '../src/index.ts';

const db = redisForTests();

test('a test Redis as started (noeviction, no limit, AOF on) is safe', async () => {
  const s = await redisSafety(db.redis);
  assert.deepEqual(s, { evictionPolicy: 'noeviction', maxmemoryBytes: 0, evictsPages: false, evictionRisk: null, aof: true });
});

test('eviction policies and AOF as the server reports them after CONFIG SET', async () => {
  const r = db.redis;
  try {
    await r.config('SET', 'maxmemory-policy', 'allkeys-lru');
    let s = await redisSafety(r);
    assert.equal(s.evictsPages, false, 'no limit: nothing is evicted yet');
    assert.match(s.evictionRisk ?? '', /allkeys-lru: no memory limit is set now, but once one is, Redis evicts standby pages/);
    await r.config('SET', 'maxmemory', String(1 << 30));
    s = await redisSafety(r);
    assert.equal(s.evictsPages, true);
    assert.equal(s.maxmemoryBytes, 1 << 30);
    assert.match(evictionProblem(s), /^Redis may evict standby pages \(maxmemory-policy allkeys-lru, maxmemory 1073741824 bytes\): .*Set maxmemory-policy noeviction/);
    await r.config('SET', 'maxmemory-policy', 'volatile-ttl');
    s = await redisSafety(r);
    assert.equal(s.evictsPages, false);
    assert.match(s.evictionRisk ?? '', /volatile-ttl: under memory pressure Redis evicts keys with a time to live, such as a restorer's fence/);
    await r.config('SET', 'appendonly', 'no');
    s = await redisSafety(r);
    assert.equal(s.aof, false);
  } finally {
    await r.config('SET', 'maxmemory-policy', 'noeviction');
    await r.config('SET', 'maxmemory', '0');
    await r.config('SET', 'appendonly', 'yes');
  }
});

test('INFO text without the fields (an old or stripped-down server) reads as unknown, not as safe to evict', () => {
  const s = safetyFromInfo('# Memory\r\nused_memory:1000\r\n', '# Persistence\r\n');
  assert.deepEqual(s, { evictionPolicy: 'unknown', maxmemoryBytes: 0, evictsPages: false, evictionRisk: null, aof: false });
});
