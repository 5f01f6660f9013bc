import assert from 'node:assert/strict';
import { test } from 'node:test';
import protobuf from 'protobufjs';
import { RangeList } from '@ckpt/common';
import {
  batchPages, compressPages, decodeControlRecord, decodeEpochRecord, encodeControlRecord, encodeEpochRecord, splitIntoBatches,
  WireError, type EpochRecord,
} from '../src/index.ts';

const PAGE = 4096;
const head = { vm: 'vm-1', generation: 3, epoch: 7 };

test('begin, batch and commit records round-trip', () => {
  const begin: EpochRecord = { ...head, kind: 'begin', begin: { pageSize: PAGE, slots: [{ id: 0, pages: 65536 }, { id: 1 << 16, pages: 2 ** 40 }], vcpus: 2, baseline: true, startedAtMs: 1_700_000_000_000 } };
  assert.deepEqual(decodeEpochRecord(encodeEpochRecord(begin)), begin);
  const data = new Uint8Array(2 * PAGE).map((_, i) => i * 7);
  const batch = decodeEpochRecord(encodeEpochRecord({ ...head, kind: 'batch', batch: {
    seq: 4, slots: [0, 0], firsts: [10, 99], counts: [2, 5], zero: Uint8Array.of(0, 1), compression: 'none', data, dataBytes: data.byteLength,
  } }));
  assert.equal(batch.kind, 'batch');
  if (batch.kind === 'batch') {
    assert.deepEqual(Array.from(batch.batch.firsts), [10, 99]);
    assert.deepEqual([...batch.batch.zero], [0, 1]);
    assert.ok(Buffer.from(batchPages(batch.batch)).equals(data), 'page bytes');
  }
  const commit: EpochRecord = { ...head, kind: 'commit', commit: {
    batches: 5, pages: 7, zeroPages: 5, dataBytes: 8192, digest: '00ff00ff00ff00ff', vcpuStates: [Uint8Array.of(1, 2, 3)], guestCounters: [5, 10],
    pauseUs: 812, startedAtMs: 1, committedAtMs: 3, pausedAtMs: 2,
  } };
  const back = decodeEpochRecord(encodeEpochRecord(commit));
  assert.equal(back.kind, 'commit');
  if (back.kind === 'commit') {
    assert.equal(back.commit.digest, '00ff00ff00ff00ff');
    assert.deepEqual([...back.commit.vcpuStates[0]!], [1, 2, 3]);
    assert.deepEqual(back.commit.guestCounters, [5, 10]);
    assert.deepEqual([back.commit.startedAtMs, back.commit.pausedAtMs, back.commit.committedAtMs], [1, 2, 3]);
  }
  // A commit from a harvester that does not send the pause time: the commit time stands in for it.
  const { pausedAtMs: _, ...older } = commit.commit;
  const olderBack = decodeEpochRecord(encodeEpochRecord({ ...head, kind: 'commit', commit: older as typeof older & { pausedAtMs: number } }));
  assert.equal(olderBack.kind === 'commit' && olderBack.commit.pausedAtMs, 3);
  const ctl = { vm: 'vm-1', kind: 'applied' as const, applied: { generation: 3, epoch: 6, part: 3, imageGeneration: 3, imageEpoch: 5, stale: false, atMs: 5 } };
  assert.deepEqual(decodeControlRecord(encodeControlRecord(ctl)), ctl);
  const writer = { vm: 'vm-1', kind: 'writer' as const, writer: { writerId: 'w-1', host: 'node-a', pid: 42, startedAtMs: 7, generation: 3, atMs: 9 } };
  assert.deepEqual(decodeControlRecord(encodeControlRecord(writer)), writer);
  assert.throws(() => decodeControlRecord(encodeControlRecord({ ...writer, writer: { ...writer.writer, writerId: '' } })),
    (e: unknown) => e instanceof WireError && /writer\.writerId is empty/.test(e.message), 'a heartbeat without a writer id is refused');
});

