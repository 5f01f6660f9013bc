import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { withZeroSeries } from '@ckpt/common';

/** The values of `kind` on ckpt_replicator_records_total. */
export const RECORD_KINDS = ['begin', 'batch', 'commit', 'bad'] as const;
/** The values of `kind` on ckpt_replicator_epochs_applied_total. */
export const APPLIED_KINDS = ['baseline', 'delta'] as const;
/** The values of `reason` on ckpt_replicator_gaps_total. */
export const GAP_REASONS = ['missing-epoch', 'missing-batch', 'new-generation', 'no-image', 'digest-mismatch', 'pages-lost', 'image-lost'] as const;
export type GapReason = typeof GAP_REASONS[number];
/** The values of `reason` on ckpt_replicator_dead_letters_total (docs/replication.md, "Bad input"). */
export const DEAD_LETTER_REASONS = [
  'malformed', 'schema-version', 'invalid', 'oversize', 'bad-vm-id', 'key-mismatch',
  'layout-mismatch', 'old-generation', 'duplicate', 'out-of-order', 'unknown-epoch',
] as const;
export type DeadLetterReason = typeof DEAD_LETTER_REASONS[number];

/**
 * Every metric the replicator exports (`ckpt_replicator_*`). The `vm` label appears only on the
 * per-VM gauges (lag, standby age, last epoch, stale); its cardinality is the number of VMs whose
 * records this instance has handled since it started (bounded by the VMs on its partitions).
 */
export interface ReplicatorMetrics {
  registry: Registry;
  records: Counter<'kind'>;
  epochsApplied: Counter<'kind'>;
  bytesApplied: Counter;
  applySeconds: Histogram;
  replicationLagSeconds: Histogram;
  lagEpochs: Gauge<'vm'>;
  lagSeconds: Gauge<'vm'>;
  staleVms: Gauge;
  vmStale: Gauge<'vm'>;
  gaps: Counter<'reason'>;
  digestMismatches: Counter;
  resyncRequests: Counter;
  consumerRestarts: Counter;
  deadLetters: Counter<'reason'>;
  fencedWaits: Counter;
  skippedWhileStale: Counter;
  consumerLagRecords: Gauge<'partition'>;
  /** 1 when Redis may evict page keys (maxmemory-policy allkeys-* with a memory limit). */
  redisEvictsPages: Gauge;
  /** 1 when Redis writes an append-only file. */
  redisAofEnabled: Gauge;
  /** Pages the scrub checked for a page key (Replicator.scrubVms). */
  scrubPages: Counter;
  /** When the scrub last went through every image this instance reports (0: never yet). */
  scrubLastPass: Gauge;
  lastAppliedEpoch: Gauge<'vm'>;
  standbyAgeSeconds: Gauge<'vm'>;
  /** Records when the harvester committed the epoch a VM's standby image now holds (feeds the age gauge). */
  noteStandbyEpoch(vm: string, epoch: number, committedAtMs: number): void;
  /** Drops a VM's per-VM series: its partition moved to another instance, which reports it now. */
  forgetVm(vm: string): void;
  /** Notes that a VM has series here (any per-VM gauge), so a VM with no image is dropped too (forgetVm). */
  noteVm(vm: string): void;
  /** The VMs with per-VM series (an epoch of theirs was applied or read from Redis, or a record of theirs handled). */
  reportedVms(): string[];
}

