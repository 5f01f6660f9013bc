/**
 * The harvester as a long-running service: configuration from HARVESTER_* environment variables
 * (the `npm run harvest` schema plus Kafka settings), metrics on HARVESTER_METRICS_PORT (default
 * 9464), epochs cut and published to Kafka until SIGTERM/SIGINT. Without HARVESTER_KAFKA_BROKERS it
 * checkpoints locally only (and verifies, with HARVESTER_VERIFY=true), and says so.
 */
// First: kafkajs must find the native CRC-32C and the chunked encoder when it loads (see kafka-crc32c.ts, kafka-encoder.ts).
import { reportKafkajsSpeedups } from './publish/kafkajs-speedups.ts';
import { Kafka, logLevel } from 'kafkajs';
import {
  ConfigError, CkptError, connectProducer, createLogger, helpText, kafkaClientConfig, kafkaLogCreator, parseBrokers, parseConfig, requireTopics, settingName, settleWithin, startCommandMetricsServer, toEnv, toFlag, warnUnknownEnv, vmIdProblem, wantsHelp,
} from '@ckpt/common';
import { encodeControlRecord } from '@ckpt/proto';
import { runHarvest } from './harvest-loop.ts';
import { HARVESTER_ENV_PREFIX, HARVESTER_SERVICE_SCHEMA } from './service-config.ts';
import { createHarvesterMetrics } from './metrics.ts';
import { ControlListener } from './publish/control-listener.ts';
import { KafkaPublisher } from './publish/kafka-publisher.ts';
import { LogStartOffsets } from './publish/log-start.ts';
import { WriterGuard } from './publish/writer-guard.ts';
import { openSource } from './sources/open-source.ts';
import type { EpochSink } from './epoch/epoch-types.ts';


const USAGE = 'Usage: node --import tsx services/harvester/src/main.ts [options]\n\nEvery option is also a HARVESTER_* environment variable (flags win):';

/**
 * `f`, whose configuration errors name flags (they are shared with `npm run harvest`), with each flag's
 * HARVESTER_* variable beside it: a service is configured through those.
 */
function withEnvNames<T>(f: () => T): T {
  try {
    return f();
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    const envOf = new Map(Object.keys(HARVESTER_SERVICE_SCHEMA).map((k) => [toFlag(k), toEnv(HARVESTER_ENV_PREFIX, k)]));
    throw new ConfigError(err.problems.map((p) => p.replace(/--[a-z][a-z-]*/g, (flag) => (envOf.has(flag) ? `${flag} (${envOf.get(flag)})` : flag))), { cause: err });
  }
}

/** kafkajs's retries inside one call: a second or two, then the caller's own retry loop decides. */
const KAFKAJS_RETRY = { retries: 2, initialRetryTime: 100, maxRetryTime: 1000 };

