/**
 * The wire format (proto/ckpt.proto) as TypeScript: typed records, encoders and validating decoders.
 * Every service encodes and decodes through this file; a record that fails validation raises a
 * WireError whose code says why (malformed, unknown schema version, invalid content).
 */
import { readFileSync } from 'node:fs';
import { gunzipSync, gzipSync } from 'node:zlib';
import protobuf from 'protobufjs';
import { CkptError } from '@ckpt/common';

export const SCHEMA_VERSION = 1;
export const PROTO_FILE = new URL('../ckpt.proto', import.meta.url);

const root = protobuf.parse(readFileSync(PROTO_FILE, 'utf8'), { keepCase: false }).root;
const EpochRecordType = root.lookupType('ckpt.v1.EpochRecord');
const ControlRecordType = root.lookupType('ckpt.v1.ControlRecord');
const TO_OBJECT: protobuf.IConversionOptions = { longs: Number, enums: String, defaults: true, oneofs: true };

export type WireErrorCode = 'CKPT_ERR_WIRE_MALFORMED' | 'CKPT_ERR_WIRE_VERSION' | 'CKPT_ERR_WIRE_INVALID';

export class WireError extends CkptError {
  constructor(code: WireErrorCode, message: string, context: Record<string, unknown> = {}) {
    super(code, message, { retriable: false, context });
    this.name = 'WireError';
  }
}

export type Compression = 'none' | 'gzip';
/** Enum values of ckpt.v1.Compression (encode() takes numbers). */
const COMPRESSION_ENUM: Record<Compression, number> = { none: 0, gzip: 1 };

export interface SlotInfo { id: number; pages: number }

export interface EpochBegin {
  pageSize: number;
  slots: SlotInfo[];
  vcpus: number;
  baseline: boolean;
  startedAtMs: number;
}

export interface PageBatch {
  seq: number;
  slots: ArrayLike<number>;
  firsts: ArrayLike<number>;
  counts: ArrayLike<number>;
  /** One byte per range: 1 = zero pages, no bytes in data. */
  zero: Uint8Array;
  compression: Compression;
  /** Non-zero ranges' pages back to back, compressed as `compression` says. */
  data: Uint8Array;
  /** Length of data once decompressed. */
  dataBytes: number;
}

export interface EpochCommit {
  batches: number;
  pages: number;
  zeroPages: number;
  dataBytes: number;
  digest: string;
  vcpuStates: Uint8Array[];
  guestCounters: number[];
  pauseUs: number;
  startedAtMs: number;
  committedAtMs: number;
  /** When the pause that captured the epoch began (decoded as committedAtMs from older harvesters, which do not send it). */
  pausedAtMs: number;
}

interface RecordHead { vm: string; generation: number; epoch: number }
export type EpochRecord =
  | (RecordHead & { kind: 'begin'; begin: EpochBegin })
  | (RecordHead & { kind: 'batch'; batch: PageBatch })
  | (RecordHead & { kind: 'commit'; commit: EpochCommit });

export interface ResyncRequest { reason: string; generation: number; epoch: number; requestedAtMs: number }

/**
 * Harvesters number generations by their clock (ms since the epoch). One more than a day ahead of a
 * reader's clock is not a real harvester's: it would outrank every real generation for good, and the
 * next one above it would leave the safe integers. Replicators park such records; harvesters ignore
 * such a floor in a resync request.
 */
export const GENERATION_AHEAD_MS = 24 * 3600 * 1000;
export const generationTooFarAhead = (generation: number, nowMs = Date.now()): boolean => generation > nowMs + GENERATION_AHEAD_MS;
/** Position of a record within its epoch, for AppliedMarker.part. */
export const PART_BEGIN = 0;
export const PART_COMMIT = 0xffffffff;
export const partOfBatch = (seq: number): number => seq + 1;

export interface AppliedMarker {
  /** Every record of this VM up to (generation, epoch, part) is processed. */
  generation: number;
  epoch: number;
  part: number;
  imageGeneration: number;
  /** -1: no epoch applied. */
  imageEpoch: number;
  stale: boolean;
  atMs: number;
}
/** A harvester's "I publish as this VM" (WriterHeartbeat in ckpt.proto). */
export interface WriterHeartbeat {
  writerId: string;
  host: string;
  pid: number;
  startedAtMs: number;
  generation: number;
  atMs: number;
}
export type ControlRecord =
  | { vm: string; kind: 'resync'; resync: ResyncRequest }
  | { vm: string; kind: 'applied'; applied: AppliedMarker }
  | { vm: string; kind: 'writer'; writer: WriterHeartbeat };

const MAX_U32 = 0xffffffff;
const DIGEST_RE = /^[0-9a-f]{16}$/;

/* ------------------------------------------------------------------ encoding */

