/**
 * ControlListener against the embedded broker: a new harvester process reads the control topic from
 * where it ended, so it neither replays old markers (a restart held its window shut while it did) nor
 * misses one produced just after it started.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Kafka, logLevel } from 'kafkajs';
import { silentLogger } from '@ckpt/common';
import { KafkaMock } from '@ckpt/embedded';
import { encodeControlRecord, type AppliedMarker } from '@ckpt/proto';
import { ControlListener } from './control-listener.ts';

const marker = (epoch: number): AppliedMarker => ({ generation: 7, epoch, part: 0, imageGeneration: 7, imageEpoch: epoch, stale: false, atMs: Date.now() });

test('a new listener starts where the control topic ends: no replay of old markers, and the first new one arrives', async () => {
  const mock = await KafkaMock.start({ brokers: 1, topics: [{ name: 'ctl', partitions: 2 }] });
  const kafka = new Kafka({ clientId: 'control-listener-test', brokers: mock.brokers, logLevel: logLevel.NOTHING });
  const producer = kafka.producer({ idempotent: false, allowAutoTopicCreation: false });
  const listener = new ControlListener(kafka, 'ctl', silentLogger);
  const seen: number[] = [];
  try {
    await producer.connect();
    // A previous process's history: 2000 markers of the same VM, and other VMs' on the other partition.
    for (let b = 0; b < 4; b++) {
      await producer.send({ topic: 'ctl', acks: -1, messages: Array.from({ length: 500 }, (_, i) => ({ key: 'vm-a', partition: 0, value: Buffer.from(encodeControlRecord({ vm: 'vm-a', kind: 'applied', applied: marker(b * 500 + i) })) })) });
      await producer.send({ topic: 'ctl', acks: -1, messages: [{ key: 'vm-b', partition: 1, value: Buffer.from(encodeControlRecord({ vm: 'vm-b', kind: 'applied', applied: marker(b) })) }] });
    }
    listener.register('vm-a', (m) => seen.push(m.epoch));
    await listener.start();
    // Produced as soon as start() returns, as a harvester's first records (and the replicator's answer) would be.
    await producer.send({ topic: 'ctl', acks: -1, messages: [{ key: 'vm-a', partition: 0, value: Buffer.from(encodeControlRecord({ vm: 'vm-a', kind: 'applied', applied: marker(99_999) })) }] });
    const deadline = Date.now() + 20_000;
    while (!seen.includes(99_999) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(seen, [99_999], `markers seen: ${seen.length} (first ${seen.slice(0, 3).join(', ')})`);
  } finally {
    await listener.stop();
    await producer.disconnect();
    await mock.stop();
  }
});
