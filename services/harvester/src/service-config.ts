import { KAFKA_SCHEMA, VM_ID_RULE, type Schema } from '@ckpt/common';
import { HARVEST_SCHEMA } from './harvest-config.ts';

/**
 * The harvester service's configuration: HARVESTER_<KEY> environment variables (e.g. HARVESTER_VM_ID),
 * the `npm run harvest` schema plus Kafka settings. The Kubernetes manifests are checked against it.
 */
export const HARVESTER_ENV_PREFIX = 'HARVESTER_';

export const HARVESTER_SERVICE_SCHEMA = {
  ...HARVEST_SCHEMA,
  ...KAFKA_SCHEMA,
  kafkaBrokers: { ...KAFKA_SCHEMA.kafkaBrokers, help: 'Kafka bootstrap servers, host:port, comma separated (empty: checkpoint locally only, publish nothing; a warning says so)' },
  epochs: { ...HARVEST_SCHEMA.epochs, default: 0 },
  metricsPort: { ...HARVEST_SCHEMA.metricsPort, default: 9464 },
  // Required: a default id would let two harvesters that both forgot it write as one VM.
  vmId: { type: 'string', default: '', help: `this guest's id, required: the Kafka key and the Redis hash tag (${VM_ID_RULE})` },
  maxRecordBytes: { type: 'int', default: 1_000_000, min: 16384, max: 64 << 20, help: 'largest record produced (stay under the topic\'s max.message.bytes)' },
  maxRequestBytes: { type: 'int', default: 1_000_000, min: 16384, max: 64 << 20, help: 'record bytes of one VM in one produce request, which Kafka stores as one record batch (stay under the topic\'s max.message.bytes)' },
  compression: { type: 'enum', values: ['none', 'gzip'], default: 'none', help: 'compression of page batches (gzip only where it shrinks a batch)' },
  maxInFlightBytes: { type: 'int', default: 16 << 20, min: 1 << 20, help: 'bytes queued or unacknowledged by Kafka before the harvester waits' },
  windowBytes: { type: 'int', default: 0, min: 0, help: 'bytes produced but not yet applied by the replicator before the harvester waits (0 = off; keep it under the topic\'s retention)' },
  publishTimeoutMs: { type: 'int', default: 30_000, min: 1000, help: 'a record that cannot be published for this long ends the generation (a new baseline follows)' },
  writerHeartbeatMs: { type: 'int', default: 5000, min: 0, max: 600_000, help: 'how often this harvester tells the others on the control topic that it publishes as its VM; a second harvester with the same VM id stops within about two of these (0 = off)' },
} as const satisfies Schema;