export function encodeEpochRecord(r: EpochRecord): Uint8Array {
  const body: Record<string, unknown> = { schemaVersion: SCHEMA_VERSION, vm: r.vm, generation: r.generation, epoch: r.epoch };
  if (r.kind === 'begin') body.begin = r.begin;
  else if (r.kind === 'commit') body.commit = r.commit;
  else body.batch = { ...r.batch, compression: COMPRESSION_ENUM[r.batch.compression] };
  return EpochRecordType.encode(body).finish();
}

export function encodeControlRecord(r: ControlRecord): Uint8Array {
  const body: Record<string, unknown> = { schemaVersion: SCHEMA_VERSION, vm: r.vm };
  if (r.kind === 'resync') body.resync = r.resync;
  else if (r.kind === 'applied') body.applied = r.applied;
  else body.writer = r.writer;
  return ControlRecordType.encode(body).finish();
}

/** Compresses a batch's page bytes; returns them unchanged (compression 'none') when that does not help. */
export function compressPages(data: Uint8Array, compression: Compression): { data: Uint8Array; compression: Compression } {
  if (compression === 'none' || data.byteLength === 0) return { data, compression: 'none' };
  const z = gzipSync(data, { level: 1 });
  return z.byteLength < data.byteLength ? { data: z, compression: 'gzip' } : { data, compression: 'none' };
}

/* ------------------------------------------------------------------ decoding */

function decodeRaw(type: protobuf.Type, buf: Uint8Array, what: string): Record<string, unknown> {
  let msg: protobuf.Message;
  try {
    msg = type.decode(buf);
  } catch (err) {
    throw new WireError('CKPT_ERR_WIRE_MALFORMED', `malformed ${what} (${buf.byteLength} bytes): ${err instanceof Error ? err.message : String(err)}`);
  }
  const o = type.toObject(msg, TO_OBJECT) as Record<string, unknown>;
  if (o.schemaVersion !== SCHEMA_VERSION) {
    throw new WireError('CKPT_ERR_WIRE_VERSION', `${what} has schema version ${String(o.schemaVersion)}; this build reads version ${SCHEMA_VERSION} only`,
      { schemaVersion: o.schemaVersion });
  }
  if (typeof o.vm !== 'string' || o.vm.length === 0 || o.vm.length > 200) throw invalid(`${what} has no valid VM id`);
  return o;
}

function invalid(message: string, context: Record<string, unknown> = {}): WireError {
  return new WireError('CKPT_ERR_WIRE_INVALID', message, context);
}

function u32(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > MAX_U32) throw invalid(`${what} is not a 32-bit unsigned integer`);
  return v;
}

function safeInt(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw invalid(`${what} is out of range`);
  return v;
}

/** Decodes and validates one pages-topic record. Throws WireError. */
export function decodeEpochRecord(buf: Uint8Array): EpochRecord {
  const o = decodeRaw(EpochRecordType, buf, 'epoch record');
  const head: RecordHead = { vm: o.vm as string, generation: safeInt(o.generation, 'generation'), epoch: safeInt(o.epoch, 'epoch') };
  switch (o.body) {
    case 'begin': {
      const b = o.begin as Record<string, unknown>;
      const pageSize = u32(b.pageSize, 'begin.pageSize');
      if (pageSize < 512 || (pageSize & (pageSize - 1)) !== 0) throw invalid(`begin.pageSize ${pageSize} is not a power of two >= 512`);
      const slots = (b.slots as Record<string, unknown>[]).map((s, i) => ({ id: u32(s.id, `begin.slots[${i}].id`), pages: safeInt(s.pages, `begin.slots[${i}].pages`) }));
      if (slots.length === 0) throw invalid('begin has no memory slots');
      if (new Set(slots.map((s) => s.id)).size !== slots.length) throw invalid('begin lists a memory slot twice');
      return { ...head, kind: 'begin', begin: { pageSize, slots, vcpus: u32(b.vcpus, 'begin.vcpus'), baseline: b.baseline === true, startedAtMs: safeInt(b.startedAtMs, 'begin.startedAtMs') } };
    }
    case 'batch': {
      const b = o.batch as Record<string, unknown>;
      const slots = b.slots as number[];
      const firsts = b.firsts as number[];
      const counts = b.counts as number[];
      const zero = b.zero as Uint8Array;
      const n = slots.length;
      if (firsts.length !== n || counts.length !== n || zero.length !== n) {
        throw invalid(`batch ranges disagree in length (slots ${n}, firsts ${firsts.length}, counts ${counts.length}, zero ${zero.length})`);
      }
      for (let i = 0; i < n; i++) {
        if (counts[i] === 0) throw invalid(`batch range ${i} is empty`);
        if (zero[i]! > 1) throw invalid(`batch range ${i} has zero flag ${zero[i]}`);
      }
      const compression = b.compression === 'COMPRESSION_GZIP' ? 'gzip' : b.compression === 'COMPRESSION_NONE' ? 'none' : null;
      if (!compression) throw invalid(`batch uses unknown compression ${String(b.compression)}`);
      const data = b.data as Uint8Array;
      const dataBytes = u32(b.dataBytes, 'batch.dataBytes');
      if (compression === 'none' && data.byteLength !== dataBytes) throw invalid(`batch data is ${data.byteLength} bytes, its header says ${dataBytes}`);
      return { ...head, kind: 'batch', batch: { seq: u32(b.seq, 'batch.seq'), slots, firsts, counts, zero, compression, data, dataBytes } };
    }
    case 'commit': {
      const c = o.commit as Record<string, unknown>;
      const digest = c.digest as string;
      if (!DIGEST_RE.test(digest)) throw invalid(`commit digest ${JSON.stringify(digest)} is not 16 hex digits`);
      return {
        ...head, kind: 'commit', commit: {
          batches: u32(c.batches, 'commit.batches'), pages: safeInt(c.pages, 'commit.pages'), zeroPages: safeInt(c.zeroPages, 'commit.zeroPages'),
          dataBytes: safeInt(c.dataBytes, 'commit.dataBytes'), digest, vcpuStates: c.vcpuStates as Uint8Array[],
          guestCounters: c.guestCounters as number[], pauseUs: u32(c.pauseUs, 'commit.pauseUs'),
          startedAtMs: safeInt(c.startedAtMs, 'commit.startedAtMs'), committedAtMs: safeInt(c.committedAtMs, 'commit.committedAtMs'),
          pausedAtMs: safeInt(c.pausedAtMs ?? 0, 'commit.pausedAtMs') || safeInt(c.committedAtMs, 'commit.committedAtMs'),
        },
      };
    }
    default:
      throw invalid('epoch record has no body (begin, batch or commit)');
  }
}

