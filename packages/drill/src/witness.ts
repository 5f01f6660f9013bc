/**
 * An independent reader of the pages topic: it rebuilds, in memory, the image every committed epoch
 * describes, from the records alone (its own consumer group, from the beginning). After the primary
 * dies, it knows the last committed epoch and that epoch's bytes: the reference the restored guest
 * must equal byte for byte. It shares only the wire decoder with the replicator.
 */
import { Kafka, logLevel, type Admin, type Consumer } from 'kafkajs';
import { settleWithin, SparseImage } from '@ckpt/common';
import { batchPages, decodeEpochRecord, type EpochBegin, type EpochCommit, type PageBatch } from '@ckpt/proto';

export interface WitnessedEpoch {
  generation: number;
  epoch: number;
  digest: string;
  /** When the harvester paused the guest for this epoch: the guest time it holds. */
  pausedAtMs: number;
  committedAtMs: number;
  guestCounters: number[];
}

/**
 * The witness is not covered by the harvester's replication window, and the embedded broker keeps
 * only 5 MiB per partition: after a broker outage it must be reading again before the replicator is,
 * or records pass retention unread. Hence retries far quicker than the replicator's (200 ms-3 s).
 */
const RETRY = { initialRetryTime: 20, maxRetryTime: 100, retries: 1000 };

interface Pending { generation: number; epoch: number; begin: EpochBegin; batches: { b: PageBatch; pages: Uint8Array }[] }

export class Witness {
  image: SparseImage | null = null;
  last: WitnessedEpoch | null = null;
  /** Epochs committed, seen in order. */
  committed = 0;
  /** Records that could not be used (they would be a bug in the harvester or the wire format). */
  problems: string[] = [];
  /** Consumers that crashed and were replaced (a broker outage can make kafkajs give up). */
  restarts = 0;
  /** Records of the VM taken, and why the last commit was not taken as a committed epoch. */
  records = 0;
  lastRejection = '';
  /** Set when records passed retention before the witness read them: it cannot vouch for later epochs. */
  lost = '';
  private pending: Pending | null = null;
  private consumer: Consumer;
  private stopped = false;
  private readonly groupId = `ckpt-drill-witness-${process.pid}-${Date.now()}`;
  private readonly offsets = new Map<number, number>();
  private readonly seeking = new Map<number, { to: number; since: number }>();
  private watchdog: NodeJS.Timeout | null = null;
  private replacing = false;
  private lastMessageAt = Date.now();
  private admin: Admin | null = null;
  private adminReady: Promise<void> | null = null;

  constructor(private readonly kafka: Kafka, private readonly topic: string, private readonly vm: string, private readonly onEvent: (what: string) => void = () => undefined) {
    this.consumer = this.newConsumer();
  }

  private newConsumer(): Consumer {
    return this.kafka.consumer({ groupId: this.groupId, maxWaitTimeInMs: 20, maxBytesPerPartition: 8 << 20, retry: RETRY });
  }

  static client(brokers: string[]): Kafka {
    return new Kafka({ clientId: 'ckpt-drill-witness', brokers, logLevel: logLevel.NOTHING, retry: RETRY });
  }

  async start(): Promise<void> {
    const c = this.consumer;
    c.on(c.events.CRASH, (e) => {
      const { error, restart } = e.payload as { error: Error; restart: boolean };
      this.onEvent(`witness consumer crashed (${error.message}); ${restart ? 'kafkajs restarts it' : 'replacing it'}`);
      if (!restart) this.replace(c);
    });
    if (!this.watchdog) {
      // A consumer that neither crashes nor delivers while records wait unread is replaced too.
      this.watchdog = setInterval(() => {
        if (this.stopped || this.replacing || Date.now() - this.lastMessageAt < 5000) return;
        this.caughtUp().then((up) => {
          if (!up && !this.stopped && Date.now() - this.lastMessageAt >= 5000) {
            this.onEvent('witness consumer stalled with records unread; replacing it');
            this.replace(this.consumer);
          }
        }, () => undefined);
      }, 2000);
    }
    await c.connect();
    await c.subscribe({ topic: this.topic, fromBeginning: true });
    await c.run({
      eachMessage: ({ partition, message }) => {
        const off = Number(message.offset);
        this.lastMessageAt = Date.now();
        const last = this.offsets.get(partition);
        if (last !== undefined && off <= last) return Promise.resolve(); // delivered again: already taken
        const seeking = this.seeking.get(partition);
        if (seeking) {
          // Until the seek lands, the rest of the batch already fetched is dropped. If the missed
          // offset does not come back within 5 s, the records are gone: the gap stands.
          if (off !== seeking.to && Date.now() - seeking.since < 5000) return Promise.resolve();
          this.seeking.delete(partition);
          if (off !== seeking.to) {
            this.lost = `offsets ${seeking.to}..${off - 1} of partition ${partition} passed the broker's retention unread`;
            this.onEvent(`witness: ${this.lost}`);
          }
        } else if (last !== undefined && off > last + 1) {
          // Offsets jumped: records passed retention unread (what was seen here, after a broker outage),
          // or the consumer skipped them. Read once more from the first one missed, in case they are there.
          this.seeking.set(partition, { to: last + 1, since: Date.now() });
          this.onEvent(`witness: partition ${partition} jumped from offset ${last} to ${off}; reading again from ${last + 1}`);
          c.seek({ topic: this.topic, partition, offset: String(last + 1) });
          return Promise.resolve();
        }
        this.offsets.set(partition, off);
        if (message.key?.toString() === this.vm && message.value) this.take(message.value);
        return Promise.resolve();
      },
    });
  }

