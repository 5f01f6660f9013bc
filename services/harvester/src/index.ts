/** The harvester's public surface, for the benchmarks and (later) the drill. */
// First: kafkajs, when something loads it after this package, finds the native CRC-32C and the chunked encoder (see kafka-crc32c.ts, kafka-encoder.ts).
export { kafkaCrc32c, type KafkaCrcStatus } from './publish/kafka-crc32c.ts';
export { kafkaEncoder, type KafkaEncoderStatus } from './publish/kafka-encoder.ts';
export { reportKafkajsSpeedups, type KafkajsSpeedups } from './publish/kafkajs-speedups.ts';
export { CheckpointCycle, type CycleOptions } from './epoch/checkpoint-cycle.ts';
export { Coalescer } from './epoch/coalesce.ts';
export type { EpochCommit, EpochHeader, EpochSink, PageSegment } from './epoch/epoch-types.ts';
export { nextGeneration, runHarvest, type HarvestRunOptions, type HarvestSummary } from './harvest-loop.ts';
export { createHarvesterMetrics, type HarvesterMetrics } from './metrics.ts';
export { stoppedGuest, type DirtySource, type SlotInfo, type SourceStats } from './sources/dirty-source.ts';
export { KvmSource } from './sources/kvm-source.ts';
export { openSource, slotSizes } from './sources/open-source.ts';
export { SimSource, type SimSourceOptions } from './sources/sim/sim-source.ts';
export { DEFAULT_MAX_REQUEST_BYTES, KafkaPublisher, type PublisherOptions } from './publish/kafka-publisher.ts';
export { ShadowVerifier } from './verify/shadow-verifier.ts';
export { ControlListener } from './publish/control-listener.ts';
export { LogStartOffsets } from './publish/log-start.ts';
export { ReplicationWindow } from './publish/replication-window.ts';
export { HARVEST_CLI_SCHEMA, HARVEST_SCHEMA, type HarvestCliConfig, type HarvestConfig } from './harvest-config.ts';
export { HARVESTER_ENV_PREFIX, HARVESTER_SERVICE_SCHEMA } from './service-config.ts';
