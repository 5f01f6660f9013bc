/**
 * The replicator service: a Kafka consumer group over the pages topic feeding the Applier, a producer
 * for the control topic (resync requests, applied markers) and the dead-letter topic.
 *
 * Offsets: a record's offset is resolved only after its effect is acknowledged by Redis (staged,
 * applied, or set aside), so a crash redelivers from the last durable record; the Applier is
 * idempotent under redelivery. Any error from Redis or Kafka while handling a record drops the cached
 * per-VM state (Redis is the truth) and retries the same record, heartbeating meanwhile.
 */
import { hostname } from 'node:os';
import type { Redis } from 'ioredis';
import { Kafka, logLevel, PartitionAssigners, Partitioners, type Consumer, type EachBatchPayload, type KafkaConfig, type KafkaMessage, type PartitionAssigner, type Producer } from 'kafkajs';
import { CkptError, connectProducer, isConnectionLoss, kafkaLogCreator, requireTopics, type Logger } from '@ckpt/common';
import { encodeControlRecord, PART_BEGIN, PART_COMMIT, partOfBatch, type AppliedMarker, type EpochRecord } from '@ckpt/proto';
import { StandbyStore } from '@ckpt/standby';
import type { ReplicatorMetrics } from './metrics.ts';
import { Applier, type DeadLetterReason, type VmReplica } from './vm-replica.ts';

export interface ReplicatorOptions {
  kafka: Record<string, unknown>;
  idempotent: boolean;
  topics: { pages: string; control: string; deadLetter: string };
  /** The setting that names each topic, for the error when one is missing (REPLICATOR_PAGES_TOPIC, ...). */
  topicSettings?: { pages: string; control: string; deadLetter: string };
  groupId: string;
  redis: Redis;
  redisPrefix: string;
  maxRecordBytes: number;
  markerIntervalMs: number;
  resyncRetryMs: number;
  /** How often to look for reported VMs whose standby was deleted (`npm run standby -- forget`); default 30 s. */
  deletedCheckMs?: number;
  /** How often to scrub the standby images of owned VMs for lost pages (Applier.scrub); 0 = never (default). */
  scrubIntervalMs?: number;
  /** The scrub's pace in pages checked per second (default 20 000: about 5% of a Redis core). */
  scrubPagesPerS?: number;
  partitionsConsumedConcurrently: number;
  /** Staging writes in flight per partition (1: each record waits for the previous one's write). */
  stageWindow: number;
  /** A replicator that stops heartbeating (killed) loses its partitions after this long. */
  sessionTimeoutMs: number;
  /** Longest a fetch waits for new records (the lag floor against brokers that do not answer early). */
  fetchMaxWaitMs: number;
  /** The group leader waits this long before it hands out partitions (see delayedAssigner). */
  assignDelayMs: number;
  metrics: ReplicatorMetrics;
  log: Logger;
  /** The consumer keeps crashing (or cannot start again): the process should exit so it is restarted. */
  onFatal?: (err: Error) => void;
}

/**
 * kafkajs's round-robin assignment, handed out after `delayMs`. librdkafka's mock broker answers a
 * member whose SyncGroup arrives after the leader's with INVALID_REQUEST, which kafkajs treats as final;
 * followers send theirs at once, so a leader that waits lets them all be answered together. A real
 * broker answers in any order: the delay is 0 unless configured (the embedded broker's runs set it).
 */
function delayedAssigner(delayMs: number): PartitionAssigner {
  if (delayMs <= 0) return PartitionAssigners.roundRobin;
  return (config) => {
    const inner = PartitionAssigners.roundRobin(config);
    return { ...inner, assign: async (group) => { await sleep(delayMs); return inner.assign(group); } };
  };
}

const keyOf = (m: KafkaMessage): string | null => (m.key ? m.key.toString() : null);

const defaultPartitioner = Partitioners.DefaultPartitioner();

