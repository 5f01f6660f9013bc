/**
 * Connection settings shared by every service: the Kafka cluster (brokers, TLS, SASL, topics) and
 * Redis (URL, TLS, AUTH). Config fragments to spread into a service's schema, and builders for the
 * kafkajs and ioredis options.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext, type ConnectionOptions } from 'node:tls';
import { CkptError, ConfigError } from './errors.ts';
import type { ConfigOf, Schema } from './config.ts';
import type { Logger } from './logger.ts';

export const KAFKA_SCHEMA = {
  kafkaBrokers: { type: 'string', default: '', help: 'Kafka bootstrap servers, host:port, comma separated' },
  kafkaClientId: { type: 'string', default: 'ckpt', help: 'Kafka client id' },
  pagesTopic: { type: 'string', default: 'ckpt.pages', help: 'topic of epoch records (key = VM id)' },
  controlTopic: { type: 'string', default: 'ckpt.control', help: 'topic of resync requests and applied markers (key = VM id)' },
  deadLetterTopic: { type: 'string', default: 'ckpt.dead', help: 'topic where unusable records are parked, with headers saying why' },
  kafkaTls: { type: 'bool', default: false, help: 'connect to Kafka with TLS' },
  kafkaTlsCaFile: { type: 'string', default: '', help: 'PEM CA bundle for the brokers (empty: system CAs)' },
  kafkaTlsCertFile: { type: 'string', default: '', help: 'PEM client certificate (mutual TLS)' },
  kafkaTlsKeyFile: { type: 'string', default: '', help: 'PEM client key (mutual TLS)' },
  kafkaSaslMechanism: { type: 'enum', values: ['none', 'plain', 'scram-sha-256', 'scram-sha-512'], default: 'none', help: 'SASL mechanism' },
  kafkaSaslUsername: { type: 'string', default: '', help: 'SASL user name' },
  kafkaSaslPasswordFile: { type: 'string', default: '', help: 'file holding the SASL password (kept out of the environment and the process list)' },
  kafkaIdempotent: { type: 'bool', default: true, help: 'idempotent producer (real clusters; the embedded test broker cannot do it: turn it off there)' },
} as const satisfies Schema;

export const REDIS_SCHEMA = {
  redisUrl: { type: 'string', default: '', help: 'Redis URL, redis://[user:password@]host:port[/db] or rediss:// for TLS' },
  redisPasswordFile: { type: 'string', default: '', help: 'file holding the Redis AUTH password (overrides the URL\'s)' },
  redisTlsCaFile: { type: 'string', default: '', help: 'PEM CA bundle for rediss:// (empty: system CAs)' },
  redisPrefix: { type: 'string', default: 'ckpt', help: 'prefix of every Redis key' },
} as const satisfies Schema;

export type KafkaSettings = ConfigOf<typeof KAFKA_SCHEMA>;
export type RedisSettings = ConfigOf<typeof REDIS_SCHEMA>;

function readSecret(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch (err) {
    throw new ConfigError([`cannot read ${what} from ${path}: ${(err as Error).message}`]);
  }
}

/** Throws unless `pem` holds one or more PEM certificates, each of which parses. */
function checkCertificates(pem: string): void {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new Error('no PEM certificate (-----BEGIN CERTIFICATE-----) in the CA bundle');
  for (const b of blocks) new X509Certificate(b);
}

