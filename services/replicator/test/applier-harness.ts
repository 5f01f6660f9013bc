/**
 * An Applier on a real Redis for tests: its hooks record dead letters and resync requests, `feed`
 * hands it records of one VM, `image` reads what Redis holds of that VM.
 */
import assert from 'node:assert/strict';
import type { Redis } from 'ioredis';
import { silentLogger } from '@ckpt/common';
import { StandbyStore } from '@ckpt/standby';
import { Applier, createReplicatorMetrics, type ApplierOptions, type DeadLetterReason } from '../src/index.ts';

export function applierHarness(redis: Redis, vm: string, options: Partial<ApplierOptions> = {}, prefix = `t${Math.random().toString(36).slice(2, 8)}`) {
  const store = new StandbyStore(redis, prefix);
  const dead: { vm: string | null; reason: DeadLetterReason; detail: string }[] = [];
  const resyncs: string[] = [];
  const metrics = createReplicatorMetrics();
  const applier = new Applier(store, {
    deadLetter: (v, reason, detail) => { dead.push({ vm: v, reason, detail }); return Promise.resolve(); },
    requestResync: (v, reason) => { resyncs.push(`${v}: ${reason}`); return Promise.resolve(); },
    processed: () => undefined,
  }, metrics, silentLogger, { maxRecordBytes: 1 << 20, resyncRetryMs: 60_000, ...options });
  const feed = async (recs: Buffer[]): Promise<void> => { for (const r of recs) assert.equal(await applier.handle(r, vm), 'done'); };
  const image = async (): Promise<{ epoch: number; digest: string; state: string; bytesDigest: string }> => {
    const m = await store.readMeta(vm);
    if (!m) return { epoch: -1, digest: '', state: 'none', bytesDigest: '' };
    return { epoch: m.epoch, digest: m.digest, state: m.state, bytesDigest: (await store.computeImageDigest(vm, m.generation, m.slots, m.pageSize)).toHex() };
  };
  return { store, applier, dead, resyncs, feed, image, metrics };
}
