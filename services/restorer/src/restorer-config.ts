import { REDIS_SCHEMA, type Schema } from '@ckpt/common';

/** The restorer's settings: flags, or RESTORER_<KEY> environment variables (flags win). */
export const RESTORER_ENV_PREFIX = 'RESTORER_';

export const RESTORER_SCHEMA = {
  vm: { type: 'string', default: '', help: 'the VM to restore (required)' },
  ...REDIS_SCHEMA,
  out: { type: 'string', default: '', help: 'write <vm>.slot<id>.raw (sparse) and <vm>.vcpus.json into this directory' },
  resumeMs: { type: 'int', default: 0, min: 0, max: 3_600_000, help: 'instead of files: load the image into a fresh KVM VM, run it this long, and check its progress counters advance' },
  keepRunning: { type: 'bool', default: false, help: 'with --resume-ms: once the check passes, keep the restored guest running until SIGTERM/SIGINT (the failover Deployment)' },
  devPath: { type: 'string', default: '/dev/kvm', help: 'KVM device for --resume-ms' },
  allowStale: { type: 'bool', default: false, help: 'restore a stale image (its newest verified epoch) instead of refusing it' },
  fenceTtlMs: { type: 'int', default: 10_000, min: 500, max: 120_000, help: 'lifetime of the fence that holds the replicator back while reading (refreshed; a restorer that dies blocks the replicator at most this long)' },
  runClaimTtlMs: { type: 'int', default: 15_000, min: 1000, max: 300_000, help: 'with --keep-running: lifetime of the run claim that stops a second restorer from running the same guest (renewed every third of it; a restorer that finds the claim held waits this long, plus 2 s, for it to expire)' },
  fenceWaitMs: { type: 'int', default: 30_000, min: 0, max: 3_600_000, help: 'how long to wait for a fence another restore (or standby forget) holds' },
  redisTimeoutMs: { type: 'int', default: 15_000, min: 100, max: 600_000, help: 'a Redis command not answered in this time fails the restore (retriable) instead of hanging it' },
  json: { type: 'bool', default: false, help: 'print one JSON object as the last line' },
  metricsFile: { type: 'string', default: '', help: 'write the ckpt_restorer_* metrics here (Prometheus text format) when done, for node_exporter\'s textfile collector' },
  metricsPort: { type: 'int', default: -1, min: -1, max: 65535, help: 'serve /metrics, /healthz and /readyz on this port while running (-1 = off, 0 = any free port)' },
} as const satisfies Schema;
