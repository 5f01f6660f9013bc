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
  /** What the figures miss: processes that exited or were replaced during the phase. */
  incomplete: string[];
}

/** A server process's CPU, with its pid: a restart (a new pid) must not be subtracted from the old one. */
interface ProcCpu {
  pid: number;
  ms: number;
}

interface Sample {
  atMs: number;
  self: number;
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

export function sampleCpu(servers: Servers, pool: ReplicatorPool): Sample {
  const replicators = new Map<number, number>();
  for (const m of pool.members) {
    const c = procCpu(m.pid);
    if (c) replicators.set(c.pid, c.ms);
  }
  return { atMs: performance.now(), self: ownCpuMs(), replicators, redis: procCpu(servers.redis?.pid), broker: procCpu(servers.kafka?.pid) };
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
  const r = (x: number): number => Math.round(x);
  return {
    harvestersMs: r(harvestersMs), replicatorsMs: r(replicatorsMs), redisMs: redisMs === null ? null : r(redisMs), brokerMs: brokerMs === null ? null : r(brokerMs),
    msPerMB: bytes > 0 ? Number((total / (bytes / 1e6)).toFixed(1)) : 0,
    cores: Number((total / Math.max(1, b.atMs - a.atMs)).toFixed(2)),
    incomplete,
  };
}