/** The kafkajs client configuration (a plain object; kafkajs types it as KafkaConfig). */
export function kafkaClientConfig(s: KafkaSettings, brokers: string[]): Record<string, unknown> {
  if (brokers.length === 0) throw new ConfigError(['no Kafka brokers: set --kafka-brokers (or KAFKA_BROKERS)']);
  // Half-set security is a mistake, not a choice: files or a user given while their switch is off were
  // ignored, and the client connected in plain text or without SASL, saying nothing.
  const tlsFiles = [['--kafka-tls-ca-file', s.kafkaTlsCaFile], ['--kafka-tls-cert-file', s.kafkaTlsCertFile], ['--kafka-tls-key-file', s.kafkaTlsKeyFile]].filter(([, v]) => v).map(([k]) => k);
  if (!s.kafkaTls && tlsFiles.length) throw new ConfigError([`${tlsFiles.join(', ')} set but --kafka-tls is off: turn it on, or remove them`]);
  const saslSet = [['--kafka-sasl-username', s.kafkaSaslUsername], ['--kafka-sasl-password-file', s.kafkaSaslPasswordFile]].filter(([, v]) => v).map(([k]) => k);
  if (s.kafkaSaslMechanism === 'none' && saslSet.length) throw new ConfigError([`${saslSet.join(', ')} set but --kafka-sasl-mechanism is none: choose plain, scram-sha-256 or scram-sha-512, or remove them`]);
  if (!s.kafkaTlsCertFile !== !s.kafkaTlsKeyFile) throw new ConfigError(['mutual TLS needs both --kafka-tls-cert-file and --kafka-tls-key-file']);
  let ssl: boolean | ConnectionOptions = false;
  if (s.kafkaTls) {
    const tls: ConnectionOptions = {};
    if (s.kafkaTlsCaFile) tls.ca = readSecret(s.kafkaTlsCaFile, 'the Kafka CA bundle');
    if (s.kafkaTlsCertFile) tls.cert = readSecret(s.kafkaTlsCertFile, 'the Kafka client certificate');
    if (s.kafkaTlsKeyFile) tls.key = readSecret(s.kafkaTlsKeyFile, 'the Kafka client key');
    // Files that are not PEM (or a key that does not match its certificate) fail here, as configuration,
    // not after 20 s of connection retries as an unreachable broker.
    try {
      if (typeof tls.ca === 'string') checkCertificates(tls.ca); // createSecureContext skips a CA bundle it cannot parse
      createSecureContext(tls);
    } catch (err) {
      throw new ConfigError([`the Kafka TLS files (${tlsFiles.join(', ')}) are unusable: ${(err as Error).message}`]);
    }
    ssl = Object.keys(tls).length ? tls : true;
  }
  let sasl: Record<string, string> | undefined;
  if (s.kafkaSaslMechanism !== 'none') {
    if (!s.kafkaSaslUsername || !s.kafkaSaslPasswordFile) throw new ConfigError([`SASL ${s.kafkaSaslMechanism} needs --kafka-sasl-username and --kafka-sasl-password-file`]);
    sasl = { mechanism: s.kafkaSaslMechanism, username: s.kafkaSaslUsername, password: readSecret(s.kafkaSaslPasswordFile, 'the SASL password') };
  }
  return { clientId: s.kafkaClientId, brokers, ssl, sasl };
}

const CONNECTION_LOSS_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENOTCONN']);
/** The same, and ioredis's words, in a message (a wrapped error may carry the code only there). */
// "Reached the max retries per request limit": ioredis gave up on a command while reconnecting to a
// server that went away (a Redis killed mid-restore was reported as an unexpected, final error).
const CONNECTION_LOSS_WORDS = new RegExp(['Connection is closed', 'Command aborted due to connection close', 'Command timed out', ...CONNECTION_LOSS_CODES, 'stream isn\'t writeable', 'LOADING', 'Reached the max retries per request limit'].join('|'), 'i');

/**
 * A server that went away or did not answer in time, in the words of the socket (its errno code) or
 * of ioredis ("Connection is closed", a command aborted, timed out or out of retries while reconnecting, a
 * Redis still loading its AOF):
 * worth trying again once it answers.
 */
export function isConnectionLoss(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && CONNECTION_LOSS_CODES.has(code)) return true;
  return CONNECTION_LOSS_WORDS.test(err.message);
}

/** A server URL fit for logs and errors: any credentials before the host are masked. */
export const redactUrl = (url: string): string => url.replace(/\/\/[^@]*@/, '//***@');

