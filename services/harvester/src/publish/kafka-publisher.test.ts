/**
 * Unit tests of the publisher's flow control with a stand-in producer (the real broker is exercised by
 * the pipeline tests): records stay in order, an epoch's records share requests, the replication
 * window holds production back until the replicator reports progress, a replicator that never reports does not block forever, requests stay
 * under the request cap (and shrink when the broker refuses one as too large), the in-flight cap holds
 * production back, and a broker that never accepts ends the generation with CKPT_ERR_PUBLISH_FAILED.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import kafkajs, { type Producer } from 'kafkajs';
import { CkptError, RangeList, silentLogger } from '@ckpt/common';
import { decodeEpochRecord, PART_COMMIT } from '@ckpt/proto';
import { createHarvesterMetrics } from '../metrics.ts';
import type { EpochHeader } from '../epoch/epoch-types.ts';
import { KafkaPublisher } from './kafka-publisher.ts';

const PAGE = 4096;
const header: EpochHeader = { generation: 5, epoch: 1, baseline: false, pageSize: PAGE, slots: [{ id: 0, pages: 1024, gpa: 0 }], vcpus: 1, startedAtMs: 0 };

function fakeProducer(sent: Buffer[]): Producer {
  return { send: (r: { messages: { value: Buffer }[] }) => { for (const m of r.messages) sent.push(m.value); return Promise.resolve([]); } } as unknown as Producer;
}

const commitOf = (pages: number) => ({ generation: 5, epoch: 1, baseline: false, pages, zeroPages: 0, bytes: pages * PAGE, digest: '0000000000000000', vcpuStates: [], guestCounters: [], pauseUs: 1, drainUs: 0, copyUs: 0, entriesHarvested: pages, precopyRounds: 0, precopyPages: 0, pausedAtMs: 0, committedAtMs: 0 });

// kafkajs's error classes are spread into its CommonJS exports, which ESM cannot name.
const { KafkaJSNonRetriableError, KafkaJSProtocolError } = kafkajs;

/** What kafkajs throws when the broker refuses a request as larger than max.message.bytes. */
const tooLarge = (): Error => {
  const cause = new KafkaJSProtocolError({ type: 'MESSAGE_TOO_LARGE', code: 10, retriable: false, message: 'too large' } as never);
  return Object.assign(new KafkaJSNonRetriableError(cause), { cause });
};

/** A producer that refuses (as too large) any request above `limit` record bytes, and logs the requests it stored. */
function limitedProducer(limit: number, sent: Buffer[], requests: number[]): Producer {
  return {
    send: (r: { messages: { value: Buffer }[] }) => {
      const bytes = r.messages.reduce((n, m) => n + m.value.byteLength, 0);
      // Answers a few milliseconds later, as a broker does, so records queue up behind a request.
      return new Promise((resolve, reject) => setTimeout(() => {
        if (bytes > limit) return reject(tooLarge());
        requests.push(bytes);
        for (const m of r.messages) sent.push(m.value);
        resolve([]);
      }, 2));
    },
  } as unknown as Producer;
}

function segment(pages: number): { ranges: RangeList; data: Uint8Array; phase: 'paused' } {
  const ranges = new RangeList(1);
  ranges.push(0, 10, pages, false);
  return { ranges, data: new Uint8Array(pages * PAGE).fill(7), phase: 'paused' };
}

test('records leave in order; the window waits for markers', async () => {
  const sent: Buffer[] = [];
  const p = new KafkaPublisher({ producer: fakeProducer(sent), topic: 't', vm: 'vm', maxRecordBytes: 3 * PAGE + 1024, compression: 'none', maxInFlightBytes: 1 << 20, windowBytes: 8 * PAGE, publishTimeoutMs: 1000, windowStallMs: 0, log: silentLogger });
  await p.begin(header);
  let done = false;
  const seg = p.segment(header, segment(12)).then(() => { done = true; });
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(done, false, 'held back by the window');
  // The replicator reports everything so far processed.
  p.window.marker({ generation: 5, epoch: 1, part: PART_COMMIT - 1, imageGeneration: 5, imageEpoch: 0, stale: false, atMs: 0 });
  await seg;
  await p.commit(header, commitOf(12));
  const kinds = sent.map((b) => { const r = decodeEpochRecord(b); return r.kind === 'batch' ? `batch${r.batch.seq}` : r.kind; });
  assert.deepEqual(kinds, ['begin', 'batch0', 'batch1', 'batch2', 'batch3', 'commit']);
});

