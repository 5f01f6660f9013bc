/**
 * kafkajs, loaded after kafka-encoder.ts, encodes with ChunkedEncoder, and what it encodes is byte for
 * byte what its own Encoder gives. The embedded broker parses requests leniently enough that a wrong
 * length or a shifted part might pass the end-to-end tests here and be refused by a real broker.
 */
import { kafkaEncoder, LARGE_BYTES } from './kafka-encoder.ts'; // first, as in main.ts
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { HARVESTER_ENTRY, lastJsonOfFreshProcess, PIPELINE_ENTRY } from './fresh-process.test-support.ts';

const require = createRequire(import.meta.url);

interface Enc {
  readonly buffer: Buffer;
  size(): number;
  writeInt8(v: number): Enc;
  writeInt32(v: number): Enc;
  writeString(v: string | null): Enc;
  writeVarInt(v: number): Enc;
  writeBytes(v: Buffer | string | null): Enc;
  writeVarIntBytes(v: Buffer | null): Enc;
  writeUVarIntBytes(v: Buffer | null): Enc;
  writeBuffer(v: Buffer): Enc;
  writeEncoder(v: Enc): Enc;
  writeEncoderArray(v: Enc[]): Enc;
  writeArray(v: unknown[], type?: string): Enc;
}
type EncClass = new (initialSize?: number) => Enc;

const Chunked = require('kafkajs/src/protocol/encoder.js') as EncClass;
/** kafkajs's own Encoder: the class ChunkedEncoder extends. */
const Original = Object.getPrototypeOf(Chunked) as EncClass;

