/**
 * The broker's log start offset of a topic's partitions (the oldest offset it still holds), for the
 * publisher's stalled-window check: one admin client, connected on first use, closed once.
 */
import type { Admin, Kafka } from 'kafkajs';

/** A probe that takes longer than this fails (the publisher then clears its window, as without one). */
const PROBE_TIMEOUT_MS = 5000;

export class LogStartOffsets {
  private connecting: Promise<Admin> | null = null;
  private closed = false;

  constructor(private readonly kafka: Kafka, private readonly topic: string) {}

  /** The partition's log start offset (throws when the broker cannot say in time). */
  readonly of = async (partition: number): Promise<bigint> => {
    if (this.closed) throw new Error('closed');
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`no answer in ${PROBE_TIMEOUT_MS} ms`)), PROBE_TIMEOUT_MS); });
    try {
      return await Promise.race([this.fetch(partition), timeout]);
    } finally {
      clearTimeout(timer);
    }
  };

  private async fetch(partition: number): Promise<bigint> {
    this.connecting ??= (async () => {
      const admin = this.kafka.admin();
      try {
        await admin.connect();
        return admin;
      } catch (err) {
        this.connecting = null;
        throw err;
      }
    })();
    const admin = await this.connecting;
    const offsets = await admin.fetchTopicOffsets(this.topic);
    const p = offsets.find((o) => o.partition === partition);
    if (!p) throw new Error(`the broker reports no partition ${partition} of ${this.topic}`);
    return BigInt(p.low);
  }

  async close(): Promise<void> {
    this.closed = true;
    const admin = await this.connecting?.catch(() => null);
    this.connecting = null;
    await admin?.disconnect().catch(() => undefined);
  }
}
