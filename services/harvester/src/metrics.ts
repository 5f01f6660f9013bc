import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { withZeroSeries } from '@ckpt/common';

/** Every metric the harvester exports (`ckpt_harvester_*`). One registry per harvester instance. */
export interface HarvesterMetrics {
  registry: Registry;
  pagesHarvested: Counter;
  bytesHarvested: Counter;
  ringEntriesHarvested: Counter;
  invalidEntries: Counter;
  ringFullExits: Counter;
  ringReliefs: Counter;
  ringEntriesLost: Counter;
  resyncs: Counter;
  zeroPages: Counter;
  epochs: Counter<'kind'>;
  pauseSeconds: Histogram;
  drainSeconds: Histogram;
  epochBytes: Histogram;
  verifyMismatches: Counter;
  lastEpoch: Gauge;
  bytesPublished: Counter;
  produceSeconds: Histogram;
  produceErrors: Counter;
  inFlightBytes: Gauge;
  backpressureSeconds: Counter<'cause'>;
  intervalStretchSeconds: Counter;
  resyncRequests: Counter;
  windowStalls: Counter;
  ringProbeFailed: Gauge;
  duplicateWriters: Gauge;
}

/** The values of `kind` on ckpt_harvester_epochs_total. */
export const EPOCH_KINDS = ['baseline', 'delta'] as const;
/** The values of `cause` on ckpt_harvester_backpressure_seconds_total. */
export const BACKPRESSURE_CAUSES = ['in-flight', 'replication-window'] as const;

const LATENCY_BUCKETS = [50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1];
/** Produce latency reaches the publish timeout (30 s) when Kafka is in trouble: the buckets go that far. */
const PRODUCE_BUCKETS = [1e-3, 2e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5, 10, 30];
const BYTE_BUCKETS = [4096, 65536, 262144, 1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20, 1 << 30];

/**
 * `vm`, when given, labels every series of this registry (process metrics included): one harvester
 * process serves one guest, so the label's cardinality is the number of guests, one per process.
 *
 * Labelled counters start at 0 for each of their label values: prom-client exports a labelled series
 * only once it exists, and a harvester that never cuts an epoch (stuck on publish failures from its
 * start) must still show `ckpt_harvester_epochs_total` flat at 0, or CkptNoEpochs cannot fire for it.
 */
