/**
 * kafkajs, loaded after kafka-crc32c.ts, checksums record batches with the native CRC-32C, and the
 * checksums are right. Neither the embedded broker nor kafkajs's consumer checks them, so a wrong one
 * would pass every other test and be refused by a real broker (CORRUPT_MESSAGE).
 */
import { kafkaCrc32c } from './kafka-crc32c.ts'; // first, as in main.ts
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { test } from 'node:test';
import { HARVESTER_ENTRY, lastJsonOfFreshProcess, PIPELINE_ENTRY } from './fresh-process.test-support.ts';

const require = createRequire(import.meta.url);
type Encoded = { buffer: Buffer };
const Record = require('kafkajs/src/protocol/recordBatch/record/v0/index.js') as (r: { key: Buffer; value: Buffer; headers: object; offsetDelta: number; timestampDelta: number }) => Encoded;
const { RecordBatch } = require('kafkajs/src/protocol/recordBatch/v0/index.js') as { RecordBatch: (o: { compression: number; records: Encoded[] }) => Promise<Encoded> };
// kafkajs's own byte-at-a-time code (its inner module, never replaced) as the reference.
const reference = require('kafkajs/src/protocol/recordBatch/crc32C/crc32C.js') as (b: Buffer) => number;
/** Record batch v2: baseOffset (8) batchLength (4) partitionLeaderEpoch (4) magic (1), then the CRC of what follows it. */
const CRC_AT = 17;

test('record batches kafkajs encodes carry the native CRC-32C, and it is the right one', async () => {
  assert.deepEqual(kafkaCrc32c(), { impl: 'native', reason: '', batches: 0 });
  const native = require('kafkajs/src/protocol/recordBatch/crc32C/index.js') as (b: Buffer) => number;
  assert.equal(native(Buffer.from('123456789')), 0xe3069283);
  const before = kafkaCrc32c().batches;
  for (const sizes of [[0], [1, 2, 3], [4096, 4096, 17], [1_000_000]]) {
    const records = sizes.map((n, i) => Record({ key: Buffer.from(`vm-${i}`), value: randomBytes(n), headers: {}, offsetDelta: i, timestampDelta: 0 }));
    // The batch as it goes on the wire; a broker recomputes the CRC over everything after it.
    const whole = (await RecordBatch({ compression: 0, records })).buffer;
    const crc = whole.readUInt32BE(CRC_AT);
    assert.equal(crc, reference(whole.subarray(CRC_AT + 4)) >>> 0, `records of ${sizes.join(', ')} bytes`);
  }
  // kafkajs's record-batch code called ours, once per batch.
  assert.equal(kafkaCrc32c().batches - before, 4);
});

test('the pipeline and the harvester package give kafkajs the native CRC-32C whatever is imported next', () => {
  // A fresh process, as the pipeline CLI and the benchmarks start: the pipeline loads kafkajs itself.
  assert.deepEqual(lastJsonOfFreshProcess(`await import(${JSON.stringify(PIPELINE_ENTRY)}); const h = await import(${JSON.stringify(HARVESTER_ENTRY)}); console.log(JSON.stringify(h.kafkaCrc32c()));`),
    { impl: 'native', reason: '', batches: 0 });
  // And the fallback says why: kafkajs, having loaded its record-batch code first, keeps its own.
  assert.deepEqual(lastJsonOfFreshProcess(`import { createRequire } from 'node:module'; createRequire(process.cwd() + '/')('kafkajs/src/protocol/recordBatch/v0/index.js'); const h = await import(${JSON.stringify(HARVESTER_ENTRY)}); console.log(JSON.stringify(h.kafkaCrc32c()));`),
    { impl: 'kafkajs', reason: 'kafkajs had loaded its record-batch code before the harvester could give it the native CRC-32C', batches: 0 });
});
