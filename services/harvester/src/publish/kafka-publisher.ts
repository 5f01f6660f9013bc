/**
 * Publishes epochs to the pages topic: an EpochSink that turns each epoch into a begin record, page
 * batches under the record limit (zero pages as marks, optional gzip), and a commit record, all keyed
 * by the VM id so they stay in order on one partition.
 *
 * Memory is bounded twice: at most `maxInFlightBytes` are sent and not yet acknowledged by the broker,
 * and (when `windowBytes` > 0) at most `windowBytes` are produced and not yet processed by the
 * replicator. Above either limit the sink waits, so the cut takes longer and the harvest loop's
 * interval stretches; the waits are counted in ckpt_harvester_backpressure_seconds_total. A send that
 * keeps failing for `publishTimeoutMs` throws CKPT_ERR_PUBLISH_FAILED: the harvest loop then starts a
 * new generation with a baseline (the replicator sees the torn epoch and discards it).
 */
import type { Producer } from 'kafkajs';
import { CkptError, unlessAborted, type Logger } from '@ckpt/common';
import {
  compressPages, encodeEpochRecord, PART_BEGIN, PART_COMMIT, partOfBatch, splitIntoBatches, type Compression, type EpochRecord,
} from '@ckpt/proto';
import type { EpochCommit, EpochHeader, EpochSink, PageSegment } from '../epoch/epoch-types.ts';
import type { HarvesterMetrics } from '../metrics.ts';
import { ReplicationWindow, type Pending } from './replication-window.ts';

export interface PublisherOptions {
  producer: Producer;
  topic: string;
  vm: string;
  maxRecordBytes: number;
  /**
   * Most record bytes one produce request carries. Kafka stores the records of one request to one
   * partition as one record batch, and the topic's max.message.bytes limits that batch (stock Kafka:
   * 1 MiB). A broker that still refuses a request as too large halves the cap for this publisher.
   */
  maxRequestBytes?: number;
  compression: Compression;
  maxInFlightBytes: number;
  /** Cap on bytes produced but not yet processed by the replicator (0 = off). */
  windowBytes: number;
  publishTimeoutMs: number;
  /**
   * When the replicator reports no progress for this long while the window is full, the window is
   * cleared and production resumes (records lost to retention are never reported; the replicator
   * detects the gap when newer records arrive and asks for a baseline), unless `logStartOffset` shows
   * the records are still on the broker: then the wait goes on. 0 = wait forever.
   */
  windowStallMs?: number;
  /**
   * The oldest offset the broker still holds on a partition of the topic (its log start offset). With
   * it, a stalled window is cleared only once records it waits for are gone (retention): while they
   * are still there the replicator will get them when it comes back, so waiting loses nothing and needs
   * no baseline. Without it (or when it fails), the window is cleared after `windowStallMs`.
   */
  logStartOffset?: (partition: number) => Promise<bigint>;
  /**
   * Longest a stalled window is waited on while the broker still holds its records (default 6 ×
   * windowStallMs): no epoch is cut meanwhile (the standby ages; the guest runs on, the harvest loop
   * still frees its full dirty rings), so past this the window is cleared anyway.
   */
  windowMaxWaitMs?: number;
  /** Aborts waits for the replicator and for the broker (the run is stopping): CKPT_ERR_ABORTED, the epoch in progress abandoned. */
  signal?: AbortSignal;
  metrics?: HarvesterMetrics;
  log: Logger;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Default cap on the record bytes of one produce request: under stock Kafka's max.message.bytes. */
export const DEFAULT_MAX_REQUEST_BYTES = 1_000_000;

/** The broker refused a request as larger than the topic's max.message.bytes. */
function isTooLarge(err: unknown): boolean {
  let e = err as { type?: string; cause?: unknown } | undefined;
  for (let depth = 0; e && depth < 5; depth++, e = e.cause as typeof e) {
    if (e.type === 'MESSAGE_TOO_LARGE' || e.type === 'RECORD_LIST_TOO_LARGE') return true;
  }
  return false;
}

const TOO_LARGE = Symbol('too large');

/** Which epoch a queued record belongs to. */
interface EpochAt { generation: number; epoch: number }

export class KafkaPublisher implements EpochSink {
  readonly window = new ReplicationWindow();
  /** Records waiting for the sender, in order. One sender per VM keeps them in order on the partition. */
  /** Records encoded and not yet acknowledged; `at` names the epoch (not the record: its pages may be a view of the cycle's staging buffer). */
  private queue: { value: Buffer; at: EpochAt; pending: Pending; n: number }[] = [];
  private queuedBytes = 0;
  /** Set while sends fail (since when, the last error); cleared by the next acknowledged send. */
  private sendProblem: { sinceMs: number; message: string } | null = null;
  /** Records queued so far, and how many of them must go out without waiting for more (see flush()). */
  private queuedCount = 0;
  private flushThrough = 0;
  private sending: Promise<void> | null = null;
  private progress: (() => void)[] = [];
  private failure: Error | null = null;
  private seq = 0;
  /** Bytes of records acknowledged by the broker, for summaries. */
  bytesOnWire = 0;
  /** Current cap on one request's record bytes (lowered when the broker refuses a request as too large). */
  requestLimit: number;

