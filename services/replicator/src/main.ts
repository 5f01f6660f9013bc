/**
 * The replicator as a service: `node --import tsx services/replicator/src/main.ts [--flags]`, or the
 * same settings from REPLICATOR_* environment variables (--help lists them). Consumes the pages topic
 * and keeps each VM's standby image in Redis until SIGTERM/SIGINT.
 */
import { Redis } from 'ioredis';
import {
  CkptError, ConfigError, createLogger, helpText, kafkaClientConfig, parseBrokers, parseConfig, redactUrl, redisClientOptions, settleWithin, settingName, startMetricsServer, warnUnknownEnv, wantsHelp, type MetricsServer,
} from '@ckpt/common';
import { evictionProblem, redisSafety, type RedisSafety } from '@ckpt/standby';
import { createReplicatorMetrics } from './metrics.ts';
import { REPLICATOR_ENV_PREFIX, REPLICATOR_SCHEMA } from './replicator-config.ts';
import { Replicator } from './replicator.ts';

const USAGE = 'usage: node --import tsx services/replicator/src/main.ts [options]\n\nConsumes epochs from Kafka and applies each complete, verified epoch atomically to a standby image in Redis.';

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  if (wantsHelp(argv)) {
    process.stdout.write(helpText(REPLICATOR_SCHEMA, USAGE, REPLICATOR_ENV_PREFIX) + '\n');
    return 0;
  }
  const log = createLogger({ service: 'replicator' });
  let cfg;
  let kafka;
  let redisOpts;
  try {
    cfg = parseConfig(REPLICATOR_SCHEMA, { argv, env: process.env, envPrefix: REPLICATOR_ENV_PREFIX });
    const problems: string[] = [];
    if (!cfg.kafkaBrokers) problems.push('--kafka-brokers / REPLICATOR_KAFKA_BROKERS is required');
    if (!cfg.redisUrl) problems.push('--redis-url / REPLICATOR_REDIS_URL is required');
    if (problems.length) throw new ConfigError(problems);
    kafka = kafkaClientConfig(cfg, parseBrokers(cfg.kafkaBrokers));
    redisOpts = redisClientOptions(cfg, cfg.redisUrl);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`replicator: ${err.message}\n(replicator --help lists the options)\n`);
      return 2;
    }
    throw err;
  }
  warnUnknownEnv(log, REPLICATOR_SCHEMA, REPLICATOR_ENV_PREFIX);
  let fatal = false;
  const redis = new Redis(redisOpts.url, { ...redisOpts.options, maxRetriesPerRequest: 3, retryStrategy: (n) => Math.min(2000, 50 * n) });
  // One warning per outage (ioredis reports every reconnect attempt), and one line when it is back.
  const redisAt = redactUrl(redisOpts.url);
  let redisDown = false;
  redis.on('error', (err) => {
    if (!redisDown) log.warn('redis is not reachable; retrying (records wait, nothing is lost)', { redis: redisAt, err });
    redisDown = true;
  });
  redis.on('ready', () => {
    if (redisDown) log.info('redis is reachable again', { redis: redisAt });
    redisDown = false;
  });
  const metrics = createReplicatorMetrics({ defaultMetrics: true });
  const setting = (key: string): string => settingName(REPLICATOR_ENV_PREFIX, key);
  const rep = new Replicator({
    kafka, idempotent: cfg.kafkaIdempotent, topics: { pages: cfg.pagesTopic, control: cfg.controlTopic, deadLetter: cfg.deadLetterTopic },
    topicSettings: { pages: setting('pagesTopic'), control: setting('controlTopic'), deadLetter: setting('deadLetterTopic') },
    groupId: cfg.groupId, redis, redisPrefix: cfg.redisPrefix, maxRecordBytes: cfg.maxRecordBytes, markerIntervalMs: cfg.markerIntervalMs,
    resyncRetryMs: cfg.resyncRetryMs, deletedCheckMs: cfg.deletedCheckMs, scrubIntervalMs: cfg.scrubIntervalMs, scrubPagesPerS: cfg.scrubPagesPerS,
    // Exit non-zero so the supervisor (Kubernetes, the pipeline) starts a fresh replicator; offsets and
    // Redis hold all the state it needs.
    onFatal: () => { fatal = true; void stop(); },
    partitionsConsumedConcurrently: cfg.partitionsConcurrently, stageWindow: cfg.stageWindow, fetchMaxWaitMs: cfg.fetchMaxWaitMs, assignDelayMs: cfg.assignDelayMs, sessionTimeoutMs: cfg.sessionTimeoutMs, metrics, log,
  });
  let server: MetricsServer | null = null;
  try {
    if (cfg.metricsPort >= 0) {
      server = await startMetricsServer(metrics.registry, cfg.metricsPort, async () => {
        const r = rep.ready();
        if (r) return r;
        // Bounded: a Redis that holds the connection but does not answer (stopped, swapping) left the
        // probe without any answer.
        const pong = redis.ping().then(() => null, (err: unknown) => `redis: ${(err as Error).message}`);
        return (await settleWithin(pong, 2000)) ? pong : 'redis: no answer to PING within 2 s';
      });
    }
  } catch (err) {
    process.stderr.write(`replicator: cannot serve metrics on port ${cfg.metricsPort}: ${(err as Error).message}\n`);
    redis.disconnect();
    return 1;
  }
  // Redis must keep every page. Checked at start (an evicting Redis is refused), every minute and after
  // each reconnect (it may have been restarted with other settings); each finding is logged once.
  let redisSaid = '';
  const checkRedis = async (atStart: boolean): Promise<RedisSafety | null> => {
    const read = redisSafety(redis).catch(() => null);
    const s = (await settleWithin(read, 5000)) ? await read : null;
    if (!s) return null;
    metrics.redisEvictsPages.set(s.evictsPages ? 1 : 0);
    metrics.redisAofEnabled.set(s.aof ? 1 : 0);
    const said = JSON.stringify([s.evictsPages, s.evictionRisk, s.aof]);
    if (said === redisSaid) return s;
    redisSaid = said;
    const at = { redis: redisAt, maxmemoryPolicy: s.evictionPolicy, maxmemory: s.maxmemoryBytes };
    if (s.evictsPages && !atStart) log.error(evictionProblem(s), { ...at, code: 'CKPT_ERR_REDIS_EVICTION' });
    if (s.evictionRisk) log.warn(`${s.evictionRisk}; set maxmemory-policy noeviction`, at);
    if (!s.aof) log.warn('Redis writes no append-only file (appendonly no): epochs applied since its last snapshot are lost if it restarts, and the standby then holds an older epoch until a baseline heals it', at);
    return s;
  };
  const startSafety = await checkRedis(true);
  if (startSafety?.evictsPages) {
    const problem = evictionProblem(startSafety);
    log.error(`cannot start: ${problem}`, { redis: redisAt, code: 'CKPT_ERR_REDIS_EVICTION' });
    process.stderr.write(`replicator: ${problem} [CKPT_ERR_REDIS_EVICTION]\n`);
    await server?.close();
    redis.disconnect();
    return 1;
  }
  const redisCheck = setInterval(() => void checkRedis(false), 60_000).unref();
  redis.on('ready', () => void checkRedis(false));
  let stopping = false;
  const stop = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    clearInterval(redisCheck);
    log.info('stopping');
    // A record waiting on a Redis that holds the connection but does not answer (stopped, swapping)
    // kept the process past the pod's grace period. Its offset is not committed: it comes again.
    setTimeout(() => {
      log.error(`still stopping after ${cfg.stopTimeoutMs} ms (Redis or Kafka does not answer): exiting`);
      process.exit(1);
    }, cfg.stopTimeoutMs).unref();
    await rep.stop();
    await server?.close();
    redis.disconnect();
  };
  process.once('SIGTERM', () => void stop());
  process.once('SIGINT', () => void stop());
  try {
    await rep.start();
  } catch (err) {
    // The brokers answered, with a refusal: the idempotent producer, or a topic missing or not allowed.
    const refused = err instanceof CkptError && ['CKPT_ERR_KAFKA_IDEMPOTENT', 'CKPT_ERR_KAFKA_TOPIC_MISSING', 'CKPT_ERR_KAFKA_TOPIC_DENIED'].includes(err.code);
    log.error(refused ? 'cannot start: the brokers refuse' : 'cannot start: Kafka is not reachable', { brokers: cfg.kafkaBrokers, err });
    process.stderr.write(`replicator: ${refused ? '' : `cannot connect to Kafka at ${cfg.kafkaBrokers}: `}${(err as Error).message}\n`);
    await rep.stop().catch(() => undefined);
    await server?.close();
    redis.disconnect();
    return 1;
  }
  log.info('replicating', { brokers: cfg.kafkaBrokers, topic: cfg.pagesTopic, group: cfg.groupId, metricsPort: server?.port });
  // consumer.run() returns once running; stay up until stopped.
  await new Promise<void>((resolve) => {
    const t = setInterval(() => { if (stopping) { clearInterval(t); resolve(); } }, 200);
  });
  return fatal ? 1 : 0;
}

main().then((code) => { process.exitCode = code; }, (err: unknown) => {
  process.stderr.write(`replicator: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exitCode = 1;
});
