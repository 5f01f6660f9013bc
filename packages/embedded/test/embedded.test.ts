/**
 * The embedded servers are real: kafkajs talks to the mock cluster over TCP, ioredis to redis-server,
 * and the fault switches do what they say.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { Kafka, logLevel } from 'kafkajs';
import { KafkaApi, KafkaErr, KafkaMock, RedisServer } from '../src/index.ts';

test('kafkajs produces to and consumes from the mock cluster; broker down and up take effect', async () => {
  const mock = await KafkaMock.start({ brokers: 1, topics: [{ name: 'pages', partitions: 2 }] });
  const kafka = new Kafka({ clientId: 't', brokers: mock.brokers, logLevel: logLevel.NOTHING, retry: { retries: 2, initialRetryTime: 50 } });
  const producer = kafka.producer({ allowAutoTopicCreation: false });
  const consumer = kafka.consumer({ groupId: 'g1' });
  try {
    await producer.connect();
    await producer.send({ topic: 'pages', acks: -1, messages: [{ key: 'vm-a', value: Buffer.from('one') }, { key: 'vm-a', value: Buffer.from('two') }] });
    await consumer.connect();
    await consumer.subscribe({ topic: 'pages', fromBeginning: true });
    const got: string[] = [];
    await new Promise<void>((resolve, reject) => {
      consumer.run({ eachMessage: ({ message }) => { got.push(message.value!.toString()); if (got.length === 2) resolve(); return Promise.resolve(); } }).catch(reject);
    });
    assert.deepEqual(got, ['one', 'two'], 'same key, same partition, in order');
    await consumer.disconnect();

    // An injected produce error is retried by the client and the send still lands.
    await mock.pushRequestErrors(KafkaApi.Produce, [KafkaErr.NotLeaderForPartition]);
    await producer.send({ topic: 'pages', acks: -1, messages: [{ key: 'vm-a', value: Buffer.from('three') }] });

    await mock.brokerDown(-1);
    await assert.rejects(producer.send({ topic: 'pages', acks: -1, timeout: 500, messages: [{ key: 'vm-a', value: Buffer.from('lost?') }] }));
    await mock.brokerUp(-1);
    await producer.send({ topic: 'pages', acks: -1, messages: [{ key: 'vm-a', value: Buffer.from('four') }] });
    await assert.rejects(mock.createTopic('bad name', 1), RangeError);
  } finally {
    await consumer.disconnect().catch(() => undefined);
    await producer.disconnect().catch(() => undefined);
    await mock.stop();
  }
});

test('redis-server runs with AOF: an acknowledged write survives SIGKILL and restart', async () => {
  const server = await RedisServer.start();
  const r = new Redis(server.port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 20, retryStrategy: () => 50 });
  try {
    await r.connect();
    const conf = async (k: string): Promise<string | undefined> => ((await r.config('GET', k)) as string[])[1];
    assert.equal(await conf('appendonly'), 'yes');
    assert.equal(await conf('appendfsync'), 'always');
    // Tuned for a page store on a small machine (RedisServerOptions): no LZF, fewer rewrites.
    assert.equal(await conf('rdbcompression'), 'no');
    assert.equal(await conf('auto-aof-rewrite-percentage'), '400');
    await r.set('k', 'v1');
    await server.restart();
    assert.equal(await r.get('k'), 'v1', 'the AOF kept the write');
  } finally {
    r.disconnect();
    await server.stop();
  }
});

test('the mock keeps the newest 4 MiB of a partition with 1 MB record batches, and loses a batch that with the one before it exceeds its 5 MiB', async () => {
  const mock = await KafkaMock.start({ brokers: 1, topics: [{ name: 'pages', partitions: 1 }] });
  const kafka = new Kafka({ clientId: 't', brokers: mock.brokers, logLevel: logLevel.NOTHING, retry: { retries: 2, initialRetryTime: 50 } });
  const producer = kafka.producer({ allowAutoTopicCreation: false });
  const admin = kafka.admin();
  /** Produces one record batch of `bytes` (one request, one message); returns its offset. */
  const send = async (bytes: number): Promise<number> => {
    const [meta] = await producer.send({ topic: 'pages', acks: -1, messages: [{ value: Buffer.alloc(bytes, 1) }] });
    return Number(meta!.baseOffset);
  };
  const logStart = async (): Promise<number> => Number((await admin.fetchTopicOffsets('pages'))[0]!.low);
  try {
    await producer.connect();
    await admin.connect();
    // What the pipeline relies on (1 000 000-byte requests, a 4 MiB replication window): however
    // many batches came before, the newest 4 MiB are still there for a replicator that is behind.
    const offsets: number[] = [];
    for (let i = 0; i < 12; i++) {
      offsets.push(await send(1_000_000));
      if (i >= 4) assert.ok(await logStart() <= offsets[i - 4]!, `after batch ${i}: the log starts at ${await logStart()}, past batch ${i - 4} at ${offsets[i - 4]}`);
    }
    // The limit that made 4 MiB requests lose records: a 4 MiB batch and a 2 MiB one after it
    // exceed 5 MiB, and the trim that drops the first moves the log start past the second as well.
    await send(4 << 20);
    const second = await send(2 << 20);
    assert.ok(await logStart() > second, `the 2 MiB batch at ${second} is gone (log start ${await logStart()}): if this fails, the mock no longer has this limit (kafka-mock.c)`);
  } finally {
    await admin.disconnect().catch(() => undefined);
    await producer.disconnect().catch(() => undefined);
    await mock.stop();
  }
});

test('Ctrl-C on a command without a signal handler of its own: the embedded redis-server dies and its temp directory goes (npm run pipeline left it)', async () => {
  const server = fileURLToPath(new URL('../src/redis-server.ts', import.meta.url));
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e',
    `import { RedisServer } from '${server}'; const s = await RedisServer.start(); console.log(s.dir + ' ' + s.pid); setInterval(() => {}, 1000);`],
  { stdio: ['ignore', 'pipe', 'pipe'] });
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); if (out.includes('\n')) resolve(out.trim()); });
    child.once('exit', (c) => reject(new Error(`exited early (${c})`)));
  });
  const [dir, pid] = line.split(' ');
  assert.ok(existsSync(dir!), `${dir} exists while the server runs`);
  child.kill('SIGINT');
  const signal = await new Promise<NodeJS.Signals | null>((r) => child.once('exit', (_c, s) => r(s)));
  assert.equal(signal, 'SIGINT', 'the default action still ends the process');
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(existsSync(`/proc/${pid}`) && !readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z '), false, 'redis-server is gone');
  assert.equal(existsSync(dir!), false, `${dir} was removed`);
});
