/**
 * The Kafka and Redis connection options every service builds from its settings: TLS, SASL and AUTH
 * secrets come from files, and a missing or unreadable one is a configuration error that names it.
 * (A real redis-server with AUTH is in packages/pipeline/test/redis-auth.test.ts; the embedded Kafka
 * broker speaks neither TLS nor SASL, so the kafkajs options are checked here, as built.)
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ConfigError } from './errors.ts';
import { parseConfig } from './config.ts';
import { silentLogger } from './logger.ts';
import { MaxRetriesPerRequestError } from 'ioredis/built/errors/index.js';
import { KAFKA_SCHEMA, isConnectionLoss, kafkaClientConfig, kafkaLogCreator, parseBrokers, redactUrl, REDIS_SCHEMA, redisClientOptions, type KafkaSettings, type RedisSettings } from './connections.ts';

const dir = mkdtempSync(join(tmpdir(), 'ckpt-conn-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string, text: string): string => {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
};

/** A test-only self-signed certificate and its key (test-fixtures/README.md). */
const CERT = fileURLToPath(new URL('../test-fixtures/kafka-test-cert.pem', import.meta.url));
const KEY = fileURLToPath(new URL('../test-fixtures/kafka-test-key.pem', import.meta.url));

// The settings as a service gets them with nothing set (the schemas' defaults), plus a broker.
const kafka: KafkaSettings = { ...parseConfig(KAFKA_SCHEMA), kafkaBrokers: 'b1:9093' };
const redis: RedisSettings = parseConfig(REDIS_SCHEMA);

test('Kafka: plain, TLS with system CAs, mutual TLS from files, and SASL with the password from a file', () => {
  assert.deepEqual(kafkaClientConfig(kafka, ['b1:9093']), { clientId: 'ckpt', brokers: ['b1:9093'], ssl: false, sasl: undefined });
  assert.equal(kafkaClientConfig({ ...kafka, kafkaTls: true }, ['b1:9093']).ssl, true);
  const mtls = kafkaClientConfig({ ...kafka, kafkaTls: true, kafkaTlsCaFile: CERT, kafkaTlsCertFile: CERT, kafkaTlsKeyFile: KEY }, ['b1:9093']);
  const pem = (f: string): string => readFileSync(f, 'utf8').trim();
  assert.deepEqual(mtls.ssl, { ca: pem(CERT), cert: pem(CERT), key: pem(KEY) });
  const sasl = kafkaClientConfig({ ...kafka, kafkaSaslMechanism: 'scram-sha-512', kafkaSaslUsername: 'ckpt-harvester', kafkaSaslPasswordFile: file('sasl', 's3cret\n') }, ['b1:9093']);
  assert.deepEqual(sasl.sasl, { mechanism: 'scram-sha-512', username: 'ckpt-harvester', password: 's3cret' }, 'the trailing newline of the file is not part of the password');
});

test('Kafka: SASL without its user or password file, an unreadable secret, and no brokers are configuration errors', () => {
  assert.throws(() => kafkaClientConfig({ ...kafka, kafkaSaslMechanism: 'plain', kafkaSaslUsername: 'u' }, ['b1:9093']),
    (e: unknown) => e instanceof ConfigError && /SASL plain needs --kafka-sasl-username and --kafka-sasl-password-file/.test(e.message));
  assert.throws(() => kafkaClientConfig({ ...kafka, kafkaTls: true, kafkaTlsCaFile: join(dir, 'missing.pem') }, ['b1:9093']),
    (e: unknown) => e instanceof ConfigError && e.message.includes('cannot read the Kafka CA bundle from') && e.message.includes('missing.pem'));
  assert.throws(() => kafkaClientConfig(kafka, parseBrokers(' , ')), (e: unknown) => e instanceof ConfigError && /no Kafka brokers/.test(e.message));
  assert.deepEqual(parseBrokers(' a:1, b:2 ,'), ['a:1', 'b:2']);
  assert.throws(() => parseBrokers('[::1]:9092'), (e: unknown) => e instanceof ConfigError && /IPv6 address literal; use a host name/.test(e.message));
  // A malformed entry is a configuration error naming it, not a connection failure later.
  assert.throws(() => parseBrokers('SSL://broker:9093'), (e: unknown) => e instanceof ConfigError && /without a listener scheme/.test(e.message));
  for (const bad of ['host:notaport', 'host', 'h:0', 'h:70000', 'a:1,b']) {
    assert.throws(() => parseBrokers(bad), (e: unknown) => e instanceof ConfigError && /is not host:port/.test(e.message), bad);
  }
});

test('Kafka: half-set TLS or SASL, and TLS files that are not PEM, are configuration errors (they were ignored, or failed 20 s later as an unreachable broker)', () => {
  const refused = (over: Partial<KafkaSettings>, re: RegExp): void => {
    assert.throws(() => kafkaClientConfig({ ...kafka, ...over }, ['b1:9093']), (e: unknown) => e instanceof ConfigError && re.test(e.message), JSON.stringify(over));
  };
  refused({ kafkaTlsCaFile: CERT }, /--kafka-tls-ca-file set but --kafka-tls is off/);
  refused({ kafkaSaslUsername: 'u', kafkaSaslPasswordFile: file('sasl2', 'pw') }, /--kafka-sasl-username, --kafka-sasl-password-file set but --kafka-sasl-mechanism is none/);
  refused({ kafkaTls: true, kafkaTlsCertFile: CERT }, /mutual TLS needs both --kafka-tls-cert-file and --kafka-tls-key-file/);
  refused({ kafkaTls: true, kafkaTlsCaFile: file('junk-ca.pem', 'not a certificate') }, /the Kafka TLS files \(--kafka-tls-ca-file\) are unusable/);
  refused({ kafkaTls: true, kafkaTlsCertFile: file('junk-cert.pem', 'CERT PEM'), kafkaTlsKeyFile: KEY }, /are unusable/);
});