  constructor(private readonly o: PublisherOptions) {
    this.requestLimit = o.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES;
  }

  async begin(h: EpochHeader): Promise<void> {
    this.seq = 0;
    // A baseline does not clear the window: the records of the generation before it are still on the
    // partition ahead of it, and the replicator reports them (skipped, once its image is stale) like
    // any other, so they keep counting until it has got past them. Forgetting them let a partition
    // shared by several VMs hold more than their windows allow, and retention drop a neighbour's records.
    await this.publish({
      vm: this.o.vm, generation: h.generation, epoch: h.epoch, kind: 'begin',
      begin: { pageSize: h.pageSize, slots: h.slots.map((s) => ({ id: s.id, pages: s.pages })), vcpus: h.vcpus, baseline: h.baseline, startedAtMs: h.startedAtMs },
    }, PART_BEGIN);
  }

  async segment(h: EpochHeader, seg: PageSegment): Promise<void> {
    const parts = splitIntoBatches(seg.ranges, seg.data, h.pageSize, this.o.maxRecordBytes, Buffer.byteLength(this.o.vm));
    for (const p of parts) {
      const z = compressPages(p.data, this.o.compression);
      const seq = this.seq++;
      await this.publish({
        vm: this.o.vm, generation: h.generation, epoch: h.epoch, kind: 'batch',
        batch: { seq, slots: p.slots, firsts: p.firsts, counts: p.counts, zero: p.zero, compression: z.compression, data: z.data, dataBytes: p.data.byteLength },
      }, partOfBatch(seq));
    }
  }

  async commit(h: EpochHeader, c: EpochCommit): Promise<void> {
    await this.publish({
      vm: this.o.vm, generation: h.generation, epoch: h.epoch, kind: 'commit',
      commit: {
        batches: this.seq, pages: c.pages, zeroPages: c.zeroPages, dataBytes: c.bytes, digest: c.digest, vcpuStates: c.vcpuStates,
        guestCounters: c.guestCounters, pauseUs: c.pauseUs, startedAtMs: h.startedAtMs, committedAtMs: c.committedAtMs, pausedAtMs: c.pausedAtMs,
      },
    }, PART_COMMIT);
    // An epoch counts as committed once the broker has all of it.
    await this.drain();
  }

  /** Waits for every record published so far to be acknowledged; throws the first failure. */
  async drain(): Promise<void> {
    this.flush();
    while (this.sending) await this.unlessStopped(this.sending);
    this.throwIfFailed();
  }

  /** Why the broker is not taking records right now (a send is failing and retrying), or null. */
  problem(): string | null {
    const p = this.sendProblem;
    return p ? `cannot publish to Kafka for ${Math.round((Date.now() - p.sinceMs) / 1000)} s: ${p.message}` : null;
  }

