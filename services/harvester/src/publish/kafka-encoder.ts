/**
 * Gives kafkajs an encoder that keeps large buffers by reference instead of copying them.
 *
 * kafkajs builds a produce request by nesting encoders: the record, the record batch, its body, the
 * partition, the topic, the request, its size prefix. Each level copies everything below it into a
 * fresh, zero-filled buffer. A 1 MB record of pages was allocated, zeroed and copied about nine times
 * (bench:pipeline: 6.6 GB of encoder buffers for 0.7 GB of records). Besides the copies, that much
 * buffer memory made V8 run a full collection every 100 ms or so ("external memory pressure").
 *
 * ChunkedEncoder is kafkajs's own Encoder with one change: a buffer of at least LARGE_BYTES written
 * into it, or an encoder holding one, is kept as a reference in a list of parts. Its `buffer` joins the
 * parts into one buffer, once, when something reads it: kafkajs does that for the record batch's CRC,
 * for the batch itself and for the socket write, so a record is copied three times, into buffers
 * that need no zeroing. Small writes behave exactly as before.
 *
 * Like kafka-crc32c.ts, this must be evaluated before kafkajs loads (its encoder module loads with
 * kafkajs itself): the harvester's main.ts and the pipeline import it first. It replaces the exports
 * of kafkajs's encoder module in Node's module cache, so every kafkajs module that requires the
 * encoder afterwards gets ChunkedEncoder. When kafkajs had loaded already, or its encoder is not where
 * kafkajs 2.x has it, kafkajs keeps its own: slower, equally correct, and said by kafkaEncoder().
 */
import { kafkajsRequire as require, unloadedKafkajsModule } from './kafkajs-module.ts';

/** kafkajs 2.x's encoder module: exports the Encoder class every request and record batch uses. */
const KAFKAJS_ENCODER_MODULE = 'kafkajs/src/protocol/encoder.js';
/** Buffers at least this large are referenced, not copied (smaller copies cost less than a part). */
export const LARGE_BYTES = 16 * 1024;

export interface KafkaEncoderStatus {
  /** "chunked": kafkajs encodes with ChunkedEncoder; "kafkajs": with its own Encoder. */
  impl: 'chunked' | 'kafkajs';
  /** Why kafkajs keeps its own encoder ('' when chunked). */
  reason: string;
  /** Bytes not copied, so far in this process, counted at every level where a copy was avoided (a 1 MB record nested in six levels counts several times). */
  bytesReferenced: number;
}

/** The part of kafkajs's Encoder this module relies on. */
interface KafkajsEncoder {
  buf: Buffer;
  offset: number;
  readonly buffer: Buffer;
  size(): number;
  writeInt32(value: number): this;
  writeBufferInternal(buffer: Buffer): void;
  writeBytes(value: unknown): this;
  writeEncoder(value: unknown): this;
  writeEncoderArray(value: unknown): this;
}
type EncoderClass = new (initialSize?: number) => KafkajsEncoder;

let bytesReferenced = 0;

/** kafkajs's Encoder, with large buffers kept as parts (see the module's comment). */
function chunkedEncoderClass(Base: EncoderClass): EncoderClass {
  class ChunkedEncoder extends Base {
    /** Bytes written before `buf`: small writes' buffers, sealed, and large buffers, referenced. */
    private parts: Buffer[] = [];
    private partsBytes = 0;

    /** Moves the small writes so far into the parts; `buf` starts over. */
    private seal(): void {
      if (this.offset === 0) return;
      this.pushPart(this.buf.subarray(0, this.offset));
      // A new buffer, never the old one again: the part just pushed (and any parent that took it) views it.
      this.buf = Buffer.allocUnsafe(this.buf.length >= 4096 ? 512 : this.buf.length);
      this.offset = 0;
    }

    private pushPart(b: Buffer): void {
      this.parts.push(b);
      this.partsBytes += b.length;
    }

    override writeBufferInternal(buffer: Buffer): void {
      if (buffer.length < LARGE_BYTES) {
        super.writeBufferInternal(buffer);
        return;
      }
      this.seal();
      this.pushPart(buffer);
      bytesReferenced += buffer.length;
    }

    // kafkajs's writeBytes makes room in `buf` for the whole value before writing it.
    override writeBytes(value: unknown): this {
      if (!Buffer.isBuffer(value) || value.length < LARGE_BYTES) return super.writeBytes(value);
      this.writeInt32(value.length);
      this.writeBufferInternal(value);
      return this;
    }

    override writeEncoder(value: unknown): this {
      if (!(value instanceof ChunkedEncoder) || value.parts.length === 0) return super.writeEncoder(value);
      this.seal();
      for (const p of value.parts) this.pushPart(p);
      bytesReferenced += value.partsBytes;
      // Its small tail is copied: the other encoder may still write into that buffer.
      if (value.offset > 0) super.writeBufferInternal(value.buf.subarray(0, value.offset));
      return this;
    }

    override writeEncoderArray(value: unknown): this {
      if (!Array.isArray(value) || !value.every((v) => v instanceof ChunkedEncoder)) return super.writeEncoderArray(value);
      for (const v of value) this.writeEncoder(v);
      return this;
    }

    override size(): number {
      return this.partsBytes + this.offset;
    }

    /** The encoded bytes as one buffer: the parts are joined once, and stay joined. */
    override get buffer(): Buffer {
      if (this.parts.length === 0) return this.buf.subarray(0, this.offset);
      if (this.parts.length > 1 || this.offset > 0) {
        const joined = Buffer.allocUnsafe(this.size());
        let at = 0;
        for (const p of this.parts) at += p.copy(joined, at);
        this.buf.copy(joined, at, 0, this.offset);
        this.parts = [joined];
        this.partsBytes = joined.length;
        // `buf` is written again from 0: safe only because no part views it (seal() always replaces
        // `buf`, and writeEncoder copies another encoder's tail rather than referencing it).
        this.offset = 0;
      }
      return this.parts[0]!;
    }
  }
  return ChunkedEncoder;
}

/** Replaces kafkajs's encoder module's exports with ChunkedEncoder; returns the module's path, or why not. */
function install(): { path: string; cls: EncoderClass } | { reason: string } {
  const where = unloadedKafkajsModule(KAFKAJS_ENCODER_MODULE, 'kafkajs had loaded its encoder before the harvester could replace it');
  if ('reason' in where) return where;
  const { path } = where;
  const Base = require(path) as EncoderClass;
  const proto = Base?.prototype as unknown as Record<string, unknown> | undefined;
  const needed = ['writeInt32', 'writeBufferInternal', 'writeBytes', 'writeEncoder', 'writeEncoderArray', 'size'];
  if (typeof Base !== 'function' || !proto || needed.some((m) => typeof proto[m] !== 'function')) {
    return { reason: `${KAFKAJS_ENCODER_MODULE} does not export the Encoder class of kafkajs 2.x` };
  }
  const cls = chunkedEncoderClass(Base);
  require.cache[path]!.exports = cls;
  return { path, cls };
}

const installed = process.env.CKPT_KAFKA_ENCODER === 'kafkajs' ? { reason: 'CKPT_KAFKA_ENCODER=kafkajs' } : install();

/** Which encoder kafkajs uses in this process, and why. */
export function kafkaEncoder(): KafkaEncoderStatus {
  if ('reason' in installed) return { impl: 'kafkajs', reason: installed.reason, bytesReferenced };
  if (require.cache[installed.path]?.exports !== installed.cls) return { impl: 'kafkajs', reason: 'another module replaced the chunked encoder', bytesReferenced };
  return { impl: 'chunked', reason: '', bytesReferenced };
}