  /** True once every record the topic holds now has been read. */
  async caughtUp(): Promise<boolean> {
    // One admin client, connected on first use: this is polled every 100 ms during a failover.
    this.admin ??= this.kafka.admin();
    this.adminReady ??= this.admin.connect();
    try {
      await this.adminReady;
    } catch (err) {
      this.adminReady = null;
      throw err;
    }
    const parts = await this.admin.fetchTopicOffsets(this.topic);
    return parts.every((p) => Number(p.high) === 0 || (this.offsets.get(p.partition) ?? -1) + 1 >= Number(p.high));
  }

  /** Replays from the group's committed offset leave the same state: take() is idempotent. */
  private replace(c: Consumer): void {
    if (this.stopped || this.replacing) return;
    this.replacing = true;
    this.restarts++;
    void c.disconnect().catch(() => undefined).then(async () => {
      if (this.stopped) return;
      this.consumer = this.newConsumer();
      this.lastMessageAt = Date.now();
      await this.start().catch((err: unknown) => this.onEvent(`witness consumer cannot restart: ${(err as Error).message}`));
    }).finally(() => { this.replacing = false; });
  }

  /**
   * Disconnects, waiting at most `waitMs` for kafkajs: with the broker gone (Ctrl-C kills it first),
   * its fetch loop retries for up to RETRY's 1000 attempts and disconnect() waits for that loop.
   */
  async stop(waitMs = 3000): Promise<void> {
    this.stopped = true;
    if (this.watchdog) clearInterval(this.watchdog);
    await settleWithin(Promise.all([this.consumer.disconnect(), this.admin?.disconnect()]), waitMs);
  }

  /** Takes one record of the VM (public for tests). */
  take(raw: Buffer): void {
    this.records++;
    let r;
    try {
      r = decodeEpochRecord(raw);
    } catch (err) {
      this.problems.push(`undecodable record: ${(err as Error).message}`);
      return;
    }
    // Without an idempotent producer (the embedded broker), a send retried after a broker outage can
    // write records twice: a repeated begin or batch of the epoch being assembled is skipped, as the
    // replicator does.
    const p0 = this.pending;
    const same = p0 !== null && p0.generation === r.generation && p0.epoch === r.epoch;
    if (r.kind === 'begin') {
      if (!same) this.pending = { generation: r.generation, epoch: r.epoch, begin: r.begin, batches: [] };
    } else if (r.kind === 'batch') {
      if (same && r.batch.seq === p0.batches.length) p0.batches.push({ b: r.batch, pages: batchPages(r.batch) });
      else if (!(same && r.batch.seq < p0.batches.length)) this.pending = null; // a torn epoch (the primary died, or a gap): never committed
    } else {
      const p = this.pending;
      this.pending = null;
      const l = this.last;
      if (l && l.generation === r.generation && l.epoch === r.epoch) return; // repeated by a retried send: already taken
      const at = `commit of ${r.generation}/${r.epoch}`;
      if (!p) return this.reject(`${at}: no assembly`);
      if (p.generation !== r.generation || p.epoch !== r.epoch) return this.reject(`${at}: assembling ${p.generation}/${p.epoch}`);
      if (p.batches.length !== r.commit.batches) return this.reject(`${at}: ${p.batches.length} of ${r.commit.batches} batches`);
      if (!p.begin.baseline && (!l || l.generation !== r.generation || l.epoch !== r.epoch - 1)) {
        return this.reject(`${at}: the last committed epoch is ${l ? `${l.generation}/${l.epoch}` : 'none'}`);
      }
      this.apply(p, r.commit);
    }
  }

  private reject(why: string): void {
    this.lastRejection = why;
  }

  private apply(p: Pending, c: EpochCommit): void {
    const ps = p.begin.pageSize;
    if (p.begin.baseline || !this.image) this.image = new SparseImage(ps, p.begin.slots.map((s) => s.pages));
    const index = new Map(p.begin.slots.map((s, i) => [s.id, i]));
    for (const { b, pages } of p.batches) {
      let off = 0;
      for (let i = 0; i < b.slots.length; i++) {
        const slot = index.get(b.slots[i]!)!;
        if (b.zero[i] === 1) this.image.zeroPages(slot, b.firsts[i]!, b.counts[i]!);
        else {
          this.image.writePages(slot, b.firsts[i]!, b.counts[i]!, pages, off);
          off += b.counts[i]! * ps;
        }
      }
    }
    this.last = { generation: p.generation, epoch: p.epoch, digest: c.digest, pausedAtMs: c.pausedAtMs, committedAtMs: c.committedAtMs, guestCounters: c.guestCounters };
    this.committed++;
  }
}
