/**
 * The servers a pipeline, bench or drill run needs: the embedded Kafka test broker and redis-server,
 * unless KAFKA_BROKERS / REDIS_URL point at real ones; and replicator processes.
 *
 * Against real servers a run keeps to its own names, so it cannot touch a deployment sharing them:
 * topics `ckpt-run-<id>.pages|control|dead` (created for the run, deleted after; or, with
 * CKPT_RUN_TOPICS=<prefix>, the existing `<prefix>.pages|control|dead`), the consumer group
 * `ckpt-run-<id>`, and the Redis key prefix `ckpt-run-<id>` (its keys deleted after).
 */
import { randomBytes } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { Kafka, logLevel, type Admin } from 'kafkajs';
import { errorMessage, parseBrokers, redactUrl } from '@ckpt/common';
import { KafkaMock, killWithParent, RedisServer } from '@ckpt/embedded';
import { StandbyStore } from '@ckpt/standby';

export interface Topics { pages: string; control: string; deadLetter: string }
export const DEFAULT_TOPICS: Topics = { pages: 'ckpt.pages', control: 'ckpt.control', deadLetter: 'ckpt.dead' };

export interface Servers {
  brokers: string[];
  redisUrl: string;
  /** True for the embedded test broker: no idempotent producer, partitions keep 5 MiB. */
  embeddedKafka: boolean;
  kafka: KafkaMock | null;
  redis: RedisServer | null;
  topics: Topics;
  /** The replicators' consumer group. */
  groupId: string;
  /** Prefix of every Redis key of this run. */
  redisPrefix: string;
  /** Which servers this run uses, for the user. */
  description: string;
  /**
   * Set by connectRedis() once Redis answered. stop() deletes the run's keys either way, but says it
   * could not only after that: a Redis never reached is the run's real error, reported after stop().
   */
  redisReached: boolean;
  stop(): Promise<void>;
}

const runAdmin = (brokers: string[], retries: number): Admin => new Kafka({ clientId: 'ckpt-run', brokers, logLevel: logLevel.NOTHING, connectionTimeout: 5000, retry: { retries } }).admin();