/**
 * A comma-separated broker list as host:port entries (empty entries are skipped). A malformed entry is
 * a ConfigError naming it (kafkajs would only fail later, with "Port should be >= 0 ... NaN").
 */
export function parseBrokers(list: string): string[] {
  const brokers = list.split(',').map((b) => b.trim()).filter(Boolean);
  const problems: string[] = [];
  for (const b of brokers) {
    // kafkajs splits an entry at ':', so an IPv6 literal cannot work: it needs a host name.
    if (b.startsWith('[')) problems.push(`Kafka broker "${b}": the Kafka client cannot take an IPv6 address literal; use a host name that resolves to it`);
    else if (b.includes('://')) problems.push(`Kafka broker "${b}": give host:port without a listener scheme (TLS is --kafka-tls)`);
    else {
      const m = /^([^:\s]+):(\d{1,5})$/.exec(b);
      if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) problems.push(`Kafka broker "${b}" is not host:port (port 1..65535)`);
    }
  }
  if (problems.length) throw new ConfigError(problems);
  return brokers;
}

/** ioredis options for a URL, with the password file and TLS CA applied. */
export function redisClientOptions(s: RedisSettings, url: string): { url: string; options: Record<string, unknown> } {
  if (!/^rediss?:\/\//.test(url)) throw new ConfigError([`--redis-url must start with redis:// or rediss://, got "${url}"`]);
  const options: Record<string, unknown> = {};
  if (s.redisPasswordFile) options.password = readSecret(s.redisPasswordFile, 'the Redis password');
  if (url.startsWith('rediss://') && s.redisTlsCaFile) options.tls = { ca: readSecret(s.redisTlsCaFile, 'the Redis CA bundle') };
  return { url, options };
}

/**
 * redisClientOptions() for a command: a setting that cannot be used (a bad URL, an unreadable secret)
 * is printed as `<name>: <problem>` and returns exit code 2.
 */
export function commandRedisOptions(name: string, s: RedisSettings, url: string): { url: string; options: Record<string, unknown> } | number {
  try {
    return redisClientOptions(s, url);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`${name}: ${err.message}\n`);
    return 2;
  }
}

/**
 * connect() of a lazyConnect ioredis client. After its retries ioredis rejects with "Connection is
 * closed.", which hides why; this rejects with the connection's own last error instead (ECONNREFUSED,
 * ENOTFOUND, WRONGPASS, ...), the original as its cause. With `timeoutMs`, a server that takes the
 * connection but does not answer (stopped, swapping) fails it within that time: ioredis retries its
 * ready check, and a restore given 2 s took 8.5 s to fail, 15 s took 34.5 s.
 */
export async function connectWithCause(
  client: { connect(): Promise<unknown>; disconnect(): void; on(ev: 'error', f: (e: Error) => void): unknown; off(ev: 'error', f: (e: Error) => void): unknown },
  timeoutMs?: number,
): Promise<void> {
  let last: Error | null = null;
  const onError = (e: Error): void => { last = e; };
  client.on('error', onError);
  let timer: NodeJS.Timeout | undefined;
  const tooLate = new Error(`no answer within ${timeoutMs} ms`);
  try {
    const connecting = client.connect();
    if (timeoutMs === undefined) await connecting;
    else {
      const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(tooLate), timeoutMs); });
      await Promise.race([connecting, late]).catch((err: unknown) => {
        connecting.catch(() => undefined);
        client.disconnect();
        throw err;
      });
    }
  } catch (err) {
    const cause = last as Error | null;
    const message = err === tooLate ? `${tooLate.message}${cause ? ` (${cause.message})` : ''}` : cause?.message || (err as Error).message;
    throw new Error(message, { cause: err });
  } finally {
    clearTimeout(timer);
    client.off('error', onError);
  }
}

/**
 * The error of a command that could not connect to Redis (from connectWithCause): refused credentials
 * are CKPT_ERR_REDIS_AUTH, not retriable (trying again cannot help, and a failover pod would only
 * crash-loop); anything else is CKPT_ERR_REDIS_UNREACHABLE, retriable.
 */
