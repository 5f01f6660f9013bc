/**
 * Redis AUTH, for real: a redis-server that requires a password, a replicator process that reads it
 * from REPLICATOR_REDIS_PASSWORD_FILE and applies an epoch, and a client without it that is refused.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Redis } from 'ioredis';
import { Kafka, logLevel } from 'kafkajs';
import { parseConfig, redisClientOptions, REDIS_SCHEMA } from '@ckpt/common';
import { StandbyStore } from '@ckpt/standby';
import { pollMeta } from './poll-meta.ts';
import { FakeHarvester } from '../../../services/replicator/test/fake-harvester.ts';
import { spawnReplicator, startServers, stopChild } from '../src/index.ts';

test('a replicator reads the Redis password from its file and applies epochs to a server that requires AUTH', async () => {
  const servers = await startServers({ partitions: 1 });
  const admin = new Redis(servers.redisUrl);
  const password = `pw-${process.pid}-${Date.now()}`;
  const pwDir = mkdtempSync(join(tmpdir(), 'ckpt-auth-'));
  const pwFile = join(pwDir, 'redis-password');
  writeFileSync(pwFile, `${password}\n`);
  // Existing connections stay authenticated; every new one must AUTH.
  await admin.config('SET', 'requirepass', password);
  const replicator = spawnReplicator(servers, { REPLICATOR_REDIS_PASSWORD_FILE: pwFile });
  let log = '';
  let passwordLogged = false; // over the whole log, not only the tail kept for messages
  replicator.stderr?.on('data', (d: Buffer) => {
    log = (log + d.toString()).slice(-4000);
    if (log.includes(password)) passwordLogged = true;
  });
  const producer = new Kafka({ clientId: 'auth-test', brokers: servers.brokers, logLevel: logLevel.NOTHING }).producer({ idempotent: false });
  try {
    const anonymous = new Redis(servers.redisUrl, { lazyConnect: true, enableReadyCheck: false, maxRetriesPerRequest: 0, retryStrategy: () => null });
    anonymous.on('error', () => undefined);
    await anonymous.connect();
    await assert.rejects(anonymous.ping(), /NOAUTH/, 'a client without the password is refused');
    anonymous.disconnect();
    const withFile = redisClientOptions({ ...parseConfig(REDIS_SCHEMA), redisPasswordFile: pwFile }, servers.redisUrl);
    const client = new Redis(withFile.url, withFile.options);
    assert.equal(await client.ping(), 'PONG', 'the options built from the password file authenticate');
    client.disconnect();

    const h = new FakeHarvester('auth-vm', 3);
    const records = h.epochRecords(new Map([[1, 5], [9, 6]]));
    await producer.connect();
    await producer.send({ topic: servers.topics.pages, acks: -1, messages: records.map((value) => ({ key: 'auth-vm', value })) });
    const store = new StandbyStore(admin, servers.redisPrefix);
    const meta = await pollMeta(store, 'auth-vm', (m) => m !== null, 45_000);
    assert.ok(meta, `the replicator applied nothing in 45 s; its log: ${log}`);
    assert.equal(meta.digest, h.model.digest().toHex());
    assert.ok(!passwordLogged, 'the password never reaches the log');
  } finally {
    await producer.disconnect().catch(() => undefined);
    await stopChild(replicator);
    admin.disconnect();
    await servers.stop();
    rmSync(pwDir, { recursive: true, force: true });
  }
});