test('a new generation\'s baseline waits in the window behind the records of the generation before it', async () => {
  const sent: Buffer[] = [];
  const p = new KafkaPublisher({ producer: fakeProducer(sent), topic: 't', vm: 'vm', maxRecordBytes: 3 * PAGE + 1024, compression: 'none', maxInFlightBytes: 1 << 20, windowBytes: 8 * PAGE, publishTimeoutMs: 1000, windowStallMs: 0, log: silentLogger });
  await p.begin(header);
  await p.segment(header, segment(6)); // about 6 pages of generation 5 wait for the replicator
  await p.drain();
  const next = { ...header, generation: 6, epoch: 0, baseline: true };
  let begun = false;
  const baseline = (async () => {
    await p.begin(next);
    await p.segment(next, segment(6));
    begun = true;
  })();
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(begun, false, 'held back until the replicator is past generation 5');
  // The replicator skipped through generation 5 (its image stale) and says so.
  p.window.marker({ generation: 5, epoch: 1, part: PART_COMMIT, imageGeneration: 5, imageEpoch: 0, stale: true, atMs: 0 });
  await baseline;
  assert.equal(begun, true);
});

test('a replicator that never reports progress stalls the window only for windowStallMs', async () => {
  const sent: Buffer[] = [];
  const metrics = createHarvesterMetrics();
  const p = new KafkaPublisher({ producer: fakeProducer(sent), topic: 't', vm: 'vm', maxRecordBytes: 3 * PAGE + 1024, compression: 'none', maxInFlightBytes: 1 << 20, windowBytes: 4 * PAGE, publishTimeoutMs: 1000, windowStallMs: 300, metrics, log: silentLogger });
  await p.begin(header);
  const t0 = performance.now();
  await p.segment(header, segment(9));
  const waited = performance.now() - t0;
  assert.ok(waited >= 250, `waited ${waited} ms`);
  assert.ok((await metrics.windowStalls.get()).values[0]!.value >= 1);
  await p.drain(); // the last batch waits for a full request, the commit or a drain
  assert.equal(sent.length, 4, 'begin and three batches');
});

test('a window held by a broker outage (our sends fail) is not blamed on the replicator: no stall declared, the wait counted as in-flight', async () => {
  const metrics = createHarvesterMetrics();
  let brokerUp = false;
  const sent: Buffer[] = [];
  const producer = {
    send: (r: { messages: { value: Buffer }[] }) => {
      if (!brokerUp) return Promise.reject(Object.assign(new Error('Connection error: connect ECONNREFUSED 127.0.0.1:9092'), { name: 'KafkaJSConnectionError' }));
      for (const m of r.messages) sent.push(m.value);
      return Promise.resolve([]);
    },
  } as unknown as Producer;
  const p = new KafkaPublisher({ producer, topic: 't', vm: 'vm', maxRecordBytes: 3 * PAGE + 1024, compression: 'none', maxInFlightBytes: 1 << 20, windowBytes: 4 * PAGE, publishTimeoutMs: 5000, windowStallMs: 150, metrics, log: silentLogger });
  const cause = async (c: string): Promise<number> => (await metrics.backpressureSeconds.get()).values.find((v) => v.labels.cause === c)!.value;
  await p.begin(header);
  const waiting = p.segment(header, segment(9));
  await new Promise((r) => setTimeout(r, 800));
  assert.equal((await metrics.windowStalls.get()).values[0]?.value ?? 0, 0, 'no stall declared while the broker refuses records (it was, after windowStallMs, and the window dropped)');
  assert.ok(await cause('in-flight') >= 0.3, `in-flight ${await cause('in-flight')} s`);
  assert.ok(await cause('replication-window') < 0.3, `replication-window ${await cause('replication-window')} s`);
  assert.match(p.problem() ?? '', /cannot publish to Kafka for \d+ s: Connection error/);
  // The broker comes back and the replicator reports the epoch applied: production goes on.
  brokerUp = true;
  const back = setInterval(() => p.window.marker({ generation: 5, epoch: 1, part: PART_COMMIT - 1, imageGeneration: 5, imageEpoch: 0, stale: false, atMs: 0 }), 20);
  await waiting;
  clearInterval(back);
  await p.drain();
  assert.equal(sent.length, 4, 'begin and three batches, none lost');
});

