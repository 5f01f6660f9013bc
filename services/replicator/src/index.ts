export { partitionOfVm, Replicator, type ReplicatorOptions } from './replicator.ts';
export { Applier, checkBatchAgainstLayout, checkZeroMarks, MAX_BATCH_ZERO_MARKS, MAX_EPOCH_ZERO_MARKS, type ApplierOptions, type DeadLetterReason, type ReplicaHooks, type VmReplica } from './vm-replica.ts';
export { APPLIED_KINDS, DEAD_LETTER_REASONS, GAP_REASONS, RECORD_KINDS, createReplicatorMetrics, type GapReason, type ReplicatorMetrics } from './metrics.ts';
export { REPLICATOR_ENV_PREFIX, REPLICATOR_SCHEMA, type ReplicatorConfig } from './replicator-config.ts';