  /** A wait that ends when the publisher's `signal` aborts (the harvester is stopping): CKPT_ERR_ABORTED. */
  private unlessStopped<T>(p: Promise<T>): Promise<T> {
    return unlessAborted(p, this.o.signal, () => new CkptError('CKPT_ERR_ABORTED', `stopped while publishing ${this.o.vm}: the epoch in progress is abandoned`));
  }

  private throwIfFailed(): void {
    if (this.failure) {
      const f = this.failure;
      this.failure = null;
      this.queue = [];
      this.queuedBytes = 0;
      // Records that were never sent will never be reported processed (a new generation follows).
      this.window.clear();
      throw f;
    }
  }

  /**
   * Sends everything queued so far without waiting for more. Until then the sender holds records
   * back while they fill less than one request: the records of an epoch mostly travel in one request,
   * which the broker stores as one record batch and a consumer gets in one fetch (the embedded broker
   * returns one record batch per partition per fetch, so one request per record costs one fetch each).
   * The commit, drain() and every wait below flush, so nothing is held while something waits for it.
   */
  private flush(): void {
    this.flushThrough = this.queuedCount;
    if (this.queue.length > 0) this.sending ??= this.sendLoop();
  }

  private nextProgress(): Promise<void> {
    return new Promise((r) => this.progress.push(r));
  }

  private async publish(rec: EpochRecord, part: number): Promise<void> {
    this.throwIfFailed();
    const encoded = encodeEpochRecord(rec);
    // A view, not a copy (Buffer.from(Uint8Array) copies): protobufjs already gave the record its own buffer.
    const value = Buffer.from(encoded.buffer, encoded.byteOffset, encoded.byteLength);
    const size = value.byteLength;
    const t0 = performance.now();
    // The replication window: do not run further ahead of the replicator than the topic can hold.
    if (this.o.windowBytes > 0) {
      let waited = false;
      let probedAt = 0;
      // Counted as it passes, not when the wait ends: a dashboard must show a stall while it lasts.
      let countedTo = t0;
      // While our own sends fail, the broker is what holds the window (the replicator cannot apply what
      // it cannot fetch, nor send its markers): counted as in-flight, and no stall is declared. A broker
      // outage used to be blamed on the replicator, and after 10 s the window was dropped for it.
      let brokerTrouble = false;
      const count = (): void => {
        const now = performance.now();
        this.o.metrics?.backpressureSeconds.inc({ cause: this.sendProblem ? 'in-flight' : 'replication-window' }, (now - countedTo) / 1000);
        countedTo = now;
      };
      while (this.window.unappliedBytes > 0 && this.window.unappliedBytes + size > this.o.windowBytes) {
        this.flush();
        if (!waited) this.o.log.debug('waiting for the replicator', { unapplied: this.window.unappliedBytes, window: this.o.windowBytes });
        waited = true;
        if (this.o.signal?.aborted) {
          throw new CkptError('CKPT_ERR_ABORTED', `stopped while waiting for the replicator to apply ${this.window.unappliedBytes} bytes of ${this.o.vm} (window ${this.o.windowBytes}); last marker: ${JSON.stringify(this.window.lastMarker)}`);
        }
        await this.window.changed(250);
        count();
        this.throwIfFailed();
        if (this.sendProblem) {
          if (!brokerTrouble) this.o.log.warn('Kafka is not taking records: the replication window waits for the broker, not the replicator', { vm: this.o.vm, unapplied: this.window.unappliedBytes, problem: this.sendProblem.message });
          brokerTrouble = true;
          probedAt = performance.now(); // the stall clock restarts once the broker takes records again
          continue;
        }
        const stall = this.o.windowStallMs ?? 10_000;
        if (stall > 0 && performance.now() - Math.max(t0, this.window.lastChangeMs, probedAt) > stall) {
          const maxWait = this.o.windowMaxWaitMs ?? 6 * stall;
          const stalledFor = performance.now() - Math.max(t0, this.window.lastChangeMs);
          const stalledMs = Math.round(stalledFor);
          const there = stalledFor < maxWait ? await this.recordsStillOnBroker() : 'gone';
          if (there !== 'gone') {
            // The replicator is away (restarting, rebalancing), or the broker is: not behind lost records. Keep waiting.
            probedAt = performance.now();
            if (there === 'there') this.o.log.warn('the replicator reports no progress; the records it has not processed are still on the broker: waiting for it', { vm: this.o.vm, unapplied: this.window.unappliedBytes, stalledMs, lastMarker: this.window.lastMarker });
            else this.o.log.warn('no progress, and the broker does not answer: waiting for it (producing more would not help)', { vm: this.o.vm, unapplied: this.window.unappliedBytes, stalledMs });
            continue;
          }
          this.o.log.warn('the replicator reports no progress: resuming without the replication window', { vm: this.o.vm, unapplied: this.window.unappliedBytes, stalledMs, lastMarker: this.window.lastMarker });
          this.o.metrics?.windowStalls.inc();
          this.window.clear();
          break;
        }
      }
      if (waited) count();
    }
    // The in-flight cap: bytes queued or being sent.
    let t1 = performance.now();
    while (this.queuedBytes > 0 && this.queuedBytes + size > this.o.maxInFlightBytes) {
      this.flush();
      await this.unlessStopped(this.nextProgress());
      const now = performance.now();
      this.o.metrics?.backpressureSeconds.inc({ cause: 'in-flight' }, (now - t1) / 1000);
      t1 = now;
      this.throwIfFailed();
    }
    const pending = this.window.produced(rec.generation, rec.epoch, part, size);
    this.queue.push({ value, at: { generation: rec.generation, epoch: rec.epoch }, pending, n: ++this.queuedCount });
    this.queuedBytes += size;
    this.o.metrics?.inFlightBytes.set(this.queuedBytes);
    if (rec.kind === 'commit') this.flush();
    else if (this.queuedBytes >= this.requestLimit) this.sending ??= this.sendLoop();
  }

