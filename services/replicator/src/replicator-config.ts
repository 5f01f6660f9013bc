import { KAFKA_SCHEMA, REDIS_SCHEMA, type ConfigOf, type Schema } from '@ckpt/common';

/** The replicator's settings: flags, or REPLICATOR_<KEY> environment variables (flags win). */
export const REPLICATOR_ENV_PREFIX = 'REPLICATOR_';

export const REPLICATOR_SCHEMA = {
  ...KAFKA_SCHEMA,
  ...REDIS_SCHEMA,
  groupId: { type: 'string', default: 'ckpt-replicator', help: 'Kafka consumer group shared by all replicator instances' },
  maxRecordBytes: { type: 'int', default: 1_000_000, min: 8192, max: 64 << 20, help: 'largest record accepted from the pages topic (bigger ones are dead-lettered)' },
  markerIntervalMs: { type: 'int', default: 50, min: 5, max: 60_000, help: 'how often applied markers are published on the control topic' },
  resyncRetryMs: { type: 'int', default: 2000, min: 100, max: 600_000, help: 'while a VM is stale, repeat its resync request this often' },
  stopTimeoutMs: { type: 'int', default: 20_000, min: 1000, max: 600_000, help: 'on SIGTERM, exit (code 1) after this long even if Redis or Kafka does not answer; records not acknowledged are delivered again' },
  sessionTimeoutMs: { type: 'int', default: 10_000, min: 1000, max: 300_000, help: 'consumer-group session timeout: how long a dead replicator keeps its partitions' },
  fetchMaxWaitMs: { type: 'int', default: 100, min: 1, max: 30_000, help: 'longest a Kafka fetch waits for new records' },
  assignDelayMs: { type: 'int', default: 0, min: 0, max: 10_000, help: 'the group leader waits this long before handing out partitions (librdkafka\'s mock broker needs it; 0 for real Kafka)' },
  stageWindow: { type: 'int', default: 8, min: 1, max: 256, help: 'staging writes to Redis in flight per partition (1: each record waits for the previous one)' },
  partitionsConcurrently: { type: 'int', default: 4, min: 1, max: 256, help: 'partitions processed in parallel' },
  deletedCheckMs: { type: 'int', default: 30_000, min: 100, max: 3_600_000, help: 'how often to look for reported VMs whose standby was deleted (npm run standby -- forget), to stop reporting them' },
  scrubIntervalMs: { type: 'int', default: 300_000, min: 0, max: 86_400_000, help: 'how often to start a scrub: a check that every page of each owned VM\'s standby image is still in Redis (a lost page marks the image stale and asks for a baseline); a pass still running is not started again; 0 = never' },
  scrubPagesPerS: { type: 'int', default: 20_000, min: 100, max: 100_000_000, help: 'the scrub\'s pace: pages checked per second (20 000: about 5% of a Redis core, a 1 GiB guest every 13 s)' },
  metricsPort: { type: 'int', default: 9465, min: -1, max: 65535, help: 'serve /metrics, /healthz and /readyz on this port (0 = any free port, -1 = off)' },
} as const satisfies Schema;

export type ReplicatorConfig = ConfigOf<typeof REPLICATOR_SCHEMA>;
