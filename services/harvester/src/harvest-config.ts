import type { ConfigOf, Schema } from '@ckpt/common';
import { WORKLOADS } from '@ckpt/common';

/** Guest and harvest settings, shared by the `harvest` command (flags) and the service (HARVESTER_* env). */
export const HARVEST_SCHEMA = {
  source: { type: 'enum', values: ['auto', 'kvm', 'sim'], default: 'auto', help: 'where dirty pages come from: real KVM, the simulator, or KVM when /dev/kvm is usable' },
  devPath: { type: 'string', default: '/dev/kvm', help: 'KVM device' },
  memMib: { type: 'int', default: 256, min: 8, max: 64 * 1024 * 1024, help: 'guest memory in MiB (KVM: up to 128000; the simulator handles sizes far beyond RAM)' },
  slots: { type: 'int', default: 1, min: 1, max: 32, help: 'number of memslots the guest memory is split into' },
  vcpus: { type: 'int', default: 2, min: 1, max: 64, help: 'guest vCPUs' },
  workload: { type: 'enum', values: WORKLOADS, default: 'random', help: 'guest write pattern' },
  rate: { type: 'int', default: 20000, min: 0, max: 100_000_000, help: 'target dirty rate in pages/s per vCPU (0 = as fast as possible)' },
  seed: { type: 'int', default: 1, min: 0, max: 0xffffffff, help: 'workload random seed' },
  hotPages: { type: 'int', default: 256, min: 1, help: 'hotset workload: pages in the hot set' },
  hotPercent: { type: 'int', default: 90, min: 0, max: 100, help: 'hotset workload: percent of writes that go to the hot set' },
  fill: { type: 'bool', default: false, help: 'guest fills whole pages with incompressible data (default: a 16-byte stamp per write)' },
  ringEntries: { type: 'int', default: 65536, min: 0, max: 65536, powerOfTwo: true, help: 'dirty ring entries per vCPU, a power of two >= 1024 (1 MiB per vCPU at the default; hosts that log every store need the room); 0 = bitmap mode (KVM_GET_DIRTY_LOG)' },
  epochs: { type: 'int', default: 20, min: 0, help: 'epochs to cut after the baseline (0 = until stopped)' },
  intervalMs: { type: 'int', default: 50, min: 1, max: 3_600_000, help: 'time between epochs' },
  precopyRounds: { type: 'int', default: 0, min: 0, max: 16, help: 'live pre-copy rounds before each pause' },
  precopyAboveEntries: { type: 'int', default: 16384, min: 0, max: 2 ** 31, help: 'up to 3 more live rounds while more dirty GFNs than this wait for the pause (they stop when they do not converge); large values turn them off' },
  verify: { type: 'bool', default: false, help: 'keep a shadow image from harvested epochs and compare it with guest memory at every epoch' },
  metricsPort: { type: 'int', default: -1, min: -1, max: 65535, help: 'serve /metrics, /healthz and /readyz on this port (0 = any free port, -1 = off)' },
} as const satisfies Schema;

/** The `npm run harvest` command: the shared settings plus its output and test-only options. */
export const HARVEST_CLI_SCHEMA = {
  ...HARVEST_SCHEMA,
  json: { type: 'bool', default: false, help: 'print one JSON summary object as the last line' },
  injectHostile: { type: 'int', default: 0, min: 0, max: 1000, help: 'simulator only: hostile ring entries injected before each epoch (they must be dropped and counted)' },
  unsafeCopyBeforeResetMs: { type: 'int', default: 0, min: 0, max: 1000, help: 'TEST ONLY, deliberately wrong: live rounds copy before resetting and wait this long in between (the verifier must catch it); needs --precopy-rounds' },
} as const satisfies Schema;

export type HarvestConfig = ConfigOf<typeof HARVEST_SCHEMA>;
export type HarvestCliConfig = ConfigOf<typeof HARVEST_CLI_SCHEMA>;
