/**
 * Listens on the control topic for the VMs of this harvester process: applied markers move each
 * publisher's replication window, resync requests are kept until the VM's harvest loop takes them (it
 * then starts a new generation). Each harvester process reads the whole control topic in its own
 * consumer group and ignores VMs it does not run.
 */
import { randomUUID } from 'node:crypto';
import type { Consumer, Kafka } from 'kafkajs';
import type { Logger } from '@ckpt/common';
import { decodeControlRecord, type AppliedMarker } from '@ckpt/proto';

export class ControlListener {
  private consumer: Consumer;
  private readonly vms = new Map<string, { onMarker: (m: AppliedMarker) => void; resync: string | null }>();

  constructor(kafka: Kafka, private readonly topic: string, private readonly log: Logger, private readonly startedAtMs = Date.now()) {
    this.consumer = kafka.consumer({ groupId: `ckpt-harvester-${randomUUID()}`, sessionTimeout: 30_000, heartbeatInterval: 3000, maxWaitTimeInMs: 2 });
  }

  /** Routes this VM's markers to `onMarker` and keeps its resync requests. */
  register(vm: string, onMarker: (m: AppliedMarker) => void): void {
    this.vms.set(vm, { onMarker, resync: null });
  }

  async start(): Promise<void> {
    await this.consumer.connect();
    // From the beginning: markers are small and a fresh group has no offsets; old records are filtered by time below.
    await this.consumer.subscribe({ topic: this.topic, fromBeginning: true });
    await this.consumer.run({
      eachMessage: ({ message }) => {
        const entry = message.key ? this.vms.get(message.key.toString()) : undefined;
        if (!entry || !message.value) return Promise.resolve();
        try {
          const rec = decodeControlRecord(message.value);
          if (rec.vm !== message.key!.toString()) return Promise.resolve();
          if (rec.kind === 'applied') entry.onMarker(rec.applied);
          else if (rec.resync.requestedAtMs >= this.startedAtMs) {
            this.log.warn('resync requested', { vm: rec.vm, reason: rec.resync.reason });
            entry.resync = rec.resync.reason;
          }
        } catch (err) {
          this.log.warn('ignoring a bad control record', { offset: message.offset, err });
        }
        return Promise.resolve();
      },
    });
  }

  /** The VM's pending resync request's reason, once. */
  takeResyncRequest(vm: string): string | null {
    const e = this.vms.get(vm);
    if (!e) return null;
    const r = e.resync;
    e.resync = null;
    return r;
  }

  async stop(): Promise<void> {
    await this.consumer.disconnect().catch(() => undefined);
  }
}