async function main(): Promise<number> {
  if (wantsHelp(process.argv.slice(2))) {
    process.stdout.write(helpText(HARVESTER_SERVICE_SCHEMA, USAGE, HARVESTER_ENV_PREFIX) + '\n');
    return 0;
  }
  // Flags win over HARVESTER_* variables; an unknown flag is an error, not ignored.
  const cfg = parseConfig(HARVESTER_SERVICE_SCHEMA, { argv: process.argv.slice(2), env: process.env, envPrefix: HARVESTER_ENV_PREFIX });
  const badId = cfg.vmId === ''
    ? 'HARVESTER_VM_ID (--vm-id) is required: the guest\'s id, the key of its records and its standby\'s name (with no default, two harvesters that both forgot it do not write as one VM)'
    : vmIdProblem('HARVESTER_VM_ID', cfg.vmId);
  if (badId) throw new ConfigError([badId]);
  const log = createLogger({ service: 'harvester', vm: cfg.vmId });
  warnUnknownEnv(log.child({ component: 'main' }), HARVESTER_SERVICE_SCHEMA, HARVESTER_ENV_PREFIX);
  const metrics = createHarvesterMetrics({ defaultMetrics: true, vm: cfg.vmId });
  const brokers = parseBrokers(cfg.kafkaBrokers);
  // Short retries in the client too (connecting, metadata): see the producer below.
  const kafka = brokers.length ? new Kafka({
    ...(kafkaClientConfig(cfg, brokers) as object), logLevel: logLevel.ERROR, logCreator: kafkaLogCreator(log), retry: KAFKAJS_RETRY,
  } as unknown as ConstructorParameters<typeof Kafka>[0]) : null;
  if (!kafka) log.warn('HARVESTER_KAFKA_BROKERS is not set: checkpointing locally only, nothing is published');
  const speedups = kafka ? reportKafkajsSpeedups(log, { component: 'main' }) : null;
  const abort = new AbortController();
  let ready = false;
  let publisher: KafkaPublisher | null = null;
  // Ready once the guest runs and Kafka is connected, and while the broker takes its records. -1 = no
  // metrics server (the schema's "off"). Before the guest exists: a port in use is a clear error naming
  // the setting, and no guest was made for nothing.
  const server = cfg.metricsPort >= 0
    ? await startCommandMetricsServer('CKPT_ERR_METRICS_PORT', metrics.registry, cfg.metricsPort, () => (ready ? publisher?.problem() ?? null : 'guest not started or Kafka not connected'), 'HARVESTER_METRICS_PORT (--metrics-port)')
    : null;
  const { source, fallbackReason } = withEnvNames(() => openSource(cfg));
  if (fallbackReason) log.warn('using the simulator', { component: 'source', reason: fallbackReason });
  const stop = (signal: string): void => {
    log.info('stopping', { component: 'main', signal });
    abort.abort();
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  // A closed terminal (a harvester run by hand) stops it in good order too, not with no clean-up at all.
  process.once('SIGHUP', () => stop('SIGHUP'));
  // kafkajs's own retries are bounded (a second or two against a broker that refuses connections):
  // KafkaPublisher retries itself, counting errors, flagging /readyz and ending the generation after
  // publishTimeoutMs. kafkajs's defaults (5 retries, up to 30 s apart; for ever when idempotent) kept a
  // send from failing for 20 s, or never, so none of that saw a broker outage.
  const producer = kafka?.producer({
    idempotent: cfg.kafkaIdempotent, maxInFlightRequests: cfg.kafkaIdempotent ? 5 : 1, allowAutoTopicCreation: false,
    retry: KAFKAJS_RETRY,
  }) ?? null;
  const listener = kafka ? new ControlListener(kafka, cfg.controlTopic, log.child({ component: 'control' })) : null;
  const logStart = kafka ? new LogStartOffsets(kafka, cfg.pagesTopic) : null;
  let guard: WriterGuard | null = null;
  let generation = 0;
  try {
    const sinks: EpochSink[] = [];
    if (producer && listener) {
      try {
        await connectProducer(kafka!, producer, cfg.kafkaIdempotent, 'HARVESTER_KAFKA_IDEMPOTENT=false (--no-kafka-idempotent)');
        await requireTopics(kafka!, (['pagesTopic', 'controlTopic'] as const).map((k) => ({ topic: cfg[k], setting: settingName(HARVESTER_ENV_PREFIX, k) })));
      } catch (err) {
        if (err instanceof CkptError) throw err;
        throw new CkptError('CKPT_ERR_KAFKA_UNREACHABLE', `cannot connect to Kafka at ${cfg.kafkaBrokers}: ${(err as Error).message}`, { cause: err });
      }
      const pub = new KafkaPublisher({
        producer, topic: cfg.pagesTopic, vm: cfg.vmId, maxRecordBytes: cfg.maxRecordBytes, maxRequestBytes: cfg.maxRequestBytes, compression: cfg.compression,
        maxInFlightBytes: cfg.maxInFlightBytes, windowBytes: cfg.windowBytes, publishTimeoutMs: cfg.publishTimeoutMs, logStartOffset: logStart?.of, metrics, log: log.child({ component: 'publish' }),
        // SIGTERM ends the waits for the replicator and the broker too (the pod's grace period is 30 s).
        signal: abort.signal,
      });
      publisher = pub;
      if (cfg.writerHeartbeatMs > 0) {
        guard = new WriterGuard({
          vm: cfg.vmId, periodMs: cfg.writerHeartbeatMs, generation: () => generation, log: log.child({ component: 'writer-guard' }),
          send: async (writer) => {
            await producer.send({ topic: cfg.controlTopic, acks: -1, messages: [{ key: cfg.vmId, value: Buffer.from(encodeControlRecord({ vm: cfg.vmId, kind: 'writer', writer })) }] });
          },
          onOthers: (n) => metrics.duplicateWriters.set(n),
          onIntruder: () => abort.abort(),
        });
      }
      const g = guard;
      listener.register(cfg.vmId, (m) => pub.window.marker(m), g ? (w) => g.heard(w) : undefined);
      await listener.start();
      g?.start();
      sinks.push(pub);
    }
    // Logged once the guest exists and Kafka (when set) is connected with its topics, not before.
    log.info('started', { component: 'main', source: source.kind, mode: source.mode, metricsPort: server?.port ?? 'off', kafkaCrc32c: speedups?.kafkaCrc32c ?? 'off', kafkaEncoder: speedups?.kafkaEncoder ?? 'off' });
    ready = true;
    const summary = await runHarvest(source, {
      epochs: cfg.epochs, intervalMs: cfg.intervalMs, verify: cfg.verify, metrics, logger: log.child({ component: 'harvest' }),
      signal: abort.signal, sinks, cycle: { precopyRounds: cfg.precopyRounds, precopyAboveEntries: cfg.precopyAboveEntries, generation: Date.now() },
      takeResyncRequest: listener ? () => listener.takeResyncRequest(cfg.vmId) : undefined,
      generationFloor: listener ? () => listener.generationFloor(cfg.vmId) : undefined,
      onEpoch: (c) => { generation = c.generation; },
    });
    // Stopped because another harvester publishes as this VM: a failure, named, not a clean stop.
    if (guard?.intruder) throw guard.intruder;
    log.info('stopped', { component: 'main', ...summary });
    return summary.mismatches > 0 || summary.vcpuError ? 1 : 0;
  } finally {
    guard?.stop();
    source.close();
    await listener?.stop();
    await logStart?.close();
    if (producer) await settleWithin(producer.disconnect(), 3000);
    await server?.close();
  }
}

// Everything is stopped or given up on (each step has a time limit) when main() settles, so the process
// exits then: kafkajs can leave a consumer restart scheduled from a broker outage that outlives
// disconnect() (tulios/kafkajs#1147) and kept a stopped harvester alive for good, past the pod's grace
// period. (Writes to stdout and stderr are synchronous on Linux: nothing logged is lost.)
main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    const log = createLogger({ service: 'harvester', component: 'main' });
    log.error(err instanceof ConfigError || err instanceof CkptError ? err.message : 'unexpected failure', { err });
    process.exit(err instanceof ConfigError ? 2 : 1);
  },
);
