/**
 * A pipeline, bench or drill run pointed at real servers (KAFKA_BROKERS, REDIS_URL) must not touch a
 * deployment that shares them: it uses its own topics, consumer group and Redis key prefix, and
 * deletes its keys afterwards. The embedded broker and redis-server stand in for the real ones here.
 * (The embedded broker cannot create topics through the admin API, so the path that creates the run's
 * own topics is exercised only for its error; CKPT_RUN_TOPICS names topics made in advance.)
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { freePort, KafkaMock, RedisServer } from '@ckpt/embedded';
import { startServers } from '../src/index.ts';

test('against KAFKA_BROKERS and REDIS_URL a run keeps to its own topics, group and keys, and deletes its keys after', async () => {
  const kafka = await KafkaMock.start({ brokers: 1, topics: ['pre.pages', 'pre.control', 'pre.dead'].map((name) => ({ name, partitions: 1 })) });
  const redisServer = await RedisServer.start();
  const redis = new Redis(redisServer.url);
  try {
    await redis.set('ckpt:{vm-0}:meta', 'production');
    const env = { KAFKA_BROKERS: kafka.brokers.join(','), REDIS_URL: redisServer.url, CKPT_RUN_TOPICS: 'pre' };
    const a = await startServers({ partitions: 1, env });
    const b = await startServers({ partitions: 1, env });
    try {
      assert.deepEqual(a.topics, { pages: 'pre.pages', control: 'pre.control', deadLetter: 'pre.dead' });
      assert.equal(a.embeddedKafka, false);
      assert.match(a.groupId, /^ckpt-run-[0-9a-f]{8}$/);
      assert.match(a.redisPrefix, /^ckpt-run-[0-9a-f]{8}$/);
      assert.notEqual(a.groupId, b.groupId, 'each run has its own group');
      assert.notEqual(a.redisPrefix, b.redisPrefix, 'and its own keys');
      assert.match(a.description, /KAFKA_BROKERS/);
      assert.match(a.description, /REDIS_URL/);
      await redis.set(`${a.redisPrefix}:{vm-0}:meta`, 'run a');
      await redis.set(`${b.redisPrefix}:{vm-0}:meta`, 'run b');
    } finally {
      await a.stop();
    }
    assert.equal(await redis.get(`${a.redisPrefix}:{vm-0}:meta`), null, 'the run deleted its keys');
    assert.equal(await redis.get(`${b.redisPrefix}:{vm-0}:meta`), 'run b', 'and only its own');
    assert.equal(await redis.get('ckpt:{vm-0}:meta'), 'production');
    await b.stop();
  } finally {
    redis.disconnect();
    await redisServer.stop();
    await kafka.stop();
  }
});

test('a run that cannot create its own topics says so and names the way out', async () => {
  const kafka = await KafkaMock.start({ brokers: 1, topics: [{ name: 'other', partitions: 1 }] });
  try {
    await assert.rejects(startServers({ partitions: 1, env: { KAFKA_BROKERS: kafka.brokers.join(','), REDIS_URL: 'redis://127.0.0.1:1' } }),
      /cannot create this run's topics ckpt-run-[0-9a-f]{8}\.pages.*KAFKA_BROKERS.*CKPT_RUN_TOPICS/s);
  } finally {
    await kafka.stop();
  }
});

test('a Kafka that cannot be reached is named as such, not as missing rights to create topics', async () => {
  const port = await freePort(); // nothing listens there
  await assert.rejects(startServers({ partitions: 1, env: { KAFKA_BROKERS: `127.0.0.1:${port}`, REDIS_URL: 'redis://127.0.0.1:1' } }),
    (err: Error) => /^cannot connect to Kafka at 127\.0\.0\.1:\d+ \(KAFKA_BROKERS\): .*ECONNREFUSED/s.test(err.message) && !/create/.test(err.message));
});

test('npm run pipeline --json against a Redis it cannot reach: exit 1, named, and the last line is one JSON object saying so', () => {
  const cli = fileURLToPath(new URL('../src/cli.ts', import.meta.url));
  const r = spawnSync(process.execPath, ['--import', 'tsx', cli, '--source', 'sim', '--duration-s', '1', '--json'], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, REDIS_URL: 'redis://127.0.0.1:1' } });
  assert.equal(r.status, 1, r.stderr);
  const last = JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '') as { failed: boolean; standbyMatches: boolean; message: string; code: string; retriable: boolean };
  assert.equal(last.failed, true);
  // The same failure keys as npm run harvest's (jsonFailureLine).
  assert.equal(last.code, 'CKPT_ERR_PIPELINE_FAILED');
  assert.equal(last.retriable, false);
  assert.equal(last.standbyMatches, false);
  assert.match(last.message, /cannot connect to Redis at redis:\/\/127\.0\.0\.1:1 \(REDIS_URL\)/);
  // The real error is the first thing said: no warning about the run's keys in a Redis never reached.
  assert.match(r.stderr, /cannot connect to Redis at/);
  assert.doesNotMatch(r.stderr, /could not delete this run's Redis keys/);
});