export function createReplicatorMetrics(options: { defaultMetrics?: boolean } = {}): ReplicatorMetrics {
  const registry = new Registry();
  if (options.defaultMetrics) collectDefaultMetrics({ register: registry });
  const registers = [registry];
  const pausedAt = new Map<string, number>();
  /** Every VM with a per-VM series, with an image or not. */
  const vms = new Set<string>();
  // Computed at scrape time, so it keeps growing while nothing is applied: the live RPO.
  const standbyAgeSeconds = new Gauge({
    name: 'ckpt_replicator_standby_age_seconds',
    help: 'Time since the harvester paused the guest for the epoch the standby image holds, per VM: the guest time a failover now would lose',
    labelNames: ['vm'],
    registers,
    collect() {
      const now = Date.now();
      for (const [vm, at] of pausedAt) this.set({ vm }, Math.max(0, now - at) / 1000);
    },
  });
  return {
    registry,
    records: withZeroSeries(new Counter({ name: 'ckpt_replicator_records_total', help: 'Records consumed from the pages topic, by kind (begin, batch, commit, bad)', labelNames: ['kind'], registers }), 'kind', RECORD_KINDS),
    epochsApplied: withZeroSeries(new Counter({ name: 'ckpt_replicator_epochs_applied_total', help: 'Epochs applied to the standby image, by kind (baseline or delta)', labelNames: ['kind'], registers }), 'kind', APPLIED_KINDS),
    bytesApplied: new Counter({ name: 'ckpt_replicator_bytes_applied_total', help: 'Page bytes of applied epochs (zero pages excluded)', registers }),
    applySeconds: new Histogram({ name: 'ckpt_replicator_apply_seconds', help: 'Time to verify and apply one epoch at its commit record', buckets: [1e-3, 2e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1, 5], registers }),
    replicationLagSeconds: new Histogram({ name: 'ckpt_replicator_replication_lag_seconds', help: 'From the harvester committing an epoch to the replicator applying it', buckets: [5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5, 10], registers }),
    lagEpochs: new Gauge({ name: 'ckpt_replicator_lag_epochs', help: 'Epochs seen on the topic but not yet applied, per VM', labelNames: ['vm'], registers }),
    lagSeconds: new Gauge({ name: 'ckpt_replicator_lag_seconds', help: 'Harvester commit to apply of the last applied epoch, per VM', labelNames: ['vm'], registers }),
    staleVms: new Gauge({ name: 'ckpt_replicator_stale_vms', help: 'VMs whose standby image is stale (waiting for a baseline)', registers }),
    vmStale: new Gauge({ name: 'ckpt_replicator_vm_stale', help: '1 when this VM\'s standby image is stale', labelNames: ['vm'], registers }),
    gaps: withZeroSeries(new Counter({ name: 'ckpt_replicator_gaps_total', help: 'Continuity breaks detected, by reason (missing-epoch, missing-batch, new-generation, no-image, digest-mismatch, pages-lost, image-lost)', labelNames: ['reason'], registers }), 'reason', GAP_REASONS),
    digestMismatches: new Counter({ name: 'ckpt_replicator_digest_mismatches_total', help: 'Epochs refused because the standby digest would not equal the commit record\'s', registers }),
    consumerRestarts: new Counter({ name: 'ckpt_replicator_consumer_restarts_total', help: 'Kafka consumer crashes after which the replicator joined the group again in-process', registers }),
    resyncRequests: new Counter({ name: 'ckpt_replicator_resync_requests_total', help: 'Baselines requested from harvesters on the control topic', registers }),
    deadLetters: withZeroSeries(new Counter({ name: 'ckpt_replicator_dead_letters_total', help: 'Records parked on the dead-letter topic, by reason', labelNames: ['reason'], registers }), 'reason', DEAD_LETTER_REASONS),
    fencedWaits: new Counter({ name: 'ckpt_replicator_fenced_waits_total', help: 'Applies deferred because a restorer holds the VM\'s fence', registers }),
    skippedWhileStale: new Counter({ name: 'ckpt_replicator_skipped_records_total', help: 'Records of epochs after a gap, skipped while their VM waits for a baseline', registers }),
    consumerLagRecords: new Gauge({ name: 'ckpt_replicator_consumer_lag_records', help: 'Records on the pages topic after the last one handled, per partition this instance consumes', labelNames: ['partition'], registers }),
    redisEvictsPages: new Gauge({ name: 'ckpt_replicator_redis_evicts_pages', help: '1 when Redis may evict standby pages (maxmemory-policy allkeys-* with a maxmemory): an evicted page fails only at restore. Checked at start and every minute', registers }),
    scrubPages: new Counter({ name: 'ckpt_replicator_scrub_pages_total', help: 'Pages of standby images the scrub checked for a lost page key', registers }),
    scrubLastPass: new Gauge({ name: 'ckpt_replicator_scrub_last_pass_timestamp_seconds', help: 'Unix time the scrub last finished a pass over every standby image this instance reports (0: none yet)', registers }),
    redisAofEnabled: new Gauge({ name: 'ckpt_replicator_redis_aof_enabled', help: '1 when Redis writes an append-only file, so applied epochs survive a Redis restart. Checked at start and every minute', registers }),
    lastAppliedEpoch: new Gauge({ name: 'ckpt_replicator_last_applied_epoch', help: 'Number of the epoch the standby image holds, per VM', labelNames: ['vm'], registers }),
    standbyAgeSeconds,
    noteStandbyEpoch(vm: string, epoch: number, pausedAtMs: number): void {
      vms.add(vm);
      pausedAt.set(vm, pausedAtMs);
      this.lastAppliedEpoch.set({ vm }, epoch);
    },
    noteVm(vm: string): void {
      vms.add(vm);
    },
    forgetVm(vm: string): void {
      vms.delete(vm);
      pausedAt.delete(vm);
      for (const g of [this.lastAppliedEpoch, this.standbyAgeSeconds, this.lagEpochs, this.lagSeconds, this.vmStale]) g.remove({ vm });
    },
    reportedVms(): string[] {
      return [...vms];
    },
  };
}
