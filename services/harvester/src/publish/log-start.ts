/**
 * The broker's log start offset of a topic's partitions (the oldest offset it still holds), for the
 * publisher's stalled-window check: one admin client, connected on first use.
 */
import type { Admin, Kafka } from 'kafkajs';

export class LogStartOffsets {
  private admin: Admin | null = null;
  private connecting: Promise<void> | null = null;

  constructor(private readonly kafka: Kafka, private readonly topic: string) {}

  /** The partition's log start offset (throws when the broker cannot say). */
  readonly of = async (partition: number): Promise<bigint> => {
    if (!this.admin) {
      const admin = this.kafka.admin();
      this.connecting ??= admin.connect().then(() => { this.admin = admin; }, (err: unknown) => { this.connecting = null; throw err; });
      await this.connecting;
    }
    const offsets = await this.admin!.fetchTopicOffsets(this.topic);
    const p = offsets.find((o) => o.partition === partition);
    if (!p) throw new Error(`the broker reports no partition ${partition} of ${this.topic}`);
    return BigInt(p.low);
  };

  async close(): Promise<void> {
    await this.admin?.disconnect().catch(() => undefined);
    this.admin = null;
  }
}