  /**
   * Are the oldest records the window waits for still on the broker? 'gone' when retention took them,
   * or when that cannot be told (no `logStartOffset`): then only clearing the window avoids waiting for
   * a marker that never comes. 'unreachable' when the broker did not answer the question: the broker,
   * not the replicator, is what is away, and producing more would not help. A record not yet
   * acknowledged is still ours.
   */
  private async recordsStillOnBroker(): Promise<'there' | 'gone' | 'unreachable'> {
    const head = this.window.oldest();
    if (!this.o.logStartOffset || !head) return 'gone';
    if (!head.acked) return 'there';
    if (head.offset === undefined || head.partition === undefined) return 'gone';
    try {
      return (await this.o.logStartOffset(head.partition)) <= head.offset ? 'there' : 'gone';
    } catch (err) {
      this.o.log.warn('cannot read the topic\'s log start offset: is the broker reachable?', { vm: this.o.vm, err });
      return 'unreachable';
    }
  }

  /**
   * Sends queued records in order, several per request, while a full request's worth is queued or
   * records wait to be flushed; stops at the first record that cannot be sent.
   */
  private async sendLoop(): Promise<void> {
    while (this.queue.length > 0 && !this.failure && (this.queue[0]!.n <= this.flushThrough || this.queuedBytes >= this.requestLimit)) {
      let n = 0;
      let bytes = 0;
      while (n < this.queue.length && (n === 0 || bytes + this.queue[n]!.value.byteLength <= this.requestLimit)) bytes += this.queue[n++]!.value.byteLength;
      const batch = this.queue.slice(0, n);
      try {
        const sent = await this.sendWithRetry(batch, bytes);
        if (sent === TOO_LARGE) continue; // smaller requests from now on
        batch.forEach((b, i) => {
          b.pending.acked = true;
          if (sent) {
            b.pending.partition = sent.partition;
            b.pending.offset = sent.baseOffset + BigInt(i);
          }
        });
        this.bytesOnWire += bytes;
        this.o.metrics?.bytesPublished.inc(bytes);
      } catch (err) {
        this.failure = err instanceof Error ? err : new Error(String(err));
      }
      this.queue.splice(0, n);
      this.queuedBytes -= bytes;
      this.o.metrics?.inFlightBytes.set(this.queuedBytes);
      const p = this.progress;
      this.progress = [];
      for (const f of p) f();
    }
    // Cleared in the same synchronous step as the emptiness check above, so a record queued from
    // now on starts a new loop (a `.finally()` would leave a window where it is stranded).
    this.sending = null;
  }