export function redisConnectError(err: unknown, url: string): CkptError {
  const message = (err as Error).message;
  if (/WRONGPASS|NOAUTH|invalid (username-)?password|AUTH failed|NOPERM/i.test(message)) {
    return new CkptError('CKPT_ERR_REDIS_AUTH', `Redis at ${redactUrl(url)} refused the credentials: ${message}; check the password (--redis-password-file, or in --redis-url) and the user's ACL`, { cause: err });
  }
  return new CkptError('CKPT_ERR_REDIS_UNREACHABLE', `cannot connect to Redis at ${redactUrl(url)}: ${message}`, { retriable: true, cause: err });
}

/** kafkajs errors that mean the brokers did not answer (as opposed to answering with a refusal). */
function isConnectionError(err: unknown): boolean {
  const e = err as { name?: string; cause?: { name?: string } } | null;
  const silent = (name: string | undefined): boolean => name === 'KafkaJSConnectionError' || name === 'KafkaJSRequestTimeoutError' || name === 'KafkaJSConnectionClosedError';
  return silent(e?.name) || (e?.name === 'KafkaJSNumberOfRetriesExceeded' && silent(e.cause?.name));
}

/**
 * connect() of a kafkajs producer. An idempotent producer first asks a broker for a producer id, which
 * a broker older than Kafka 0.11, a user without IdempotentWrite on the cluster, or the embedded test
 * broker refuses, and kafkajs then fails with whatever went wrong last ("Broker 0 not found in the
 * cached metadata" against the embedded one), as if the brokers could not be reached. When they did
 * answer (an admin client connects), this rejects with CKPT_ERR_KAFKA_IDEMPOTENT naming the cause and
 * `turnOff`, the setting that turns the idempotent producer off; otherwise with the producer's error.
 */
export async function connectProducer(
  kafka: { admin(): { connect(): Promise<void>; disconnect(): Promise<void> } },
  producer: { connect(): Promise<void> },
  idempotent: boolean,
  turnOff: string,
): Promise<void> {
  try {
    await producer.connect();
  } catch (err) {
    if (!idempotent || isConnectionError(err)) throw err;
    const admin = kafka.admin();
    const answered = await admin.connect().then(() => true, () => false);
    await admin.disconnect().catch(() => undefined);
    if (!answered) throw err;
    throw new CkptError('CKPT_ERR_KAFKA_IDEMPOTENT', `the Kafka brokers answer but gave the idempotent producer no producer id (${(err as Error).message}): `
      + `a broker older than Kafka 0.11, a user without IdempotentWrite on the cluster, or the embedded test broker refuses one; grant IdempotentWrite, or turn it off with ${turnOff}`, { cause: err });
  }
}

/** A topic a service needs and the setting that names it (for the error). */
export interface NeededTopic { topic: string; setting: string }

/**
 * Asks the brokers about each topic a service needs before it starts work, so that a topic nobody
 * created (a cluster with auto.create.topics.enable=false, a typo in a topic setting) or one this user
 * may not describe is one clear error at start, naming the topic and its setting:
 * CKPT_ERR_KAFKA_TOPIC_MISSING or CKPT_ERR_KAFKA_TOPIC_DENIED. Otherwise it would be a stream of
 * retried "This server does not host this topic-partition" errors: a harvester that ends a
 * generation after every publish timeout, a replicator whose consumer never joins. Other failures
 * (the brokers went away) are rethrown as they are.
 */