test('Redis: the password file overrides the URL\'s, TLS takes its CA from a file, other schemes are refused, logs never show a password', () => {
  assert.deepEqual(redisClientOptions(redis, 'redis://h:6379'), { url: 'redis://h:6379', options: {} });
  assert.deepEqual(redisClientOptions({ ...redis, redisPasswordFile: file('redis-pw', 'pw-1\n') }, 'redis://user:old@h:6379').options, { password: 'pw-1' });
  assert.deepEqual(redisClientOptions({ ...redis, redisTlsCaFile: file('redis-ca.pem', 'REDIS CA') }, 'rediss://h:6380').options, { tls: { ca: 'REDIS CA' } });
  assert.deepEqual(redisClientOptions({ ...redis, redisTlsCaFile: file('redis-ca2.pem', 'X') }, 'redis://h:6379').options, {}, 'no TLS options for a plain URL');
  assert.throws(() => redisClientOptions(redis, 'http://h:6379'), (e: unknown) => e instanceof ConfigError && /must start with redis:\/\/ or rediss:\/\//.test(e.message));
  assert.throws(() => redisClientOptions({ ...redis, redisPasswordFile: join(dir, 'nope') }, 'redis://h:6379'), (e: unknown) => e instanceof ConfigError && /cannot read the Redis password/.test(e.message));
  assert.equal(redactUrl('rediss://user:pw@h:6380/0'), 'rediss://***@h:6380/0');
});

test('kafkajs logs through our logger: warnings in our format, no stack traces, a repeated message held back and counted', async () => {
  const lines: { msg: string; fields?: Record<string, unknown> }[] = [];
  const push = (msg: string, fields?: Record<string, unknown>): void => void lines.push({ msg, fields });
  const log = { ...silentLogger, warn: push, error: push };
  const write = kafkaLogCreator(log, 50)();
  const refused = { namespace: 'Connection', level: 1, label: 'ERROR', log: { message: 'Connection error: connect ECONNREFUSED', timestamp: 't', stack: 'Error: at ...', broker: 'b:1' } };
  for (let i = 0; i < 5; i++) write(refused);
  write({ namespace: 'Consumer', level: 4, label: 'INFO', log: { message: 'Starting' } });
  assert.equal(lines.length, 1, JSON.stringify(lines));
  assert.equal(lines[0]!.msg, 'kafka: Connection error: connect ECONNREFUSED');
  assert.deepEqual(lines[0]!.fields, { component: 'kafkajs.Connection', broker: 'b:1' });
  // The same message from another partition is its own line; an error of ours keeps message and stack.
  write({ namespace: 'ConsumerGroup', level: 1, label: 'ERROR', log: { message: 'Offset out of range', topic: 't', partition: 1 } });
  write({ namespace: 'ConsumerGroup', level: 1, label: 'ERROR', log: { message: 'Offset out of range', topic: 't', partition: 2 } });
  assert.equal(lines.length, 3);
  const ours = new Error('stage failed');
  write({ namespace: 'Runner', level: 1, label: 'ERROR', log: { message: 'Error when calling eachBatch', error: ours, stack: ours.stack } });
  assert.equal(lines[3]!.fields?.err, ours);
  assert.match(String(lines[3]!.fields?.stack), /stage failed/);
  lines.length = 1;
  const until = Date.now() + 60;
  while (Date.now() < until) { /* let the quiet period pass */ }
  write(refused);
  assert.equal(lines.length, 2);
  assert.equal(lines[1]!.fields?.heldBack, 4);
  // A burst and then silence: the count follows at the end of the quiet period.
  lines.length = 0;
  const burst = { namespace: 'BrokerPool', level: 2, label: 'WARN', log: { message: 'Failed to connect to seed broker' } };
  for (let i = 0; i < 3; i++) write(burst);
  await new Promise((r) => setTimeout(r, 120));
  assert.deepEqual(lines.map((l) => [l.msg, l.fields?.heldBack]), [['kafka: Failed to connect to seed broker', undefined], ['kafka: Failed to connect to seed broker (2 more times in 0.05 s)', 2]]);
});

test('isConnectionLoss: a server gone away or silent (errno codes, ioredis\'s words, a Redis loading its AOF), and nothing else', () => {
  const withCode = (code: string): Error => Object.assign(new Error('socket trouble'), { code });
  for (const e of [withCode('ECONNRESET'), withCode('ECONNREFUSED'), withCode('EPIPE'), new Error('Connection is closed.'), new Error('Command timed out'),
    new Error('Command aborted due to connection close'), new Error('LOADING Redis is loading the dataset in memory'), new Error("Stream isn't writeable and enableOfflineQueue options is false"),
    new MaxRetriesPerRequestError(3) as unknown as Error]) {
    assert.equal(isConnectionLoss(e), true, e.message);
  }
  for (const e of [new Error('ERR unknown command'), withCode('ENOENT'), new TypeError('x is not a function'), 'ECONNRESET', null]) {
    assert.equal(isConnectionLoss(e), false, String(e));
  }
});