test('the time held back by the window counts while the wait lasts, not only when it ends (a dashboard must see a stall)', async () => {
  const metrics = createHarvesterMetrics();
  const p = new KafkaPublisher({ producer: fakeProducer([]), topic: 't', vm: 'vm', maxRecordBytes: 3 * PAGE + 1024, compression: 'none', maxInFlightBytes: 1 << 20, windowBytes: 4 * PAGE, publishTimeoutMs: 1000, windowStallMs: 1500, metrics, log: silentLogger });
  const seconds = async (): Promise<number> => (await metrics.backpressureSeconds.get()).values.find((v) => v.labels.cause === 'replication-window')!.value;
  await p.begin(header);
  const waiting = p.segment(header, segment(9)); // no replicator: waits until the stall (1.5 s) clears the window
  await new Promise((r) => setTimeout(r, 800));
  const during = await seconds();
  assert.ok(during >= 0.4, `${during} s counted 800 ms into the wait`);
  await waiting;
  assert.ok((await seconds()) >= 1.4, 'and all of it once it ended');
});

/** A producer that answers with where the records landed (partition 0, consecutive offsets), as a broker does. */
function offsetProducer(sent: Buffer[]): Producer {
  return {
    send: (r: { messages: { value: Buffer }[] }) => {
      const baseOffset = sent.length;
      for (const m of r.messages) sent.push(m.value);
      return Promise.resolve([{ topicName: 't', partition: 0, errorCode: 0, baseOffset: String(baseOffset) }]);
    },
  } as unknown as Producer;
}

test('a stalled window waits on while the broker still holds the records (or does not answer), is cleared once retention dropped them, and waits at most windowMaxWaitMs', async () => {
  // logStart: what the broker reports (-1: the broker does not answer); `sent` holds every record
  // produced, at offsets 0, 1, ...
  const unreachable = (): bigint => -1n;
  const cases: { name: string; logStart: (sent: number) => bigint; maxWaitMs?: number; waits: boolean }[] = [
    { name: 'the oldest waited-for record is exactly the log start: still there', logStart: () => 0n, waits: true },
    { name: 'the broker does not answer: it is away, not the replicator, and producing more would not help', logStart: unreachable, waits: true },
    { name: 'the log start is one past every record produced: all gone', logStart: (n) => BigInt(n), waits: false },
    { name: 'still there, but waited on longer than windowMaxWaitMs', logStart: () => 0n, maxWaitMs: 450, waits: false },
  ];
  for (const c of cases) {
    const sent: Buffer[] = [];
    const metrics = createHarvesterMetrics();
    const asked: number[] = [];
    const p = new KafkaPublisher({
      producer: offsetProducer(sent), topic: 't', vm: 'vm', maxRecordBytes: 3 * PAGE + 1024, compression: 'none', maxInFlightBytes: 1 << 20, windowBytes: 4 * PAGE,
      publishTimeoutMs: 1000, windowStallMs: 150, windowMaxWaitMs: c.maxWaitMs, metrics, log: silentLogger,
      logStartOffset: (partition) => {
        asked.push(partition);
        const start = c.logStart(sent.length);
        return start < 0n ? Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:9092')) : Promise.resolve(start);
      },
    });
    await p.begin(header);
    let done = false;
    const seg = p.segment(header, segment(9)).then(() => { done = true; });
    if (c.waits) {
      // Offsets 0 (begin) and 1 (batch 0) wait for the replicator and are still on the broker.
      for (const deadline = Date.now() + 2000; asked.length < 2 && Date.now() < deadline;) await new Promise((r) => setTimeout(r, 20));
      assert.ok(asked.length >= 2 && asked.every((x) => x === 0), `${c.name}: asked about partitions ${JSON.stringify(asked)}`);
      assert.equal(done, false, `${c.name}: still waiting for the replicator`);
      assert.equal((await metrics.windowStalls.get()).values[0]?.value ?? 0, 0, c.name);
      // The replicator comes back and reports progress: production goes on.
      const back = setInterval(() => p.window.marker({ generation: 5, epoch: 1, part: PART_COMMIT - 1, imageGeneration: 5, imageEpoch: 0, stale: false, atMs: 0 }), 20);
      await seg;
      clearInterval(back);
    } else {
      const t0 = performance.now();
      await seg;
      const stalls = (await metrics.windowStalls.get()).values[0]?.value ?? 0;
      assert.ok(stalls >= 1, `${c.name}: window cleared ${stalls} times`);
      if (c.maxWaitMs) assert.ok(performance.now() - t0 >= c.maxWaitMs - 50, `${c.name}: gave up after ${(performance.now() - t0).toFixed(0)} ms`);
    }
    await p.drain();
    assert.equal(sent.length, 4, `${c.name}: begin and three batches`);
  }
});

