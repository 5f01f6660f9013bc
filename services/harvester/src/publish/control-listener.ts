/**
 * Listens on the control topic for the VMs of this harvester process: applied markers move each
 * publisher's replication window, resync requests are kept until the VM's harvest loop takes them (it
 * then starts a new generation). Each harvester process reads the control topic in its own consumer
 * group, from where the topic ended when it started, and ignores VMs it does not run.
 *
 * Not from the beginning: a new process starts a new generation, so older markers and requests are of
 * no use to it, and replaying them held its window shut after a restart for as long as the replay took
 * (10 s with 10 000 records on the test broker, 141 s with 65 000; the topic keeps an hour of markers
 * of every VM). The end is read before start() returns, so before this process produces anything: no
 * marker answering its own records can fall before it.
 */
import { randomUUID } from 'node:crypto';
import type { Admin, Consumer, Kafka } from 'kafkajs';
import { settleWithin, type Logger } from '@ckpt/common';
import { decodeControlRecord, type AppliedMarker, type WriterHeartbeat } from '@ckpt/proto';

export class ControlListener {
  private consumer: Consumer;
  private readonly vms = new Map<string, { onMarker: (m: AppliedMarker) => void; onWriter?: (w: WriterHeartbeat) => void; resync: string | null; floor: number }>();
  /** This process's own consumer group (deleted again at stop()). */
  readonly groupId = `ckpt-harvester-${randomUUID()}`;
  private stopping = false;
  /** Its group exists on the broker (start() got as far as running the consumer). */
  private joined = false;

  constructor(private readonly kafka: Kafka, private readonly topic: string, private readonly log: Logger) {
    // Short retries: while this consumer backs off, markers do not reach the window and the harvester
    // waits. kafkajs's default backoff (up to 30 s) kept windows shut 30-50 s after a broker came back.
    // A consumer that crashed (a broker outage) is restarted by kafkajs, unless this listener stops:
    // a restart scheduled before stop() outlived disconnect() and kept the process alive for good.
    this.consumer = kafka.consumer({ groupId: this.groupId, sessionTimeout: 30_000, heartbeatInterval: 3000, maxWaitTimeInMs: 2,
      retry: { retries: 1000, initialRetryTime: 100, maxRetryTime: 2000, restartOnFailure: () => Promise.resolve(!this.stopping) } });
  }

  /** Routes this VM's markers to `onMarker` and its writer heartbeats to `onWriter`, and keeps its resync requests. */
  register(vm: string, onMarker: (m: AppliedMarker) => void, onWriter?: (w: WriterHeartbeat) => void): void {
    this.vms.set(vm, { onMarker, onWriter, resync: null, floor: 0 });
  }

  async start(): Promise<void> {
    const ends = await this.topicEnds();
    await this.consumer.connect();
    // A fresh group has no offsets; the seeks below move each partition to where the topic ended. Should
    // one not take, the partition is read from the beginning (slow, but nothing is missed).
    await this.consumer.subscribe({ topic: this.topic, fromBeginning: true });
    await this.consumer.run({
      eachMessage: ({ message }) => {
        const entry = message.key ? this.vms.get(message.key.toString()) : undefined;
        if (!entry || !message.value) return Promise.resolve();
        try {
          const rec = decodeControlRecord(message.value);
          if (rec.vm !== message.key!.toString()) return Promise.resolve();
          if (rec.kind === 'applied') entry.onMarker(rec.applied);
          else if (rec.kind === 'writer') entry.onWriter?.(rec.writer);
          else {
            // Every request read was made after this process started (see the class comment), whatever
            // the clocks say.
            this.log.warn('resync requested', { vm: rec.vm, reason: rec.resync.reason, imageGeneration: rec.resync.generation });
            entry.resync = rec.resync.reason;
            entry.floor = Math.max(entry.floor, rec.resync.generation);
          }
        } catch (err) {
          this.log.warn('ignoring a bad control record', { offset: message.offset, err });
        }
        return Promise.resolve();
      },
    });
    this.joined = true;
    // kafkajs keeps the seeks and applies them when the partitions are assigned. A consumer that crashed
    // meanwhile (the broker went away while it joined) refuses them ("Consumer group was not
    // initialized"): then its partitions are read from the beginning, as the class comment says, and the
    // harvester goes on (it used to exit with that bare message).
    for (const { partition, offset } of ends) {
      try {
        this.consumer.seek({ topic: this.topic, partition, offset });
      } catch (err) {
        this.log.warn('cannot start the control topic where it ended; reading it from the beginning (slower, nothing missed)', { partition, err });
      }
    }
  }

  /** Each partition's end offset (the next record's offset) now. */
  private topicEnds(): Promise<{ partition: number; offset: string }[]> {
    return this.withAdmin(async (admin) => (await admin.fetchTopicOffsets(this.topic)).map((p) => ({ partition: p.partition, offset: p.offset })));
  }

  /** `f` with an admin client of its own, disconnected after. */
  private async withAdmin<T>(f: (admin: Admin) => Promise<T>): Promise<T> {
    const admin = this.kafka.admin();
    try {
      await admin.connect();
      return await f(admin);
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
  }

  /** The VM's pending resync request's reason, once. */
  takeResyncRequest(vm: string): string | null {
    const e = this.vms.get(vm);
    if (!e) return null;
    const r = e.resync;
    e.resync = null;
    return r;
  }

  /**
   * The newest image generation a resync request of the VM named: its next generation must be above
   * it, or the replicator parks it as old (a harvester whose clock went back starts below the image).
   */
  generationFloor(vm: string): number {
    return this.vms.get(vm)?.floor ?? 0;
  }

  /**
   * Disconnects and deletes this process's consumer group, waiting at most 3 s for each: with the broker
   * gone kafkajs's disconnect() waits out its retries. Each harvester process has a group of its own,
   * whose committed offsets a broker otherwise keeps for offsets.retention.minutes (7 days by default):
   * one group per harvester restart, piling up (found by a soak run). A process killed with -9 still
   * leaves its group to that expiry.
   */
  async stop(): Promise<void> {
    this.stopping = true;
    await settleWithin(this.consumer.disconnect(), 3000);
    if (!this.joined) return; // no group to delete (it failed to start: no line about a group it never had)
    const deleted = this.withAdmin((admin) => admin.deleteGroups([this.groupId])).catch((err: unknown) => {
      this.log.info('cannot delete this harvester\'s consumer group of the control topic; the broker expires it', { group: this.groupId, err });
    });
    await settleWithin(deleted, 3000);
  }
}