export function createHarvesterMetrics(options: { defaultMetrics?: boolean; vm?: string } = {}): HarvesterMetrics {
  const registry = new Registry();
  if (options.vm !== undefined) registry.setDefaultLabels({ vm: options.vm });
  if (options.defaultMetrics) collectDefaultMetrics({ register: registry });
  const registers = [registry];
  const epochs = withZeroSeries(new Counter({ name: 'ckpt_harvester_epochs_total', help: 'Epochs cut, by kind (baseline or delta)', labelNames: ['kind'], registers }), 'kind', EPOCH_KINDS);
  const backpressureSeconds = withZeroSeries(new Counter({ name: 'ckpt_harvester_backpressure_seconds_total', help: 'Time the harvester waited before producing, by cause (in-flight cap, replication window)', labelNames: ['cause'], registers }), 'cause', BACKPRESSURE_CAUSES);
  return {
    registry,
    pagesHarvested: new Counter({ name: 'ckpt_harvester_pages_harvested_total', help: 'Guest pages copied into epochs (zero pages included)', registers }),
    bytesHarvested: new Counter({ name: 'ckpt_harvester_harvested_bytes_total', help: 'Page data bytes copied into epochs (zero pages excluded)', registers }),
    ringEntriesHarvested: new Counter({ name: 'ckpt_harvester_ring_entries_harvested_total', help: 'Valid dirty-ring entries (or bitmap bits) harvested', registers }),
    invalidEntries: new Counter({ name: 'ckpt_harvester_invalid_entries_total', help: 'Dirty-ring entries dropped because their slot, offset or flags were invalid', registers }),
    ringFullExits: new Counter({ name: 'ckpt_harvester_ring_full_exits_total', help: 'vCPU exits because a dirty ring reached its soft limit (KVM_EXIT_DIRTY_RING_FULL)', registers }),
    ringReliefs: new Counter({ name: 'ckpt_harvester_ring_reliefs_total', help: 'Live drains that freed full rings, between epochs and while an epoch waited on its sinks', registers }),
    ringEntriesLost: new Counter({ name: 'ckpt_harvester_ring_entries_lost_total', help: 'Dirty-ring entries the kernel overwrote before they were harvested (ring overrun)', registers }),
    resyncs: new Counter({ name: 'ckpt_harvester_resyncs_total', help: 'New generations (each with a baseline) started after the first: continuity lost, a record not published within the publish timeout, or a replicator\'s resync request', registers }),
    zeroPages: new Counter({ name: 'ckpt_harvester_zero_pages_total', help: 'Harvested pages that were all zero and shipped as marks', registers }),
    epochs,
    pauseSeconds: new Histogram({ name: 'ckpt_harvester_pause_seconds', help: 'Guest pause per checkpoint: pause, drain, reset, copy, vCPU state', buckets: LATENCY_BUCKETS, registers }),
    drainSeconds: new Histogram({ name: 'ckpt_harvester_drain_seconds', help: 'Time to stop the vCPUs, drain every dirty ring and reset it, within the pause', buckets: LATENCY_BUCKETS, registers }),
    epochBytes: new Histogram({ name: 'ckpt_harvester_epoch_bytes', help: 'Page data bytes per epoch (zero pages excluded)', buckets: BYTE_BUCKETS, registers }),
    verifyMismatches: new Counter({ name: 'ckpt_harvester_verify_mismatches_total', help: 'Pages found wrong by --verify (content, missed writes, digest)', registers }),
    bytesPublished: new Counter({ name: 'ckpt_harvester_published_bytes_total', help: 'Bytes of epoch records acknowledged by Kafka (record values, after compression)', registers }),
    produceSeconds: new Histogram({ name: 'ckpt_harvester_produce_seconds', help: 'Kafka produce latency per record (send to acks=all acknowledgement)', buckets: PRODUCE_BUCKETS, registers }),
    produceErrors: new Counter({ name: 'ckpt_harvester_produce_errors_total', help: 'Failed produce attempts (each is retried until the publish timeout)', registers }),
    inFlightBytes: new Gauge({ name: 'ckpt_harvester_in_flight_bytes', help: 'Bytes queued for Kafka or sent and not yet acknowledged', registers }),
    backpressureSeconds,
    intervalStretchSeconds: new Counter({ name: 'ckpt_harvester_interval_stretch_seconds_total', help: 'Time by which epoch intervals exceeded the configured interval (backpressure or slow epochs)', registers }),
    windowStalls: new Counter({ name: 'ckpt_harvester_window_stalls_total', help: 'Times the replication window was cleared because the replicator reported no progress: after the stall timeout once the broker no longer held the records waited for (or cannot be asked), else after the longest wait', registers }),
    resyncRequests: new Counter({ name: 'ckpt_harvester_resync_requests_total', help: 'Resync requests received from replicators (each starts a new generation with a baseline)', registers }),
    lastEpoch: new Gauge({ name: 'ckpt_harvester_last_epoch', help: 'Number of the last epoch cut', registers }),
    duplicateWriters: new Gauge({ name: 'ckpt_harvester_duplicate_writers', help: 'Other harvesters heard publishing as this VM (same VM id): they interleave records and keep the standby stale; the later one stops by itself', registers }),
    ringProbeFailed: new Gauge({ name: 'ckpt_harvester_ring_probe_failed', help: '1 when the kernel refused or did not log the dirty-ring probe: a ring overrun harvested at a pause then shows one epoch late, after that epoch was committed', registers }),
  };
}
