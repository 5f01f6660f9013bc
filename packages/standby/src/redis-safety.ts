/**
 * Whether a Redis server can keep a standby image: it must not evict keys, and it should write an
 * append-only file. Read with INFO (managed Redis services often disable CONFIG).
 */
import type { Redis } from 'ioredis';

export interface RedisSafety {
  /** `maxmemory-policy`, e.g. noeviction, allkeys-lru, volatile-lru. */
  evictionPolicy: string;
  /** `maxmemory` in bytes; 0 = no limit. */
  maxmemoryBytes: number;
  /**
   * Redis may evict page keys now: a policy over all keys (allkeys-*) with a memory limit. An evicted
   * page makes an image that looks complete and fails only when restored.
   */
  evictsPages: boolean;
  /**
   * Keys with a time to live (the restorer's fence) may be evicted under memory pressure (volatile-*
   * with a limit), or page keys may be once a limit is set (allkeys-* without one yet).
   */
  evictionRisk: string | null;
  /** The append-only file is on (`appendonly yes`): an applied epoch survives a Redis restart. */
  aof: boolean;
}

function field(info: string, name: string): string | undefined {
  const m = new RegExp(`^${name}:(.*)$`, 'm').exec(info);
  return m?.[1]?.trim();
}

/** Reads the server's eviction policy, memory limit and AOF state (two INFO calls). */
export async function redisSafety(redis: Pick<Redis, 'info'>): Promise<RedisSafety> {
  const memory = await redis.info('memory');
  const persistence = await redis.info('persistence');
  return safetyFromInfo(memory, persistence);
}

/** The same from the text of INFO memory and INFO persistence. */
export function safetyFromInfo(memory: string, persistence: string): RedisSafety {
  const evictionPolicy = field(memory, 'maxmemory_policy') ?? 'unknown';
  const maxmemoryBytes = Number(field(memory, 'maxmemory') ?? 0) || 0;
  const allKeys = evictionPolicy.startsWith('allkeys-');
  const evictsPages = allKeys && maxmemoryBytes > 0;
  let evictionRisk: string | null = null;
  if (allKeys && maxmemoryBytes === 0) {
    evictionRisk = `maxmemory-policy is ${evictionPolicy}: no memory limit is set now, but once one is, Redis evicts standby pages`;
  } else if (evictionPolicy.startsWith('volatile-') && maxmemoryBytes > 0) {
    evictionRisk = `maxmemory-policy is ${evictionPolicy}: under memory pressure Redis evicts keys with a time to live, such as a restorer's fence`;
  }
  return { evictionPolicy, maxmemoryBytes, evictsPages, evictionRisk, aof: field(persistence, 'aof_enabled') === '1' };
}

/** What to tell an operator whose Redis evicts pages: why it matters and what to set. */
export function evictionProblem(s: RedisSafety): string {
  return `Redis may evict standby pages (maxmemory-policy ${s.evictionPolicy}, maxmemory ${s.maxmemoryBytes} bytes): `
    + 'an evicted page leaves an image that looks complete and fails only when it is restored. Set maxmemory-policy noeviction '
    + '(a full Redis then refuses writes, which the replicator retries and its lag alerts show)';
}