export async function requireTopics(kafka: { admin(): KafkaAdminLike }, topics: readonly NeededTopic[]): Promise<void> {
  const admin = kafka.admin();
  await admin.connect();
  try {
    for (const { topic, setting } of topics) {
      try {
        await admin.fetchTopicMetadata({ topics: [topic] });
      } catch (err) {
        const e = err as { type?: string; cause?: { type?: string } } | null;
        const type = e?.type ?? e?.cause?.type;
        if (type === 'UNKNOWN_TOPIC_OR_PARTITION') {
          throw new CkptError('CKPT_ERR_KAFKA_TOPIC_MISSING', `the Kafka topic ${topic} (${setting}) does not exist: create it (deploy/k8s/kafka/topics.yaml has the product's topics) or set ${setting} to the topic's name`, { cause: err, context: { topic } });
        }
        if (type === 'TOPIC_AUTHORIZATION_FAILED') {
          throw new CkptError('CKPT_ERR_KAFKA_TOPIC_DENIED', `this Kafka user may not use the topic ${topic} (${setting}): grant the ACLs of deploy/k8s/kafka/users.yaml`, { cause: err, context: { topic } });
        }
        throw err;
      }
    }
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

/** The part of a kafkajs admin client requireTopics() uses. */
interface KafkaAdminLike {
  connect(): Promise<void>;
  disconnect(): Promise<void>;
  fetchTopicMetadata(o: { topics: string[] }): Promise<unknown>;
}

/** One kafkajs log entry, as kafkajs hands it to a logCreator. */
interface KafkaLogEntry { namespace: string; level: number; label?: string; log: { message: string; timestamp?: string; stack?: string; [k: string]: unknown } }

/**
 * kafkajs warnings about choices this product makes on purpose. Both services bound their idempotent
 * producers' retries (kafkajs's default for those is to retry for ever, so a send never failed and no
 * publish timeout, readiness check or error count could see a broker outage) and send again
 * themselves; a record that lands twice is applied once (the replicator is idempotent under
 * redelivery). kafkajs warns about that at every start.
 */
const BY_DESIGN = new Set(['Limiting retries for the idempotent producer may invalidate EoS guarantees']);

/**
 * A kafkajs `logCreator` writing through our logger, so its lines have the service's format (ERROR as
 * error, WARN as warning). kafkajs's own stack traces are dropped; an error of ours that kafkajs
 * reports (thrown from eachBatch, say) keeps its message and stack. One message repeated within
 * `quietMs` for the same broker, topic and partition (a broker that refuses connections: one line per
 * retry) is written once; how often it was held back follows at the end of the quiet period, or with
 * the next line of that message.
 */
export function kafkaLogCreator(log: Logger, quietMs = 30_000): () => (entry: KafkaLogEntry) => void {
  const last = new Map<string, { atMs: number; held: number; timer?: NodeJS.Timeout }>();
  return () => ({ namespace, level, log: entry }) => {
    if (level > 2) return; // ERROR (1) and WARN (2) only, whatever the client's logLevel lets through
    const { message, timestamp: _t, stack, error, ...fields } = entry;
    if (BY_DESIGN.has(message)) return;
    const component = `kafkajs.${namespace}`;
    const write = (text: string, out: Record<string, unknown>): void => {
      if (level === 1) log.error(text, out);
      else log.warn(text, out);
    };
    const key = [namespace, message, error instanceof Error ? error.message : typeof error === 'string' ? error : '', fields.broker, fields.topic, fields.partition].join(' ');
    const now = Date.now();
    const seen = last.get(key);
    if (seen && now - seen.atMs < quietMs) {
      seen.held++;
      seen.timer ??= setTimeout(() => {
        if (last.get(key) !== seen) return;
        last.delete(key);
        write(`kafka: ${message} (${seen.held} more times in ${quietMs / 1000} s)`, { component, heldBack: seen.held });
      }, seen.atMs + quietMs - now).unref();
      return;
    }
    if (seen?.timer) clearTimeout(seen.timer);
    if (last.size > 1000) last.clear();
    last.set(key, { atMs: now, held: 0 });
    const ours = error instanceof Error && !error.name.startsWith('KafkaJS');
    write(`kafka: ${message}`, {
      component, ...fields,
      ...(error instanceof Error ? { err: error } : error !== undefined ? { error } : {}),
      ...(ours && typeof stack === 'string' ? { stack } : {}),
      ...(seen?.held ? { heldBack: seen.held } : {}),
    });
  };
}
