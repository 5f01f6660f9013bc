/**
 * LogStartOffsets against the embedded broker (librdkafka's mock keeps 5 MiB per partition): the log
 * start offset is 0 on a fresh partition and moves past the records retention dropped.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Kafka, logLevel } from 'kafkajs';
import { KafkaMock } from '@ckpt/embedded';
import { LogStartOffsets } from './log-start.ts';

test('the log start offset moves past what retention dropped; a closed probe refuses', async () => {
  const mock = await KafkaMock.start({ brokers: 1, topics: [{ name: 'ls', partitions: 2 }] });
  const kafka = new Kafka({ clientId: 'log-start-test', brokers: mock.brokers, logLevel: logLevel.NOTHING });
  const producer = kafka.producer({ idempotent: false, allowAutoTopicCreation: false });
  const probe = new LogStartOffsets(kafka, 'ls');
  try {
    await producer.connect();
    assert.equal(await probe.of(0), 0n);
    const value = Buffer.alloc(512 * 1024, 7);
    for (let i = 0; i < 16; i++) await producer.send({ topic: 'ls', acks: -1, messages: [{ partition: 0, value }] }); // 8 MiB
    const low = await probe.of(0);
    assert.ok(low > 0n && low < 16n, `log start ${low} after 8 MiB into a 5 MiB partition`);
    assert.equal(await probe.of(1), 0n, 'the other partition keeps everything');
    await assert.rejects(probe.of(7), /no partition 7/);
  } finally {
    await probe.close();
    await probe.close();
    await producer.disconnect();
    await mock.stop();
  }
  await assert.rejects(probe.of(0), /closed/);
});