/** Deterministic bytes (no randomness: a subprocess encodes the same requests). */
function bytes(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/** A small seeded generator for the operation sequences. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32;
  };
}

/** Sizes around the reference threshold and the encoder's own growth steps. */
const SIZES = [0, 1, 511, 512, LARGE_BYTES - 1, LARGE_BYTES, LARGE_BYTES + 1, 70_000, 1_000_000];

const POOL = bytes(1_100_000, 7);
/** A slice of the pool (a fresh copy, as kafkajs's values are separate buffers). */
function slice(n: number, seed: number): Buffer {
  const at = (seed * 7919) % (POOL.length - n + 1);
  return Buffer.from(POOL.subarray(at, at + n));
}

/** Applies the same random writes to an encoder of each class (nesting encoders of the same class). */
function build(cls: EncClass, seed: number, depth = 0): Enc {
  const r = rng(seed);
  const e = new cls(r() < 0.5 ? undefined : 1 + Math.floor(r() * 5000));
  const ops = 1 + Math.floor(r() * (depth === 0 ? 10 : 5));
  for (let i = 0; i < ops; i++) {
    const size = SIZES[Math.floor(r() * SIZES.length)]!;
    const sub = (k: number): Enc => build(cls, seed * 31 + i * 7 + k, depth + 1);
    switch (Math.floor(r() * (depth < 2 ? 10 : 7))) {
      case 0: e.writeInt32(Math.floor(r() * 2 ** 31)); break;
      case 1: e.writeString(r() < 0.2 ? null : `vm-${seed}-${i}`); break;
      case 2: e.writeBytes(r() < 0.1 ? null : slice(size, seed + i)); break;
      case 3: e.writeVarIntBytes(slice(size, seed + i)); break;
      case 4: e.writeUVarIntBytes(slice(size, seed + i)); break;
      case 5: e.writeBuffer(slice(size, seed + i)); break;
      case 6: e.writeVarInt(Math.floor(r() * 1e6) - 5e5); break;
      case 7: e.writeEncoder(sub(0)); break;
      case 8: e.writeEncoderArray([sub(1), sub(2), sub(3)]); break;
      default: e.writeArray([sub(4), 5, 'x', sub(6)]); break;
    }
    // kafkajs reads an encoder's buffer (for a CRC) and then goes on writing into the outer one.
    if (r() < 0.2) assert.equal(e.buffer.length, e.size());
  }
  return e;
}

test('ChunkedEncoder writes exactly what kafkajs\'s Encoder writes', () => {
  assert.notEqual(Chunked, Original, 'kafkajs\'s encoder module was not replaced');
  let referenced = false;
  for (let seed = 1; seed <= 300; seed++) {
    const before = kafkaEncoder().bytesReferenced;
    const got = build(Chunked, seed);
    const want = build(Original, seed);
    assert.equal(got.size(), want.size(), `size, seed ${seed}`);
    assert.ok(got.buffer.equals(want.buffer), `bytes, seed ${seed}`);
    // Reading the buffer again gives the same bytes (it is joined once).
    assert.ok(got.buffer.equals(want.buffer), `bytes read twice, seed ${seed}`);
    referenced ||= kafkaEncoder().bytesReferenced > before;
  }
  assert.ok(referenced, 'no large buffer was ever kept by reference');
});

/** Produce requests as kafkajs sends them, hashed: the same in this process and one using kafkajs's own encoder. */
const PRODUCE_SCRIPT = `
const { createRequire } = await import('node:module');
const { createHash } = await import('node:crypto');
const require = createRequire(process.cwd() + '/');
const bytes = ${bytes.toString()};
const request = require('kafkajs/src/protocol/request.js');
const out = [];
for (const [v, sizes] of [[3, [0]], [3, [10, 100_000]], [7, [1_000_000]], [7, [5000, 5000, 70_000, 3]]]) {
  const produce = require('kafkajs/src/protocol/requests/produce/v' + v + '/request.js');
  const messages = (p) => sizes.map((n, i) => ({ key: Buffer.from('vm-' + p), value: bytes(n, 17 * p + i), timestamp: 1700000000000 + i, headers: { h: 'x' } }));
  const topicData = [{ topic: 'pages', partitions: [0, 1].map((partition) => ({ partition, firstSequence: 0, messages: messages(partition) })) }];
  const encoded = await request({ correlationId: 42, clientId: 'c', request: produce({ acks: -1, timeout: 30000, compression: 0, topicData }) });
  out.push(createHash('sha256').update(encoded.buffer).digest('hex') + ':' + encoded.size());
}
console.log(JSON.stringify({ out, enc: globalThis.kafkaEncoderModule.kafkaEncoder() }));
`;

function runProduceScript(env: NodeJS.ProcessEnv): { out: string[]; enc: { impl: string; bytesReferenced: number } } {
  const encoder = fileURLToPath(new URL('./kafka-encoder.ts', import.meta.url));
  return lastJsonOfFreshProcess(`globalThis.kafkaEncoderModule = await import(${JSON.stringify(encoder)});\n${PRODUCE_SCRIPT}`, env);
}

test('produce requests (v3 and v7, records up to 1 MB) are the same bytes with either encoder', () => {
  const chunked = runProduceScript({});
  const own = runProduceScript({ CKPT_KAFKA_ENCODER: 'kafkajs' });
  assert.equal(chunked.enc.impl, 'chunked');
  assert.equal(own.enc.impl, 'kafkajs');
  // kafkajs's produce code went through ChunkedEncoder's reference path (two 1 MB records at least).
  assert.ok(chunked.enc.bytesReferenced > 2_000_000, `bytesReferenced ${chunked.enc.bytesReferenced}`);
  assert.equal(chunked.out.length, 4);
  assert.deepEqual(chunked.out, own.out);
  // The sizes are what the records add up to (not, say, two empty requests that agree).
  assert.ok(Number(chunked.out[2]!.split(':')[1]) > 2_000_000);
});

test('the pipeline gives kafkajs the chunked encoder; loaded too late, kafkajs keeps its own and says why', () => {
  assert.deepEqual(lastJsonOfFreshProcess(`await import(${JSON.stringify(PIPELINE_ENTRY)}); const h = await import(${JSON.stringify(HARVESTER_ENTRY)}); console.log(JSON.stringify(h.kafkaEncoder()));`),
    { impl: 'chunked', reason: '', bytesReferenced: 0 });
  assert.deepEqual(lastJsonOfFreshProcess(`import 'kafkajs'; const h = await import(${JSON.stringify(HARVESTER_ENTRY)}); console.log(JSON.stringify(h.kafkaEncoder()));`),
    { impl: 'kafkajs', reason: 'kafkajs had loaded its encoder before the harvester could replace it', bytesReferenced: 0 });
});