/**
 * A batch's page bytes, decompressed (bounded by the declared size: no decompression bombs), 4-byte
 * aligned so they can be read as words (a decoded record's bytes are a view at any offset).
 */
export function batchPages(b: PageBatch): Uint8Array {
  if (b.compression === 'none') return b.data.byteOffset % 4 === 0 ? b.data : Uint8Array.prototype.slice.call(b.data);
  let out: Buffer;
  try {
    out = gunzipSync(b.data, { maxOutputLength: Math.max(1, b.dataBytes) });
  } catch (err) {
    throw invalid(`batch ${b.seq}: cannot decompress its pages: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (out.byteLength !== b.dataBytes) throw invalid(`batch ${b.seq}: decompressed to ${out.byteLength} bytes, its header says ${b.dataBytes}`);
  return out;
}

/** Decodes and validates one control-topic record. Throws WireError. */
export function decodeControlRecord(buf: Uint8Array): ControlRecord {
  const o = decodeRaw(ControlRecordType, buf, 'control record');
  const vm = o.vm as string;
  if (o.body === 'resync') {
    const r = o.resync as Record<string, unknown>;
    return { vm, kind: 'resync', resync: { reason: String(r.reason), generation: safeInt(r.generation, 'resync.generation'), epoch: safeInt(r.epoch, 'resync.epoch'), requestedAtMs: safeInt(r.requestedAtMs, 'resync.requestedAtMs') } };
  }
  if (o.body === 'applied') {
    const a = o.applied as Record<string, unknown>;
    const imageEpoch = a.imageEpoch;
    if (typeof imageEpoch !== 'number' || !Number.isSafeInteger(imageEpoch) || imageEpoch < -1) throw invalid('applied.imageEpoch is out of range');
    return {
      vm, kind: 'applied', applied: {
        generation: safeInt(a.generation, 'applied.generation'), epoch: safeInt(a.epoch, 'applied.epoch'), part: u32(a.part, 'applied.part'),
        imageGeneration: safeInt(a.imageGeneration, 'applied.imageGeneration'), imageEpoch, stale: a.stale === true, atMs: safeInt(a.atMs, 'applied.atMs'),
      },
    };
  }
  if (o.body === 'writer') {
    const w = o.writer as Record<string, unknown>;
    const writerId = typeof w.writerId === 'string' ? w.writerId : '';
    if (writerId === '' || writerId.length > 200) throw invalid('writer.writerId is empty or longer than 200 characters');
    return {
      vm, kind: 'writer', writer: {
        writerId, host: (typeof w.host === 'string' ? w.host : '').slice(0, 200), pid: u32(w.pid ?? 0, 'writer.pid'), startedAtMs: safeInt(w.startedAtMs, 'writer.startedAtMs'),
        generation: safeInt(w.generation, 'writer.generation'), atMs: safeInt(w.atMs, 'writer.atMs'),
      },
    };
  }
  throw invalid('control record has no body (resync, applied or writer)');
}