/** Creates the run's topics on a real cluster; a clear error when the cluster does not allow it. */
async function createRunTopics(brokers: string[], topics: Topics, partitions: number): Promise<void> {
  const admin = runAdmin(brokers, 3);
  try {
    await admin.connect();
  } catch (err) {
    await admin.disconnect().catch(() => undefined);
    throw new Error(`cannot connect to Kafka at ${brokers.join(',')} (KAFKA_BROKERS): ${(err as Error).message}`, { cause: err });
  }
  try {
    await admin.createTopics({
      waitForLeaders: true,
      topics: [
        { topic: topics.pages, numPartitions: partitions, configEntries: [{ name: 'max.message.bytes', value: String(5 << 20) }] },
        { topic: topics.control, numPartitions: 1 },
        { topic: topics.deadLetter, numPartitions: 1, configEntries: [{ name: 'max.message.bytes', value: String((5 << 20) + (64 << 10)) }] },
      ],
    });
  } catch (err) {
    throw new Error(`cannot create this run's topics ${Object.values(topics).join(', ')} on the Kafka at ${brokers.join(',')} (KAFKA_BROKERS): ${(err as Error).message}. A run against real servers uses topics of its own, so it needs the right to create and delete topics (or set CKPT_RUN_TOPICS=<prefix> to use existing topics <prefix>.pages, <prefix>.control and <prefix>.dead).`, { cause: err });
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

async function deleteRunTopics(brokers: string[], topics: Topics): Promise<void> {
  const admin = runAdmin(brokers, 2);
  try {
    await admin.connect();
    await admin.deleteTopics({ topics: [topics.pages, topics.control, topics.deadLetter] });
  } catch (err) {
    process.stderr.write(`warning: could not delete this run's topics ${Object.values(topics).join(', ')}: ${(err as Error).message}\n`);
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

async function deleteRunKeys(url: string, prefix: string, warn: boolean): Promise<void> {
  const redis = new Redis(url, { maxRetriesPerRequest: 2, lazyConnect: true });
  redis.on('error', () => undefined);
  try {
    await redis.connect();
    await new StandbyStore(redis, prefix).deleteAll();
  } catch (err) {
    if (warn) process.stderr.write(`warning: could not delete this run's Redis keys ${prefix}:*: ${errorMessage(err)}\n`);
  } finally {
    redis.disconnect();
  }
}

export async function startServers(opts: { partitions: number; topics?: Topics; env?: NodeJS.ProcessEnv }): Promise<Servers> {
  const env = opts.env ?? process.env;
  const run = `ckpt-run-${randomBytes(4).toString('hex')}`;
  const external = { kafka: parseBrokers(env.KAFKA_BROKERS ?? ''), redis: env.REDIS_URL ?? '' };
  const given = opts.topics ?? (env.CKPT_RUN_TOPICS ? { pages: `${env.CKPT_RUN_TOPICS}.pages`, control: `${env.CKPT_RUN_TOPICS}.control`, deadLetter: `${env.CKPT_RUN_TOPICS}.dead` } : null);
  const topics = given ?? (external.kafka.length ? { pages: `${run}.pages`, control: `${run}.control`, deadLetter: `${run}.dead` } : DEFAULT_TOPICS);
  let kafka: KafkaMock | null = null;
  let redis: RedisServer | null = null;
  let topicsCreated = false;
  try {
    if (external.kafka.length) {
      if (!given) {
        await createRunTopics(external.kafka, topics, opts.partitions);
        topicsCreated = true;
      }
    } else {
      kafka = await KafkaMock.start({ brokers: 1, topics: [{ name: topics.pages, partitions: opts.partitions }, { name: topics.control, partitions: 1 }, { name: topics.deadLetter, partitions: 1 }] });
    }
    if (!external.redis) redis = await RedisServer.start();
    const brokers = external.kafka.length ? external.kafka : kafka!.brokers;
    const redisUrl = external.redis || redis!.url;
    const redisPrefix = external.redis ? run : 'ckpt';
    const groupId = external.kafka.length ? run : 'ckpt-replicator';
    const description = [
      external.kafka.length ? `Kafka ${brokers.join(',')} (KAFKA_BROKERS), topics ${Object.values(topics).join(', ')}${given ? '' : ' created for this run'}, group ${groupId}` : 'the embedded Kafka test broker',
      external.redis ? `Redis ${redactUrl(redisUrl)} (REDIS_URL), keys ${redisPrefix}:*` : 'an embedded redis-server',
    ].join('; ');
    const servers: Servers = {
      brokers, redisUrl, embeddedKafka: kafka !== null, kafka, redis, topics, groupId, redisPrefix, description, redisReached: false,
      async stop() {
        await kafka?.stop();
        await redis?.stop();
        if (topicsCreated) await deleteRunTopics(external.kafka, topics);
        if (external.redis) await deleteRunKeys(redisUrl, redisPrefix, servers.redisReached);
      },
    };
    return servers;
  } catch (err) {
    if (topicsCreated) await deleteRunTopics(external.kafka, topics);
    await kafka?.stop().catch(() => undefined);
    await redis?.stop().catch(() => undefined);
    throw err;
  }
}

/**
 * A Redis client for the run's server, checked with a PING: a server that cannot be reached fails
 * here, at once and named, not as a timeout later. Later connection errors go to `onError`.
 */
export async function connectRedis(s: Servers, onError: (err: Error) => void = () => undefined): Promise<Redis> {
  const redis = new Redis(s.redisUrl, { maxRetriesPerRequest: 5 });
  let lastError: Error | null = null;
  redis.on('error', (err: Error) => { lastError = err; onError(err); });
  try {
    await redis.ping();
    s.redisReached = true;
    return redis;
  } catch (err) {
    redis.disconnect();
    // The connection's own error (ECONNREFUSED, ...) says more than ioredis's retry limit.
    throw new Error(`cannot connect to Redis at ${redactUrl(s.redisUrl)}${s.redis ? '' : ' (REDIS_URL)'}: ${(lastError ?? (err as Error)).message}`, { cause: err });
  }
}

const REPLICATOR_MAIN = fileURLToPath(new URL('../../../services/replicator/src/main.ts', import.meta.url));

/**
 * Node flags for the processes that move pages (also in package.json's scripts and the Dockerfiles).
 * V8 starts the old generation at a few MB and grows it slowly; records in flight survive a couple of
 * scavenges and are promoted, so a harvester or replicator at 70 MB/s ran a full mark-compact about
 * every 130 ms. A 256 MB initial heap cut those by a third to three quarters and the CPU per MB by about 15%
 * (docs/replication.md); the replicator's peak RSS grew by about 30 MB. --use-largepages=silent puts
 * Node's code on 2 MiB pages: the code around each harvest is slower after the kernel's work on cold
 * TLBs, less so on huge pages (docs/harvester.md); silent where the host has no transparent huge pages.
 */
export const SERVICE_NODE_FLAGS: readonly string[] = ['--initial-heap-size=256', '--use-largepages=silent'];

/** A replicator in its own process (so tests can kill -9 it), logging to `onLog`. */
export function spawnReplicator(s: Servers, extra: Record<string, string> = {}, onLog?: (line: string) => void): ChildProcess {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    REPLICATOR_KAFKA_BROKERS: s.brokers.join(','), REPLICATOR_REDIS_URL: s.redisUrl,
    REPLICATOR_PAGES_TOPIC: s.topics.pages, REPLICATOR_CONTROL_TOPIC: s.topics.control, REPLICATOR_DEAD_LETTER_TOPIC: s.topics.deadLetter,
    REPLICATOR_GROUP_ID: s.groupId, REPLICATOR_REDIS_PREFIX: s.redisPrefix,
    REPLICATOR_KAFKA_IDEMPOTENT: s.embeddedKafka ? 'false' : 'true', REPLICATOR_METRICS_PORT: '-1',
    // The embedded broker answers a fetch only when its wait expires: keep the wait short.
    // A short session lets a killed replicator's partitions move quickly in tests and drills.
    // Its group coordinator refuses a SyncGroup that comes after the leader's: the leader waits (delayedAssigner).
    ...(s.embeddedKafka ? { REPLICATOR_FETCH_MAX_WAIT_MS: '2', REPLICATOR_SESSION_TIMEOUT_MS: '3000', REPLICATOR_ASSIGN_DELAY_MS: '300' } : {}), ...extra,
  };
  // CKPT_REPLICATOR_NODE_ARGS adds node flags (e.g. --cpu-prof) to replicator processes, for profiling.
  const nodeArgs = (process.env.CKPT_REPLICATOR_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const child = spawn(process.execPath, [...SERVICE_NODE_FLAGS, ...nodeArgs, '--import', 'tsx', REPLICATOR_MAIN], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  lines(child, onLog);
  killWithParent(child);
  return child;
}

const HARVESTER_MAIN = fileURLToPath(new URL('../../../services/harvester/src/main.ts', import.meta.url));

/**
 * The harvester service and its guest in their own process (the drill kills it with -9, as a host
 * failure would), publishing to the servers' broker. `env` adds HARVESTER_* settings.
 */
export function spawnHarvester(s: Servers, env: Record<string, string>, onLog?: (line: string) => void): ChildProcess {
  const child = spawn(process.execPath, [...SERVICE_NODE_FLAGS, '--import', 'tsx', HARVESTER_MAIN], {
    env: {
      ...process.env, HARVESTER_KAFKA_BROKERS: s.brokers.join(','), HARVESTER_PAGES_TOPIC: s.topics.pages, HARVESTER_CONTROL_TOPIC: s.topics.control,
      HARVESTER_KAFKA_IDEMPOTENT: s.embeddedKafka ? 'false' : 'true', HARVESTER_METRICS_PORT: '-1', HARVESTER_EPOCHS: '0', ...env,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  lines(child, onLog);
  killWithParent(child);
  return child;
}

function lines(child: ChildProcess, onLog?: (line: string) => void): void {
  let buf = '';
  child.stderr?.on('data', (d: Buffer) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      onLog?.(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
}

/**
 * Keeps `count` replicator processes running, as a Deployment would: one that exits on its own is
 * started again. `stopChild` on a member (a test's kill -9) is followed by `replace()`.
 */
export class ReplicatorPool {
  readonly members: ChildProcess[] = [];
  readonly restarts: string[] = [];
  private stopped = false;

  constructor(private readonly servers: Servers, count: number, private readonly onLog?: (line: string) => void) {
    for (let i = 0; i < count; i++) this.members.push(this.spawn(i));
  }

  private spawn(i: number): ChildProcess {
    const child = spawnReplicator(this.servers, {}, this.onLog);
    child.once('exit', (code, signal) => {
      if (this.stopped || this.members[i] !== child || signal === 'SIGKILL') return;
      this.restarts.push(`replicator ${i} exited (${code ?? signal}) and was started again`);
      setTimeout(() => { if (!this.stopped && this.members[i] === child) this.members[i] = this.spawn(i); }, 500);
    });
    return child;
  }

  /**
   * Stops member i and starts a new one in its place: SIGKILL for a crash test, SIGTERM for a member
   * that leaves the group in good order (a rolling restart).
   */
  async kill(i: number, signal: 'SIGKILL' | 'SIGTERM' = 'SIGKILL'): Promise<ChildProcess> {
    const victim = this.members[i]!;
    await stopChild(victim, signal);
    this.members[i] = this.spawn(i);
    return victim;
  }

  /** Kills every member; start() brings them back. */
  async killAll(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.members.map((c) => stopChild(c, 'SIGKILL')));
  }

  start(): void {
    this.stopped = false;
    for (let i = 0; i < this.members.length; i++) this.members[i] = this.spawn(i);
  }

  add(): void {
    this.members.push(this.spawn(this.members.length));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.members.map((c) => stopChild(c)));
  }
}

export async function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill(signal);
  const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(t);
}