  /**
   * Sends records in one request, retrying with backoff until `publishTimeoutMs`; nothing is dropped
   * silently. A request of several records that the broker refuses as too large lowers the request cap
   * and returns TOO_LARGE (nothing was stored: the caller sends them again in smaller requests); a
   * single record refused so is a configuration error no new generation can mend.
   */
  private async sendWithRetry(batch: { value: Buffer; at: EpochAt }[], bytes: number): Promise<{ partition: number; baseOffset: bigint } | null | typeof TOO_LARGE> {
    const deadline = Date.now() + this.o.publishTimeoutMs;
    const first = batch[0]!.at;
    for (let attempt = 0; ; attempt++) {
      const t = performance.now();
      try {
        const meta = await this.o.producer.send({ topic: this.o.topic, acks: -1, messages: batch.map((b) => ({ key: this.o.vm, value: b.value })) });
        this.sendProblem = null;
        this.o.metrics?.produceSeconds.observe((performance.now() - t) / 1000);
        // Where the records landed (one partition: they share the VM's key).
        const m = Array.isArray(meta) ? meta[0] : undefined;
        return m?.baseOffset !== undefined && /^\d+$/.test(m.baseOffset) ? { partition: m.partition, baseOffset: BigInt(m.baseOffset) } : null;
      } catch (err) {
        this.o.metrics?.produceErrors.inc();
        this.sendProblem = { sinceMs: this.sendProblem?.sinceMs ?? Date.now(), message: (err as Error).message };
        if (isTooLarge(err)) {
          if (batch.length === 1) {
            throw new CkptError('CKPT_ERR_RECORD_TOO_LARGE', `the broker refuses a ${bytes}-byte record of ${this.o.vm} on ${this.o.topic} as larger than the topic's max.message.bytes: set the harvester's maxRecordBytes (HARVESTER_MAX_RECORD_BYTES) below that limit, or raise the limit`,
              { context: { vm: this.o.vm, topic: this.o.topic, bytes } });
          }
          this.requestLimit = Math.max(1, Math.floor(bytes / 2));
          this.o.log.warn('the broker refused a produce request as too large: sending smaller requests (raise the topic\'s max.message.bytes, or set maxRequestBytes below it)', { vm: this.o.vm, topic: this.o.topic, requestBytes: bytes, records: batch.length, newLimit: this.requestLimit });
          return TOO_LARGE;
        }
        if (this.o.signal?.aborted) throw new CkptError('CKPT_ERR_ABORTED', `stopped while publishing epoch ${first.generation}/${first.epoch} of ${this.o.vm}: ${(err as Error).message}`);
        if (Date.now() >= deadline) {
          throw new CkptError('CKPT_ERR_PUBLISH_FAILED', `cannot publish epoch ${first.generation}/${first.epoch} of ${this.o.vm} for ${this.o.publishTimeoutMs} ms: ${(err as Error).message}`,
            { retriable: true, context: { vm: this.o.vm, generation: first.generation, epoch: first.epoch } });
        }
        if (attempt % 10 === 0) this.o.log.warn('publish failed; retrying', { vm: this.o.vm, epoch: first.epoch, records: batch.length, err });
        await sleep(Math.min(1000, 50 * 2 ** Math.min(attempt, 5)));
      }
    }
  }
}