test('produce requests stay under maxRequestBytes; a broker refusing one as too large gets smaller ones, in order, nothing lost', async () => {
  for (const [cap, brokerLimit] of [[40 * PAGE, 1 << 30], [1 << 30, 20 * PAGE]] as const) {
    const sent: Buffer[] = [];
    const requests: number[] = [];
    // The in-flight cap lets the whole epoch queue, so requests can carry many records.
    const p = new KafkaPublisher({ producer: limitedProducer(brokerLimit, sent, requests), topic: 't', vm: 'vm', maxRecordBytes: 3 * PAGE + 1024, maxRequestBytes: cap, compression: 'none', maxInFlightBytes: 64 << 20, windowBytes: 0, publishTimeoutMs: 1000, log: silentLogger });
    await p.begin(header);
    await p.segment(header, segment(300));
    await p.commit(header, commitOf(300));
    const kinds = sent.map((b) => { const r = decodeEpochRecord(b); return r.kind === 'batch' ? r.batch.seq : r.kind; });
    assert.deepEqual(kinds, ['begin', ...Array.from({ length: 100 }, (_, i) => i), 'commit'], 'every record once, in order');
    assert.ok(Math.max(...requests) <= Math.min(cap, brokerLimit), `largest request ${Math.max(...requests)} bytes`);
    assert.ok(requests.some((b) => b > 3 * PAGE + 1024), 'requests still carry several records');
    if (brokerLimit < cap) assert.ok(p.requestLimit < cap, 'the cap was lowered');
  }
});

test('an epoch smaller than one request travels in one request; a bigger one in full requests, each sent once full', async () => {
  const sent: Buffer[] = [];
  const requests: number[] = [];
  const cap = 40 * PAGE;
  const p = new KafkaPublisher({ producer: limitedProducer(1 << 30, sent, requests), topic: 't', vm: 'vm', maxRecordBytes: 3 * PAGE + 1024, maxRequestBytes: cap, compression: 'none', maxInFlightBytes: 64 << 20, windowBytes: 0, publishTimeoutMs: 1000, log: silentLogger });
  // Begin, 3 batches and the commit, with time between them (the pause, copying): one request.
  await p.begin(header);
  for (let i = 0; i < 3; i++) {
    await new Promise((r) => setTimeout(r, 10));
    await p.segment(header, segment(3));
  }
  assert.equal(requests.length, 0, 'held until the commit');
  await p.commit(header, commitOf(9));
  assert.deepEqual(sent.map((b) => decodeEpochRecord(b).kind), ['begin', 'batch', 'batch', 'batch', 'commit']);
  assert.equal(requests.length, 1, `one request, not ${requests.length}`);
  // A bigger epoch: full requests go out while the epoch is still being cut, not only at its commit.
  requests.length = 0;
  await p.begin({ ...header, epoch: 2 });
  await p.segment({ ...header, epoch: 2 }, segment(150));
  await new Promise((r) => setTimeout(r, 50));
  const beforeCommit = requests.length;
  assert.ok(beforeCommit >= 3, `${beforeCommit} full requests went out before the commit`);
  assert.ok(requests.every((b) => b > cap - 4 * PAGE), `each of them full: ${JSON.stringify(requests)}`);
  await p.commit({ ...header, epoch: 2 }, commitOf(150));
  assert.ok(requests.length - beforeCommit <= 1, 'the rest in one request at the commit');
});

test('a single record the broker refuses as too large is a configuration error, not a retry loop', async () => {
  const p = new KafkaPublisher({ producer: limitedProducer(PAGE, [], []), topic: 't', vm: 'vm', maxRecordBytes: 3 * PAGE + 1024, compression: 'none', maxInFlightBytes: 64 << 20, windowBytes: 0, publishTimeoutMs: 60_000, log: silentLogger });
  await p.begin(header);
  await p.segment(header, segment(3));
  await assert.rejects(p.commit(header, commitOf(3)), (e: unknown) => e instanceof CkptError && e.code === 'CKPT_ERR_RECORD_TOO_LARGE' && /HARVESTER_MAX_RECORD_BYTES/.test(e.message));
});

