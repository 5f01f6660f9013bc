/**
 * A replicator that stops stays stopped: kafkajs restarts a consumer that crashes with a retriable
 * error, also one that crashes because disconnect() closed its connections under it. Stopped while
 * its consumer is still joining the group (the embedded broker holds a join for 3 s), the consumer
 * crashes on the closed connection right after; before the fix kafkajs started it again 200 ms later
 * and the stopped replicator joined the group and took the partition, about 5 s after stop() had
 * returned.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Redis } from 'ioredis';
import { createLogger } from '@ckpt/common';
import { createReplicatorMetrics, Replicator } from '@ckpt/replicator';
import { serversWithEmbeddedBroker } from './embedded-broker.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('a replicator stopped while its consumer joins the group does not join it again', async (t) => {
  const servers = await serversWithEmbeddedBroker(t, ', whose 3 s join delay puts the stop inside the join');
  if (!servers) return;
  const redis = new Redis(servers.redisUrl);
  const lines: { at: number; msg: string; line: string }[] = [];
  const log = createLogger({ service: 'replicator' }, {
    write: (line) => lines.push({ at: Date.now(), msg: (JSON.parse(line) as { msg: string }).msg, line }),
  });
  const replicator = new Replicator({
    kafka: { clientId: 'stop-test', brokers: servers.brokers }, idempotent: false, topics: servers.topics, groupId: servers.groupId,
    redis, redisPrefix: servers.redisPrefix, maxRecordBytes: 1 << 20, markerIntervalMs: 50, resyncRetryMs: 1000,
    partitionsConsumedConcurrently: 1, stageWindow: 8, sessionTimeoutMs: 3000, fetchMaxWaitMs: 2, assignDelayMs: 0,
    metrics: createReplicatorMetrics({ defaultMetrics: false }), log,
  });
  try {
    const started = replicator.start().catch((err: unknown) => err);
    await sleep(500);
    await replicator.stop();
    const stoppedAt = Date.now();
    await started;
    // Without the fix the stopped consumer had joined again 5 s after the stop.
    await sleep(9000);
    const history = lines.map((l) => l.line).join('\n');
    // The race this test is for: the consumer crashed on the connections the stop closed.
    assert.ok(lines.some((l) => /Crash: KafkaJSConnection/.test(l.msg) && l.at >= stoppedAt - 100), `no consumer crash during the stop; log:\n${history}`);
    const after = lines.filter((l) => l.at >= stoppedAt && /joined the consumer group|kafkajs starts it again|joining the group again/.test(l.msg));
    assert.deepEqual(after.map((l) => l.msg), [], `the stopped replicator's consumer started again; log:\n${history}`);
  } finally {
    await replicator.stop().catch(() => undefined);
    redis.disconnect();
    await servers.stop();
  }
});
