/**
 * Where a run's CPU goes: the CPU time of each process of the pipeline over the harvest phase, per MB
 * harvested. On a machine shared with other work, throughput drifts from run to run; CPU per MB holds
 * better, and says what a host needs for a given rate.
 */
import { processCpuMs } from '@ckpt/common';
import type { ReplicatorPool, Servers } from './servers.ts';

/** CPU milliseconds over the harvest phase, by process. */
export interface PipelineCpu {
  /** This process: the harvesters, their guests when simulated, and the run's own checks (the shadow images). */
  harvestersMs: number;
  /**
   * Of harvestersMs, what the simulated guests spent writing pages (CPU time of the thread they run on,
   * counted by the simulator). Null when it is not known: with real KVM guests (their vCPU threads'
   * CPU stays in harvestersMs) or without the native helper that reads the thread's clock.
   */
  simulatedGuestsMs: number | null;
  /** Of harvestersMs, what the run's shadow images (its own check of the standby) cost; null without the native helper. */
  shadowImagesMs: number | null;
  /**
   * msPerMB without the simulated guests and the shadow images: what the product itself needs per MB, as
   * an upper bound (it still holds the run's lag poller, an HMGET per VM every 5 ms, and collections that
   * the guests' and shadows' memory causes on V8's helper threads). Null when simulatedGuestsMs is.
   */
  productMsPerMB: number | null;
  /** The replicator processes (one that was replaced counts from its start; one killed meanwhile is missing). */
  replicatorsMs: number;
  /** The embedded redis-server with its AOF rewrites; null against REDIS_URL. */
  redisMs: number | null;
  /** The embedded broker; null against KAFKA_BROKERS. */
  brokerMs: number | null;
  /** Of every process measured, per MB harvested (the same bytes as throughputMBps). */
  msPerMB: number;
  /** Cores the measured processes kept busy on average. */
  cores: number;
  /** What the figures miss: processes that exited or were replaced during the phase. */
  incomplete: string[];
}

/** A server process's CPU, with its pid: a restart (a new pid) must not be subtracted from the old one. */
interface ProcCpu {
  pid: number;
  ms: number;
}

/** CPU this process spent on work of the run rather than of the product, by kind (thread CPU ms, running totals). */
export interface RunOwnCpu {
  simulatedGuestsMs: number | null;
  shadowImagesMs: number | null;
}

interface Sample {
  atMs: number;
  self: number;
  own: RunOwnCpu;
  replicators: Map<number, number>;
  redis: ProcCpu | null;
  broker: ProcCpu | null;
}

function ownCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

function procCpu(pid: number | undefined): ProcCpu | null {
  const ms = pid === undefined ? null : processCpuMs(pid);
  return ms === null ? null : { pid: pid!, ms };
}

export function sampleCpu(servers: Servers, pool: ReplicatorPool, own: RunOwnCpu): Sample {
  const replicators = new Map<number, number>();
  for (const m of pool.members) {
    const c = procCpu(m.pid);
    if (c) replicators.set(c.pid, c.ms);
  }
  return { atMs: performance.now(), self: ownCpuMs(), own, replicators, redis: procCpu(servers.redis?.pid), broker: procCpu(servers.kafka?.pid) };
}

export function cpuBetween(a: Sample, b: Sample, bytes: number): PipelineCpu {
  const incomplete: string[] = [];
  let replicatorsMs = 0;
  for (const [pid, ms] of b.replicators) replicatorsMs += ms - (a.replicators.get(pid) ?? 0);
  for (const pid of a.replicators.keys()) if (!b.replicators.has(pid)) incomplete.push(`replicator ${pid} exited during the run: its CPU is missing`);
  for (const pid of b.replicators.keys()) if (!a.replicators.has(pid)) incomplete.push(`replicator ${pid} started during the run: counted from its start`);
  // A server restarted meanwhile (a new pid) is counted from its start; what its predecessor used is missing.
  const diff = (name: string, x: ProcCpu | null, y: ProcCpu | null): number | null => {
    if (x === null || y === null) return null;
    if (x.pid === y.pid) return y.ms - x.ms;
    incomplete.push(`${name} restarted during the run: counted from its last start`);
    return y.ms;
  };
  const redisMs = diff('redis-server', a.redis, b.redis);
  const brokerMs = diff('the broker', a.broker, b.broker);
  const harvestersMs = b.self - a.self;
  const total = harvestersMs + replicatorsMs + (redisMs ?? 0) + (brokerMs ?? 0);
  const since = (x: number | null, y: number | null): number | null => (x === null || y === null ? null : y - x);
  const simulatedGuestsMs = since(a.own.simulatedGuestsMs, b.own.simulatedGuestsMs);
  const shadowImagesMs = since(a.own.shadowImagesMs, b.own.shadowImagesMs);
  const product = simulatedGuestsMs === null || shadowImagesMs === null ? null : total - simulatedGuestsMs - shadowImagesMs;
  const r = (x: number): number => Math.round(x);
  const rn = (x: number | null): number | null => (x === null ? null : r(x));
  const perMB = (x: number): number => (bytes > 0 ? Number((x / (bytes / 1e6)).toFixed(1)) : 0);
  return {
    harvestersMs: r(harvestersMs), simulatedGuestsMs: rn(simulatedGuestsMs), shadowImagesMs: rn(shadowImagesMs),
    productMsPerMB: product === null ? null : perMB(product),
    replicatorsMs: r(replicatorsMs), redisMs: rn(redisMs), brokerMs: rn(brokerMs),
    msPerMB: perMB(total),
    cores: Number((total / Math.max(1, b.atMs - a.atMs)).toFixed(2)),
    incomplete,
  };
}