test('the in-flight cap holds production back until the broker acknowledges', async () => {
  const acks: (() => void)[] = [];
  let inFlight = 0;
  let most = 0;
  const producer = {
    send: (r: { messages: { value: Buffer }[] }) => {
      const bytes = r.messages.reduce((n, m) => n + m.value.byteLength, 0);
      inFlight += bytes;
      most = Math.max(most, inFlight);
      return new Promise<void>((resolve) => acks.push(() => { inFlight -= bytes; resolve(); }));
    },
  } as unknown as Producer;
  const metrics = createHarvesterMetrics();
  const cap = 8 * PAGE;
  const p = new KafkaPublisher({ producer, topic: 't', vm: 'vm', maxRecordBytes: 2 * PAGE + 1024, maxRequestBytes: 64 << 20, compression: 'none', maxInFlightBytes: cap, windowBytes: 0, publishTimeoutMs: 1000, metrics, log: silentLogger });
  await p.begin(header);
  let done = false;
  const seg = p.segment(header, segment(40)).then(() => { done = true; });
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(done, false, 'held back: nothing was acknowledged');
  assert.ok((await metrics.inFlightBytes.get()).values[0]!.value <= cap);
  while (!done) {
    acks.shift()?.();
    await new Promise((r) => setTimeout(r, 1));
  }
  await seg;
  const commit = p.commit(header, commitOf(40));
  while (acks.length || inFlight) { acks.shift()?.(); await new Promise((r) => setTimeout(r, 1)); }
  await commit;
  assert.ok(most <= cap + 2 * PAGE + 1024, `at most ${cap} bytes plus one record in flight, saw ${most}`);
  const waited = (await metrics.backpressureSeconds.get()).values.find((v) => v.labels.cause === 'in-flight');
  assert.ok(waited && waited.value > 0, 'the wait is counted');
});

test('a broker that never accepts ends the generation: CKPT_ERR_PUBLISH_FAILED after publishTimeoutMs', async () => {
  const producer = { send: () => Promise.reject(Object.assign(new Error('Connection error: ECONNREFUSED'), { name: 'KafkaJSConnectionError' })) } as unknown as Producer;
  const p = new KafkaPublisher({ producer, topic: 't', vm: 'vm', maxRecordBytes: 3 * PAGE + 1024, compression: 'none', maxInFlightBytes: 1 << 20, windowBytes: 0, publishTimeoutMs: 1000, log: silentLogger });
  const t0 = performance.now();
  await p.begin(header);
  await assert.rejects(p.commit(header, commitOf(0)), (e: unknown) => e instanceof CkptError && e.code === 'CKPT_ERR_PUBLISH_FAILED' && e.retriable);
  assert.ok(performance.now() - t0 >= 900, 'retried until the timeout');
  // The publisher is usable again for the next generation once the broker is back.
  const sent: Buffer[] = [];
  (p as unknown as { o: { producer: Producer } }).o.producer = fakeProducer(sent);
  await p.begin({ ...header, generation: 6, epoch: 0, baseline: true });
  await p.drain();
  assert.equal(decodeEpochRecord(sent[0]!).generation, 6);
});

test('problem() says why the broker is not taking records while sends fail, and clears with the next acknowledged send (the harvester\'s /readyz)', async () => {
  let failures = 3;
  const sent: Buffer[] = [];
  const producer = {
    send: (r: { messages: { value: Buffer }[] }) => {
      if (failures-- > 0) return Promise.reject(Object.assign(new Error('Connection error: ECONNREFUSED'), { name: 'KafkaJSConnectionError' }));
      for (const m of r.messages) sent.push(m.value);
      return Promise.resolve([]);
    },
  } as unknown as Producer;
  const p = new KafkaPublisher({ producer, topic: 't', vm: 'vm', maxRecordBytes: 3 * PAGE + 1024, compression: 'none', maxInFlightBytes: 1 << 20, windowBytes: 0, publishTimeoutMs: 10_000, log: silentLogger });
  assert.equal(p.problem(), null);
  await p.begin(header);
  const drained = p.drain();
  await new Promise((r) => setTimeout(r, 60));
  assert.match(p.problem() ?? '', /^cannot publish to Kafka for \d+ s: Connection error: ECONNREFUSED/);
  await drained;
  assert.equal(p.problem(), null, 'cleared once the broker acknowledged');
  assert.equal(sent.length, 1);
});
