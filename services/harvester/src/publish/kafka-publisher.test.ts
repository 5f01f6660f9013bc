/**
 * Unit tests of the publisher's flow control with a stand-in producer (the real broker is exercised by
 * the pipeline tests): records stay in order, the replication window holds production back until the
 * replicator reports progress, and a replicator that never reports does not block forever.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Producer } from 'kafkajs';
import { RangeList, silentLogger } from '@ckpt/common';
import { decodeEpochRecord, PART_COMMIT } from '@ckpt/proto';
import { createHarvesterMetrics } from '../metrics.ts';
import type { EpochHeader } from '../epoch/epoch-types.ts';
import { KafkaPublisher } from './kafka-publisher.ts';

const PAGE = 4096;
const header: EpochHeader = { generation: 5, epoch: 1, baseline: false, pageSize: PAGE, slots: [{ id: 0, pages: 1024, gpa: 0 }], vcpus: 1, startedAtMs: 0 };

function fakeProducer(sent: Buffer[]): Producer {
  return { send: (r: { messages: { value: Buffer }[] }) => { for (const m of r.messages) sent.push(m.value); return Promise.resolve([]); } } as unknown as Producer;
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
  await p.commit(header, { generation: 5, epoch: 1, baseline: false, pages: 12, zeroPages: 0, bytes: 12 * PAGE, digest: '0000000000000000', vcpuStates: [], guestCounters: [], pauseUs: 1, drainUs: 0, resetUs: 0, copyUs: 0, entriesHarvested: 12, precopyRounds: 0, precopyPages: 0, committedAtMs: 0 });
  const kinds = sent.map((b) => { const r = decodeEpochRecord(b); return r.kind === 'batch' ? `batch${r.batch.seq}` : r.kind; });
  assert.deepEqual(kinds, ['begin', 'batch0', 'batch1', 'batch2', 'batch3', 'commit']);
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
  assert.equal(sent.length, 4, 'begin and three batches');
});