/** The partition kafkajs's default partitioner (the harvester's producer uses it) gives a VM's records. */
export function partitionOfVm(vm: string, partitions: number, topic: string): number {
  const partitionMetadata = Array.from({ length: partitions }, (_, i) => ({ partitionId: i, leader: 0, partitionErrorCode: 0, replicas: [0], isr: [0] }));
  return defaultPartitioner({ topic, partitionMetadata, message: { key: vm, value: null } });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Errors from a server that went away or is busy: the same record is retried until it works. */
export function isTransient(err: unknown): boolean {
  if (err instanceof CkptError) return err.retriable;
  if (!(err instanceof Error)) return false;
  const e = err as Error & { code?: string; retriable?: boolean };
  if (e.retriable === true) return true;
  if (/^KafkaJS|ReplyError|MaxRetriesPerRequestError|AbortError/.test(e.name)) return true;
  return isConnectionLoss(e) || /BUSY|READONLY|ended/i.test(e.message);
}

/** Not a failure: a restorer holds the VM's fence, and the record is handled again once it is gone. */
const FENCED = new Error('fenced by a restorer');

/** A record that fails this often with a non-transient error is set aside instead of blocking its partition. */
const POISON_ATTEMPTS = 3;

/** The consumer is started again in-process after a crash, unless this many came within a minute. */
const CRASHES_BEFORE_EXIT = 5;

export class Replicator {
  readonly store: StandbyStore;
  readonly applier: Applier;
  private readonly kafka: Kafka;
  private readonly consumer: Consumer;
  private readonly producer: Producer;
  private readonly markers = new Map<string, AppliedMarker>();
  private markerTimer: NodeJS.Timeout | null = null;
  private deletedTimer: NodeJS.Timeout | null = null;
  private checkingDeleted = false;
  private scrubTimer: NodeJS.Timeout | null = null;
  private scrubbing = false;
  /**
   * The record being handled, by its key (a VM's records all go to one partition, which one batch at a
   * time consumes), for dead letters to carry. One field shared by all partitions was overwritten by
   * the partitions consumed concurrently: dead letters carried another VM's record or none. Keyless
   * records share the entry '', but each of their dead letters is sent with no await between
   * handling() and the lookup (from parse(), or from poison() right after handling() again): two
   * cannot interleave. (Binding the record to its call with AsyncLocalStorage instead was tried and
   * not kept: on Node 20 it adds promise hooks to every promise of the replicator, the throughput path.)
   */
  private readonly current = new Map<string, { topic: string; partition: number; offset: string; raw: Buffer }>();
  private running = false;
  /** Where each VM's records come from, and the partitions with a lag series, to drop them when they move. */
  private readonly vmPartitions = new Map<string, number>();
  private readonly lagPartitions = new Set<number>();
  /** The last record's failure, cleared when a record is handled. */
  private lastError: string | null = null;
  /** The consumer's last crash, cleared once the group coordinator answers again (it stayed set until a record came). */
  private consumerError: string | null = null;
  private crashTimes: number[] = [];
  private rejoinTimer: NodeJS.Timeout | null = null;
  /** When the group coordinator last answered (a heartbeat, a join): 0 until the first join. */
  private lastHeartbeatMs = 0;
  /** Group joins so far: a newer one supersedes what an older one was still doing. */
  private joins = 0;
  /** The partitions of the pages topic this instance owns since its last join. */
  private assigned = new Set<number>();
  private watching: Promise<void> = Promise.resolve();

  constructor(private readonly o: ReplicatorOptions) {
    this.store = new StandbyStore(o.redis, o.redisPrefix);
    this.kafka = new Kafka({ ...(o.kafka as unknown as KafkaConfig), logLevel: logLevel.ERROR, logCreator: kafkaLogCreator(o.log), retry: { retries: 8, initialRetryTime: 100, maxRetryTime: 2000 } });
    this.consumer = this.kafka.consumer({
      groupId: o.groupId, maxBytesPerPartition: Math.max(4 << 20, 2 * o.maxRecordBytes), maxBytes: 32 << 20,
      // A fetch returns at once when data is there on real Kafka; the mock broker waits out maxWaitTime.
      maxWaitTimeInMs: o.fetchMaxWaitMs,
      partitionAssigners: [delayedAssigner(o.assignDelayMs)],
      sessionTimeout: o.sessionTimeoutMs, heartbeatInterval: Math.max(100, Math.floor(o.sessionTimeoutMs / 10)), rebalanceTimeout: Math.max(o.sessionTimeoutMs, 10_000),
      // kafkajs restarts a consumer after a retriable crash, even one during disconnect(): a replicator
      // that is stopping would join the group again and hold partitions it can no longer serve (its
      // Redis connection is closed next) until the process exits.
      retry: { retries: 10, initialRetryTime: 200, maxRetryTime: 3000, restartOnFailure: () => Promise.resolve(this.running) },
    });
    this.producer = this.kafka.producer({ idempotent: o.idempotent, allowAutoTopicCreation: false, retry: { retries: 10, initialRetryTime: 100, maxRetryTime: 3000 } });
    this.applier = new Applier(this.store, {
      deadLetter: (vm, reason, detail) => this.deadLetter(vm, reason, detail),
      requestResync: (vm, reason, generation, epoch) => this.requestResync(vm, reason, generation, epoch),
      processed: (vm, rec, r) => this.noteProcessed(vm, rec, r),
    }, o.metrics, o.log, { maxRecordBytes: o.maxRecordBytes, resyncRetryMs: o.resyncRetryMs });
  }

  async start(): Promise<void> {
    await connectProducer(this.kafka, this.producer, this.o.idempotent, 'REPLICATOR_KAFKA_IDEMPOTENT=false (--no-kafka-idempotent)');
    // A missing topic is one clear error here; a consumer subscribed to it would never join.
    const setting = this.o.topicSettings ?? { pages: 'the pages topic', control: 'the control topic', deadLetter: 'the dead-letter topic' };
    await requireTopics(this.kafka, (['pages', 'control', 'deadLetter'] as const).map((k) => ({ topic: this.o.topics[k], setting: setting[k] })));
    await this.consumer.connect();
    this.consumer.on(this.consumer.events.HEARTBEAT, () => {
      this.lastHeartbeatMs = Date.now();
      this.consumerError = null;
    });
    this.consumer.on(this.consumer.events.GROUP_JOIN, (e) => {
      this.lastHeartbeatMs = Date.now();
      this.consumerError = null;
      // Partitions may have moved: what other instances did is in Redis, not in our cache.
      this.applier.forget();
      // Per-VM and per-partition series of partitions now owned by another instance would freeze (and
      // the standby age keep growing) here while the new owner reports the truth: drop them.
      const assigned = new Set(e.payload.memberAssignment[this.o.topics.pages] ?? []);
      for (const [vm, partition] of this.vmPartitions) {
        if (assigned.has(partition)) continue;
        this.vmPartitions.delete(vm);
        this.o.metrics.forgetVm(vm);
      }
      for (const partition of this.lagPartitions) {
        if (assigned.has(partition)) continue;
        this.lagPartitions.delete(partition);
        this.o.metrics.consumerLagRecords.remove({ partition });
      }
      this.o.log.info('joined the consumer group', { memberId: e.payload.memberId, assignment: e.payload.memberAssignment });
      this.assigned = assigned;
      this.watching = this.watchQuietVms(assigned, ++this.joins);
    });
    this.consumer.on(this.consumer.events.CRASH, (e) => {
      const { error, restart } = e.payload as { error: Error; restart: boolean };
      this.consumerError = error.message;
      if (restart) {
        this.o.metrics.consumerRestarts.inc();
        this.o.log.warn('consumer crashed; kafkajs starts it again', { err: error });
      } else this.rejoin(error);
    });
    await this.consumer.subscribe({ topic: this.o.topics.pages, fromBeginning: true });
    this.running = true;
    this.markerTimer = setInterval(() => void this.flushMarkers(), this.o.markerIntervalMs);
    this.deletedTimer = setInterval(() => void this.dropDeletedVms(), this.o.deletedCheckMs ?? 30_000);
    if (this.o.scrubIntervalMs) this.scrubTimer = setInterval(() => void this.scrubVms(), this.o.scrubIntervalMs);
    await this.runConsumer();
  }

  /**
   * After joining, reports the standby of every VM whose records go to a partition this instance now
   * owns, also VMs that publish nothing any more: a harvester that died with its host leaves exactly
   * the standby a failover needs, and its age must keep growing on some instance, not vanish with a
   * rebalance or a replicator restart. A retired VM is reported until its keys are deleted.
   */
  private async watchQuietVms(assigned: Set<number>, join: number): Promise<void> {
    if (assigned.size === 0) return;
    const admin = this.kafka.admin();
    try {
      await admin.connect();
      const md = await admin.fetchTopicMetadata({ topics: [this.o.topics.pages] });
      const partitions = md.topics[0]?.partitions.length ?? 0;
      for (const vm of partitions ? await this.store.listVms() : []) {
        if (join !== this.joins || !this.running) return;
        const p = partitionOfVm(vm, partitions, this.o.topics.pages);
        if (!assigned.has(p) || this.vmPartitions.has(vm)) continue;
        await this.applier.watch(vm);
        if (join === this.joins) {
          if (!this.vmPartitions.has(vm)) this.vmPartitions.set(vm, p);
        } else if (!this.vmPartitions.has(vm) && !this.assigned.has(p)) {
          // A newer join moved the partition away while this VM loaded: its series are not ours to report.
          this.o.metrics.forgetVm(vm);
          this.applier.forget(vm);
        }
      }
    } catch (err) {
      this.o.log.warn('cannot list the standby images of this instance\'s partitions: VMs show in the metrics once their records arrive', { err });
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
  }

  private runConsumer(): Promise<void> {
    return this.consumer.run({
      autoCommit: true,
      autoCommitInterval: 200,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: this.o.partitionsConsumedConcurrently,
      eachBatch: (payload) => this.consumeBatch(payload),
    });
  }

  /**
   * kafkajs gives up on a consumer after an error it deems final (for example a SyncGroup answered
   * INVALID_REQUEST, which the embedded broker sends to a member that syncs after the leader). Exiting
   * would make the group rebalance twice more (the member leaves, a new process joins) and could set
   * off the same error in the others: start the consumer again in this process instead, after a short
   * random pause. Only crashes that keep coming (CRASHES_BEFORE_EXIT within a minute) end the process.
   */
  private rejoin(error: Error): void {
    if (!this.running) return;
    const now = Date.now();
    this.crashTimes = this.crashTimes.filter((t) => now - t < 60_000);
    this.crashTimes.push(now);
    if (this.crashTimes.length > CRASHES_BEFORE_EXIT) {
      this.o.log.error(`consumer crashed ${this.crashTimes.length} times in a minute; giving up`, { err: error });
      this.o.onFatal?.(error);
      return;
    }
    this.o.metrics.consumerRestarts.inc();
    const delayMs = 200 + Math.floor(Math.random() * 800);
    this.o.log.warn('consumer crashed; joining the group again', { err: error, delayMs });
    this.rejoinTimer = setTimeout(() => {
      this.rejoinTimer = null;
      if (!this.running) return;
      this.consumer.connect().then(() => (this.running ? this.runConsumer() : undefined)).catch((err: unknown) => {
        this.o.log.error('cannot start the consumer again', { err });
        this.o.onFatal?.(err instanceof Error ? err : new Error(String(err)));
      });
    }, delayMs);
  }

  /**
   * Handles a fetched batch of one partition in offset order. Batch records are staged with up to
   * `stageWindow` staging writes in flight; any other record first waits for them. Offsets are resolved
   * in order, each once its record's effect is durable. When a write in flight fails, the rest are
   * waited for, the cached VM state is dropped (Redis is the truth), and handling resumes at the failed
   * record, one record at a time, retrying it until it works or is set aside.
   */
  private async consumeBatch(payload: EachBatchPayload): Promise<void> {
    const { batch } = payload;
    const msgs = batch.messages;
    const window: { index: number; settled: Promise<Error | null> }[] = [];
    const done = (index: number): void => {
      const m = msgs[index]!;
      payload.resolveOffset(m.offset);
      this.o.metrics.consumerLagRecords.set({ partition: batch.partition }, Math.max(0, Number(batch.highWatermark) - Number(m.offset) - 1));
      this.lagPartitions.add(batch.partition);
      const key = keyOf(m);
      if (key !== null && this.vmPartitions.get(key) !== batch.partition) this.vmPartitions.set(key, batch.partition);
    };
    /** Waits for the oldest write in flight (all of them with `all`); returns the first failure, after every write in flight has ended. */
    const settle = async (all: boolean): Promise<{ index: number; err: Error } | null> => {
      while (window.length) {
        const w = window.shift()!;
        const err = await w.settled;
        if (err) {
          for (const rest of window.splice(0)) await rest.settled;
          return { index: w.index, err };
        }
        done(w.index);
        if (!all) break;
      }
      return null;
    };
    let serial = -1; // the record to handle alone (after a failure), and how often it failed already
    let serialAttempts = 0;
    let i = 0;
    for (;;) {
      let failed: { index: number; err: Error } | null = null;
      if (i >= msgs.length || !payload.isRunning() || payload.isStale()) {
        failed = await settle(true);
        if (!failed) break;
      } else if (i === serial) {
        const ok = await this.handleAlone(payload, msgs[i]!, serialAttempts);
        if (!ok) return;
        done(i);
        serial = -1;
        i++;
      } else {
        const m = msgs[i]!;
        const raw = this.handling(payload, m);
        try {
          const rec = await this.applier.parse(raw, keyOf(m));
          // Anything but a batch acts on what the writes in flight staged: they must have worked.
          failed = rec && (rec.kind !== 'batch' || window.length >= this.o.stageWindow) ? await settle(rec.kind !== 'batch') : null;
          if (!failed) {
            const r = rec ? await this.applier.apply(rec) : 'done';
            if (r === 'retry') {
              failed = (await settle(true)) ?? { index: i, err: FENCED };
            } else {
              window.push({ index: i, settled: r === 'done' ? Promise.resolve(null) : r.settled });
              if (window.length === 1 && r === 'done') await settle(false);
              this.lastError = null;
              i++;
            }
          }
        } catch (err) {
          failed = (await settle(true)) ?? { index: i, err: err instanceof Error ? err : new Error(String(err)) };
        }
        this.current.delete(keyOf(m) ?? '');
      }
      if (failed) {
        // Handle again from the first record whose effect is not durable, alone (after a failure, on
        // state reloaded from Redis; a fence only has to be waited out).
        if (failed.err !== FENCED) {
          this.applier.forget();
          this.lastError = failed.err.message;
          this.o.log.warn('a record failed; handling it again', { topic: batch.topic, partition: batch.partition, offset: msgs[failed.index]!.offset, err: failed.err });
          serialAttempts = 1;
        } else serialAttempts = 0;
        i = failed.index;
        serial = i;
        if (!payload.isRunning()) return;
        continue;
      }
      // Markers open the harvester's replication window: send them soon, not only on the timer.
      if (Date.now() - this.lastFlushMs >= 5) void this.flushMarkers();
      await payload.commitOffsetsIfNecessary();
      await payload.heartbeat();
    }
    await this.flushMarkers();
  }

  /**
   * Handles one record on its own until its effect is durable: a server that went away is waited
   * for; a record that keeps failing otherwise is set aside. False when the consumer stopped meanwhile.
   */
  private async handleAlone(payload: EachBatchPayload, m: KafkaMessage, firstAttempt: number): Promise<boolean> {
    const { batch } = payload;
    const key = keyOf(m);
    for (let attempt = firstAttempt; ; attempt++) {
      const raw = this.handling(payload, m);
      try {
        const r = await this.applier.handle(raw, key);
        if (r === 'done') {
          this.lastError = null;
          break;
        }
        await sleep(50); // fenced by a restorer: wait for it
      } catch (err) {
        this.lastError = (err as Error).message;
        this.applier.forget();
        if (!isTransient(err) && attempt + 1 >= POISON_ATTEMPTS) {
          // Not a server going away: this record cannot be handled. Set it aside; the VM's image stays
          // the last committed epoch and is marked stale until a baseline arrives.
          this.o.log.error('record cannot be handled; parking it', { topic: batch.topic, partition: batch.partition, offset: m.offset, vm: key, err });
          try {
            // Noted again: another partition's keyless record may have taken the '' entry meanwhile,
            // and poison() sends its dead letter before its first await.
            this.handling(payload, m);
            await this.applier.poison(key, (err as Error).message);
            break;
          } catch (e2) {
            this.lastError = (e2 as Error).message;
          }
        }
        if (attempt % 20 === 0) this.o.log.warn('cannot handle a record yet; retrying', { topic: batch.topic, partition: batch.partition, offset: m.offset, vm: key, err });
        await sleep(Math.min(2000, 100 * (attempt + 1)));
      }
      if (!payload.isRunning()) return false;
      await payload.heartbeat();
    }
    this.current.delete(key ?? '');
    return true;
  }

  /** Notes the record being handled (dead letters carry it); returns its value. */
  private handling(payload: EachBatchPayload, m: KafkaMessage): Buffer {
    const raw = m.value ?? Buffer.alloc(0);
    this.current.set(keyOf(m) ?? '', { topic: payload.batch.topic, partition: payload.batch.partition, offset: m.offset, raw });
    return raw;
  }

  /**
   * Stops reporting VMs whose standby was deleted (`npm run standby -- forget` of a retired VM) since
   * this instance last applied or read it: their standby age would otherwise grow until a restart or a
   * rebalance and keep the RPO alert firing for a VM that no longer exists. A VM whose harvester still
   * publishes gets a new image (and its series) from its next baseline. So are VMs that never had an
   * image (records under ids no harvester keeps publishing: each left series and a cached state for
   * good), unless one of their epochs is being assembled here. An image that vanished without forget's
   * tombstone was lost by Redis: that VM stays reported (Applier.imageLost()). Images still there are
   * checked for a rollback (Applier.checkRolledBack()).
   */
  private async dropDeletedVms(): Promise<void> {
    if (this.checkingDeleted || !this.running) return;
    this.checkingDeleted = true;
    try {
      const vms = this.o.metrics.reportedVms();
      const present = await this.store.imagesExist(vms);
      // Tombstones matter only where the image is gone (usually nowhere: no round trip then).
      const absent = vms.filter((_, i) => !present[i]);
      const tombstones = await this.store.wereForgotten(absent);
      const forgotten = new Set(absent.filter((_, i) => tombstones[i]));
      for (const [i, vm] of vms.entries()) {
        if (!this.running) return;
        if (present[i]) {
          await this.applier.checkRolledBack(vm);
          continue;
        }
        if (this.applier.assembling(vm) || (!forgotten.has(vm) && await this.applier.imageLost(vm))) continue;
        this.o.log.info(`this VM has no standby image (${forgotten.has(vm) ? 'standby forget deleted it' : 'never made here'}): no longer reporting it`, { vm });
        this.o.metrics.forgetVm(vm);
        this.applier.dropVm(vm);
        this.vmPartitions.delete(vm);
      }
    } catch (err) {
      this.o.log.warn('cannot check whether reported VMs still have a standby image', { err });
    } finally {
      this.checkingDeleted = false;
    }
  }

  /**
   * Scrubs the standby image of every VM this instance reports (also those whose harvester is gone:
   * their image is the one a failover needs) for pages Redis lost, one VM after the other.
   */
  private async scrubVms(): Promise<void> {
    if (this.scrubbing || !this.running) return;
    this.scrubbing = true;
    // Paced, so a fleet's images cost Redis a steady few percent, not a burst every interval (a fully
    // written 1 GiB image is 0.7 s of Redis CPU to check).
    const perS = this.o.scrubPagesPerS ?? 20_000;
    const pace = (checked: number): Promise<void> => {
      this.o.metrics.scrubPages.inc(checked);
      return this.running ? sleep((checked / perS) * 1000) : Promise.reject(new Error('stopping'));
    };
    try {
      for (const [vm, partition] of [...this.vmPartitions]) {
        if (!this.running) return;
        if (this.assigned.has(partition)) await this.applier.scrub(vm, pace);
      }
      this.o.metrics.scrubLastPass.set(Date.now() / 1000);
    } catch (err) {
      if (this.running) this.o.log.warn('cannot scrub the standby images for lost pages; trying again later', { err });
    } finally {
      this.scrubbing = false;
    }
  }

  /**
   * Null when serving, else why not. Kafka counts as reachable while the group coordinator answers
   * heartbeats (every member sends them, with partitions or without): a broker that went away showed
   * ready for about 20 s, until kafkajs gave up on the consumer.
   */
  ready(): string | null {
    if (!this.running) return 'not started';
    const err = this.lastError ?? this.consumerError;
    if (err) return `retrying: ${err}`;
    if (this.lastHeartbeatMs === 0) return 'joining the consumer group';
    const silentMs = Date.now() - this.lastHeartbeatMs;
    const limitMs = Math.max(15_000, 2 * this.o.sessionTimeoutMs);
    return silentMs > limitMs ? `kafka: no heartbeat answered by the group coordinator for ${Math.round(silentMs / 1000)} s` : null;
  }

  async stop(): Promise<void> {
    this.running = false;
    if (this.markerTimer) clearInterval(this.markerTimer);
    if (this.deletedTimer) clearInterval(this.deletedTimer);
    if (this.scrubTimer) clearInterval(this.scrubTimer);
    if (this.rejoinTimer) clearTimeout(this.rejoinTimer);
    this.joins++; // ends a watchQuietVms() still listing
    await this.watching;
    await this.consumer.disconnect().catch(() => undefined);
    await this.flushMarkers().catch(() => undefined);
    await this.producer.disconnect().catch(() => undefined);
  }

  private async deadLetter(vm: string | null, reason: DeadLetterReason, detail: string): Promise<void> {
    const c = this.current.get(vm ?? '');
    this.o.metrics.deadLetters.inc({ reason });
    this.o.log.warn('record parked on the dead-letter topic', { vm, reason, detail, topic: c?.topic, partition: c?.partition, offset: c?.offset });
    await this.producer.send({
      topic: this.o.topics.deadLetter, acks: -1,
      messages: [{
        key: vm ?? null, value: c?.raw ?? null,
        headers: { reason, detail: detail.slice(0, 1000), 'source-topic': c?.topic ?? '', 'source-partition': String(c?.partition ?? ''), 'source-offset': c?.offset ?? '', replicator: hostname() },
      }],
    });
  }

  private async requestResync(vm: string, reason: string, generation: number, epoch: number): Promise<void> {
    this.o.log.warn('requesting a baseline', { vm, reason });
    await this.producer.send({
      topic: this.o.topics.control, acks: -1,
      messages: [{ key: vm, value: Buffer.from(encodeControlRecord({ vm, kind: 'resync', resync: { reason: reason.slice(0, 500), generation, epoch: Math.max(0, epoch), requestedAtMs: Date.now() } })) }],
    });
  }

  private noteProcessed(vm: string, rec: EpochRecord, r: VmReplica): void {
    const part = rec.kind === 'begin' ? PART_BEGIN : rec.kind === 'commit' ? PART_COMMIT : partOfBatch(rec.batch.seq);
    this.markers.set(vm, {
      generation: rec.generation, epoch: rec.epoch, part,
      imageGeneration: r.meta?.generation ?? 0, imageEpoch: r.meta ? r.meta.epoch : -1, stale: r.stale, atMs: Date.now(),
    });
  }

  private flushing: Promise<void> | null = null;
  private lastFlushMs = 0;

  /** Publishes the newest marker of every VM that progressed (best effort: the next one supersedes it). */
  private flushMarkers(): Promise<void> {
    if (this.flushing || this.markers.size === 0) return this.flushing ?? Promise.resolve();
    const batch = [...this.markers.entries()];
    this.markers.clear();
    this.lastFlushMs = Date.now();
    this.flushing = this.producer.send({
      topic: this.o.topics.control, acks: -1,
      messages: batch.map(([vm, applied]) => ({ key: vm, value: Buffer.from(encodeControlRecord({ vm, kind: 'applied', applied })) })),
    }).then(() => undefined, (err: unknown) => {
      // Put them back unless newer ones arrived meanwhile.
      for (const [vm, m] of batch) if (!this.markers.has(vm)) this.markers.set(vm, m);
      this.o.log.debug('cannot publish applied markers yet', { err });
    }).finally(() => { this.flushing = null; });
    return this.flushing;
  }
}
