/**
 * ControlListener against the embedded broker: a new harvester process reads the control topic from
 * where it ended, so it neither replays old markers (a restart held its window shut while it did) nor
 * misses one produced just after it started.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Kafka, logLevel } from 'kafkajs';
import { createLogger, silentLogger } from '@ckpt/common';
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

test('stop() deletes the process\'s own consumer group once its consumer left (one per harvester restart piled up on the brokers), and gives up within 3 s on a broker that cannot', async () => {
  // The embedded broker answers no DeleteGroups (nor ListGroups): the order of calls is checked on a stand-in.
  const calls: string[] = [];
  const fake = {
    consumer: () => ({
      connect: () => Promise.resolve(), subscribe: () => Promise.resolve(), run: () => Promise.resolve(), seek: () => undefined,
      disconnect: () => { calls.push('consumer.disconnect'); return Promise.resolve(); },
    }),
    admin: () => ({
      connect: () => { calls.push('admin.connect'); return Promise.resolve(); },
      fetchTopicOffsets: () => Promise.resolve([{ partition: 0, offset: '0' }]),
      deleteGroups: (ids: string[]) => { calls.push(`deleteGroups ${ids.join(',')}`); return Promise.resolve([]); },
      disconnect: () => { calls.push('admin.disconnect'); return Promise.resolve(); },
    }),
  } as unknown as Kafka;
  // Never started (its start failed): no group on the broker, nothing to delete.
  const unstarted = new ControlListener(fake, 'ctl', silentLogger);
  await unstarted.stop();
  assert.deepEqual(calls, ['consumer.disconnect']);
  calls.length = 0;
  const listener = new ControlListener(fake, 'ctl', silentLogger);
  await listener.start();
  calls.length = 0;
  await listener.stop();
  assert.match(listener.groupId, /^ckpt-harvester-[0-9a-f-]{36}$/);
  assert.deepEqual(calls, ['consumer.disconnect', 'admin.connect', `deleteGroups ${listener.groupId}`, 'admin.disconnect']);
  // Against the embedded broker, which refuses the request: stop() returns at once, with a line saying so.
  const mock = await KafkaMock.start({ brokers: 1, topics: [{ name: 'ctl', partitions: 1 }] });
  const lines: string[] = [];
  const real = new ControlListener(new Kafka({ clientId: 'control-listener-test', brokers: mock.brokers, logLevel: logLevel.NOTHING }), 'ctl',
    createLogger({ service: 'harvester' }, { level: 'info', write: (l) => lines.push(l) }));
  try {
    await real.start();
    const t0 = performance.now();
    await real.stop();
    assert.ok(performance.now() - t0 < 6500, `stop() took ${performance.now() - t0} ms`);
    assert.ok(lines.some((l) => /cannot delete this harvester's consumer group/.test(l)), lines.join('\n'));
  } finally {
    await mock.stop();
  }
});