test('bad records are rejected with a code that says why', () => {
  const good = encodeEpochRecord({ ...head, kind: 'begin', begin: { pageSize: PAGE, slots: [{ id: 0, pages: 16 }], vcpus: 1, baseline: false, startedAtMs: 0 } });
  const code = (buf: Uint8Array): string => {
    try {
      decodeEpochRecord(buf);
      return 'accepted';
    } catch (err) {
      assert.ok(err instanceof WireError, String(err));
      return err.code;
    }
  };
  // Truncated: every prefix is either malformed or (when it stops between fields) incomplete.
  for (let n = 1; n < good.byteLength; n++) assert.notEqual(code(good.subarray(0, n)), 'accepted', `prefix of ${n} bytes`);
  assert.equal(code(Uint8Array.of(0xff, 0xff, 0xff)), 'CKPT_ERR_WIRE_MALFORMED');
  // Unknown schema version.
  const T = protobuf.parse('syntax="proto3"; message R { uint32 schema_version = 1; string vm = 2; }').root.lookupType('R');
  assert.equal(code(T.encode({ schemaVersion: 2, vm: 'x' }).finish()), 'CKPT_ERR_WIRE_VERSION');
  // No body.
  assert.equal(code(T.encode({ schemaVersion: 1, vm: 'x' }).finish()), 'CKPT_ERR_WIRE_INVALID');
  // Inconsistent ranges, bad sizes, bad digest.
  const batch = (b: Partial<Record<string, unknown>>): Uint8Array => encodeEpochRecord({ ...head, kind: 'batch', batch: {
    seq: 0, slots: [0], firsts: [1], counts: [1], zero: Uint8Array.of(0), compression: 'none', data: new Uint8Array(PAGE), dataBytes: PAGE, ...b,
  } as never });
  assert.equal(code(batch({})), 'accepted');
  assert.equal(code(batch({ counts: [1, 2] })), 'CKPT_ERR_WIRE_INVALID');
  assert.equal(code(batch({ counts: [0] })), 'CKPT_ERR_WIRE_INVALID');
  assert.equal(code(batch({ dataBytes: PAGE + 1 })), 'CKPT_ERR_WIRE_INVALID');
  assert.equal(code(batch({ zero: Uint8Array.of(7) })), 'CKPT_ERR_WIRE_INVALID');
  assert.equal(code(encodeEpochRecord({ ...head, kind: 'begin', begin: { pageSize: 3000, slots: [{ id: 0, pages: 1 }], vcpus: 1, baseline: false, startedAtMs: 0 } })), 'CKPT_ERR_WIRE_INVALID');
  assert.equal(code(encodeEpochRecord({ ...head, vm: '', kind: 'begin', begin: { pageSize: PAGE, slots: [{ id: 0, pages: 1 }], vcpus: 1, baseline: false, startedAtMs: 0 } })), 'CKPT_ERR_WIRE_INVALID');
  assert.equal(code(encodeEpochRecord({ ...head, kind: 'commit', commit: {
    batches: 0, pages: 0, zeroPages: 0, dataBytes: 0, digest: 'nothex', vcpuStates: [], guestCounters: [], pauseUs: 0, startedAtMs: 0, committedAtMs: 0, pausedAtMs: 0,
  } })), 'CKPT_ERR_WIRE_INVALID');
});

test('gzip is used only when it helps, and a lying size is caught on decompression', () => {
  const zeros = new Uint8Array(4 * PAGE);
  zeros[5] = 1;
  const z = compressPages(zeros, 'gzip');
  assert.equal(z.compression, 'gzip');
  assert.ok(z.data.byteLength < 200);
  const noise = new Uint8Array(PAGE).map(() => Math.floor(Math.random() * 256));
  assert.equal(compressPages(noise, 'gzip').compression, 'none', 'incompressible pages travel raw');
  const rec = decodeEpochRecord(encodeEpochRecord({ ...head, kind: 'batch', batch: {
    seq: 0, slots: [0], firsts: [0], counts: [4], zero: Uint8Array.of(0), compression: 'gzip', data: z.data, dataBytes: zeros.byteLength,
  } }));
  assert.ok(rec.kind === 'batch');
  assert.ok(Buffer.from(batchPages(rec.batch)).equals(zeros), 'decompressed pages');
  assert.throws(() => batchPages({ ...rec.batch, dataBytes: PAGE }), (e: unknown) => e instanceof WireError && e.code === 'CKPT_ERR_WIRE_INVALID');
});

test('batches stay under the record limit, split ranges, and together carry exactly the segment', () => {
  let seed = 12345;
  const rnd = (n: number): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed % n;
  };
  for (let trial = 0; trial < 40; trial++) {
    const ranges = new RangeList(16);
    let gfn = 0;
    let dataPages = 0;
    const nRanges = 1 + rnd(60);
    for (let i = 0; i < nRanges; i++) {
      gfn += 1 + rnd(50);
      const count = 1 + rnd(trial % 4 === 0 ? 700 : 20);
      const zero = rnd(3) === 0;
      ranges.push(rnd(2), gfn, count, zero);
      gfn += count;
      if (!zero) dataPages += count;
    }
    const data = new Uint8Array(dataPages * PAGE);
    for (let p = 0; p < dataPages; p++) data[p * PAGE] = p & 0xff;
    const max = [64 * 1024, 256 * 1024, 1_000_000][trial % 3]!;
    const parts = splitIntoBatches(ranges, data, PAGE, max, 4);
    const seen: number[] = [];
    let bytes = 0;
    parts.forEach((part, seq) => {
      const enc = encodeEpochRecord({ ...head, kind: 'batch', batch: { seq, ...part, compression: 'none', dataBytes: part.data.byteLength } });
      assert.ok(enc.byteLength <= max, `trial ${trial}: batch ${seq} encodes to ${enc.byteLength} > ${max}`);
      for (let i = 0; i < part.slots.length; i++) for (let k = 0; k < part.counts[i]!; k++) seen.push(part.slots[i]! * 1e9 + part.firsts[i]! + k);
      bytes += part.data.byteLength;
    });
    const want: number[] = [];
    for (let i = 0; i < ranges.length; i++) for (let k = 0; k < ranges.counts[i]!; k++) want.push(ranges.slots[i]! * 1e9 + ranges.firsts[i]! + k);
    assert.deepEqual(seen, want, `trial ${trial}: pages in order, none lost or repeated`);
    assert.equal(bytes, data.byteLength);
    // The data views concatenate to the segment's buffer.
    assert.equal(parts.reduce((n, p) => n + p.pages, 0), want.length);
  }
  assert.throws(() => splitIntoBatches(new RangeList(1), new Uint8Array(0), PAGE, 1000, 4), /cannot hold one/);
});
