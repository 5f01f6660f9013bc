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
}

interface Sample {
  atMs: number;
  self: number;
  replicators: Map<number, number>;
  redis: number | null;
  broker: number | null;
}

function ownCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

export function sampleCpu(servers: Servers, pool: ReplicatorPool): Sample {
  const replicators = new Map<number, number>();
  for (const m of pool.members) {
    const ms = m.pid === undefined ? null : processCpuMs(m.pid);
    if (ms !== null) replicators.set(m.pid!, ms);
  }
  const of = (pid: number | undefined): number | null => (pid === undefined ? null : processCpuMs(pid));
  return { atMs: performance.now(), self: ownCpuMs(), replicators, redis: of(servers.redis?.pid), broker: of(servers.kafka?.pid) };
}

export function cpuBetween(a: Sample, b: Sample, bytes: number): PipelineCpu {
  let replicatorsMs = 0;
  for (const [pid, ms] of b.replicators) replicatorsMs += ms - (a.replicators.get(pid) ?? 0);
  const diff = (x: number | null, y: number | null): number | null => (x === null || y === null ? null : y - x);
  const redisMs = diff(a.redis, b.redis);
  const brokerMs = diff(a.broker, b.broker);
  const harvestersMs = b.self - a.self;
  const total = harvestersMs + replicatorsMs + (redisMs ?? 0) + (brokerMs ?? 0);
  const r = (x: number): number => Math.round(x);
  return {
    harvestersMs: r(harvestersMs), replicatorsMs: r(replicatorsMs), redisMs: redisMs === null ? null : r(redisMs), brokerMs: brokerMs === null ? null : r(brokerMs),
    msPerMB: bytes > 0 ? Number((total / (bytes / 1e6)).toFixed(1)) : 0,
    cores: Number((total / Math.max(1, b.atMs - a.atMs)).toFixed(2)),
  };
}
