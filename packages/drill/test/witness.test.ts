/**
 * The witness rebuilds committed epochs from records alone: duplicates written by a retried send are
 * skipped (as the replicator does), and an epoch with a missing batch is never taken as committed.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Kafka } from 'kafkajs';
import { FakeHarvester } from '../../../services/replicator/test/fake-harvester.ts';
import { Witness } from '../src/witness.ts';

const witness = (): Witness => new Witness({ consumer: () => ({}) } as unknown as Kafka, 't', 'vm-w');

test('records written twice by a retried send leave the same committed image', () => {
  const h = new FakeHarvester('vm-w', 3);
  const w = witness();
  const e0 = h.epochRecords(new Map([[1, 1], [2, 2], [3, 3], [4, 4]]), 2);
  const e1 = h.epochRecords(new Map([[2, 9], [5, 5], [6, 6]]), 2);
  // Epoch 1: begin twice, b0 b1 then b0 b1 again (a retried request), commit twice.
  for (const r of [...e0, e1[0]!, e1[0]!, e1[1]!, e1[2]!, e1[1]!, e1[2]!, e1[3]!, e1[3]!]) w.take(r);
  assert.equal(w.committed, 2);
  assert.equal(w.last?.epoch, 1);
  assert.equal(w.image!.digest().toHex(), h.model.digest().toHex());
  assert.deepEqual(w.problems, []);
});

test('NEGATIVE: an epoch with a missing batch is not committed, nor are the deltas after it', () => {
  const h = new FakeHarvester('vm-w', 3);
  const w = witness();
  for (const r of h.epochRecords(new Map([[1, 1], [2, 2]]), 1)) w.take(r);
  const e1 = h.epochRecords(new Map([[3, 3], [4, 4]]), 1);
  for (const r of [e1[0]!, e1[2]!, e1[3]!]) w.take(r); // batch 0 lost
  for (const r of h.epochRecords(new Map([[5, 5]]), 1)) w.take(r);
  assert.equal(w.committed, 1);
  assert.equal(w.last?.epoch, 0);
});
