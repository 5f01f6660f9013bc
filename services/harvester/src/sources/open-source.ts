import { ConfigError, KvmError } from '@ckpt/common';
import { kvmAvailability } from '@ckpt/kvm-native';
import type { HarvestConfig } from '../harvest-config.ts';
import type { DirtySource } from './dirty-source.ts';
import { GUEST_LAYOUT, MIN_SLOT0_BYTES, SLOT_ALIGN_BYTES } from './guest-layout.ts';
import { KvmSource } from './kvm-source.ts';
import { SimSource } from './sim/sim-source.ts';
import { WORKLOAD_ID } from '@ckpt/common';

export type GuestConfig = Pick<HarvestConfig, 'source' | 'devPath' | 'memMib' | 'slots' | 'vcpus' | 'workload' | 'rate' | 'seed' | 'hotPages' | 'hotPercent' | 'fill' | 'ringEntries'>;

export interface OpenedSource {
  source: DirtySource;
  /** Why `auto` chose the simulator, when it did. */
  fallbackReason?: string;
}

/** Splits the guest's memory into `slots` slots, each a whole number of 2 MiB pages, slot 0 the largest. */
export function slotSizes(memMib: number, slots: number): number[] {
  const units = Math.floor((memMib * 1024 * 1024) / SLOT_ALIGN_BYTES);
  if (units * SLOT_ALIGN_BYTES < MIN_SLOT0_BYTES) throw new ConfigError([`--mem-mib ${memMib} is too small: the guest needs at least ${MIN_SLOT0_BYTES >> 20} MiB`]);
  const minUnits0 = MIN_SLOT0_BYTES / SLOT_ALIGN_BYTES;
  if (slots > 1 && units - minUnits0 < slots - 1) throw new ConfigError([`--slots ${slots} does not fit in ${memMib} MiB (each slot is at least 2 MiB, slot 0 at least 8 MiB)`]);
  const base = Math.floor(units / slots);
  const sizes = Array.from({ length: slots }, () => base);
  sizes[0] = units - base * (slots - 1);
  if (sizes[0] < minUnits0) {
    const need = minUnits0 - sizes[0];
    sizes[0] = minUnits0;
    for (let i = 1; i < slots && sizes.reduce((a, b) => a + b, 0) > units; i++) sizes[i] = Math.max(1, sizes[i]! - need);
  }
  return sizes.map((u) => u * SLOT_ALIGN_BYTES);
}

/** Options for tests and benchmarks: a write budget, the guest's tick, a CPU clock for the simulator (SimSourceOptions.cpuClockMs). */
export interface OpenSourceExtra { maxWritesPerVcpu?: number; tickUs?: number; simCpuClockMs?: () => number }

/** Opens the configured dirty source; `auto` falls back to the simulator and says why. */
export function openSource(cfg: GuestConfig, extra: OpenSourceExtra = {}): OpenedSource {
  const slotBytes = slotSizes(cfg.memMib, cfg.slots);
  if (cfg.ringEntries !== 0 && cfg.ringEntries < 1024) throw new ConfigError([`--ring-entries ${cfg.ringEntries}: 0 (bitmap mode) or a power of two >= 1024`]);
  try {
    return open(cfg, slotBytes, extra);
  } catch (err) {
    // Options the guest cannot take (a ring size above the kernel's maximum, a hot set larger than the
    // workload region) are configuration errors, not failures.
    if (err instanceof RangeError || (err instanceof KvmError && err.code === 'CKPT_ERR_KVM_RING_SIZE')) throw new ConfigError([err.message], { cause: err });
    if (err instanceof KvmError && err.code === 'CKPT_ERR_KVM_NO_DIRTY_RING') {
      // Say it in the terms of the harvester's own options, not the helper's.
      throw new KvmError(err.code, `cannot use a dirty ring on ${cfg.devPath}: this kernel lacks KVM_CAP_DIRTY_LOG_RING (Linux 5.11 and later have it); harvest in bitmap mode with --ring-entries 0 (the service: HARVESTER_RING_ENTRIES=0)`, { cause: err, context: err.context });
    }
    throw err;
  }
}

function open(cfg: GuestConfig, slotBytes: number[], extra: OpenSourceExtra): OpenedSource {
  const common = {
    slotBytes,
    vcpus: cfg.vcpus,
    workload: cfg.workload,
    ratePagesPerSec: cfg.rate,
    seed: cfg.seed,
    hotPages: cfg.hotPages,
    hotPercent: cfg.hotPercent,
    fillPages: cfg.fill,
    maxWritesPerVcpu: extra.maxWritesPerVcpu ?? 0,
    tickUs: extra.tickUs ?? 1000,
  };
  let fallbackReason: string | undefined;
  let kind = cfg.source;
  if (kind === 'auto') {
    const a = kvmAvailability(cfg.devPath);
    if (a.usable) kind = 'kvm';
    else {
      kind = 'sim';
      fallbackReason = a.reason;
    }
  }
  if (kind === 'kvm') {
    if (cfg.memMib > GUEST_LAYOUT.maxGib * 1024) {
      throw new ConfigError([`--mem-mib ${cfg.memMib} is above the KVM test guest's ${GUEST_LAYOUT.maxGib} GiB (${GUEST_LAYOUT.maxGib * 1024} MiB), all slots together; the simulator (--source sim) takes more (the service: HARVESTER_MEM_MIB, HARVESTER_SOURCE)`]);
    }
    return {
      source: new KvmSource({ ...common, devPath: cfg.devPath, ringEntries: cfg.ringEntries, workload: WORKLOAD_ID[cfg.workload] }),
    };
  }
  if (cfg.ringEntries === 0) throw new ConfigError(['--ring-entries 0 (bitmap mode) needs --source kvm: the simulator models the dirty ring only']);
  const result: OpenedSource = { source: new SimSource({ ...common, ringEntries: cfg.ringEntries, ...(extra.simCpuClockMs ? { cpuClockMs: extra.simCpuClockMs } : {}) }) };
  if (fallbackReason !== undefined) result.fallbackReason = fallbackReason;
  return result;
}
