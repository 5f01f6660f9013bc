/**
 * The harvester and replicator as services (their main.ts, configured by environment variables, in
 * their own processes): the standby fills up, is consistent, and SIGTERM stops both cleanly.
 * Also: bad configuration is refused with exit code 2 and every problem named.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { Kafka, logLevel, type KafkaMessage } from 'kafkajs';
import { freePort, KafkaApi, KafkaErr } from '@ckpt/embedded';
import { StandbyStore } from '@ckpt/standby';
import { serversWithEmbeddedBroker } from './embedded-broker.ts';
import { pollMeta } from './poll-meta.ts';
import { FakeHarvester } from '../../../services/replicator/test/fake-harvester.ts';
import { spawnHarvester, spawnReplicator, startServers, stopChild } from '../src/index.ts';

const HARVESTER_MAIN = fileURLToPath(new URL('../../../services/harvester/src/main.ts', import.meta.url));
const REPLICATOR_MAIN = fileURLToPath(new URL('../../../services/replicator/src/main.ts', import.meta.url));

test('harvester and replicator services: the standby of a running guest is a consistent committed epoch', async () => {
  const servers = await startServers({ partitions: 2 });
  const metricsPort = await freePort();
  const replicator = spawnReplicator(servers, { REPLICATOR_METRICS_PORT: String(metricsPort) });
  const harvester = spawn(process.execPath, ['--import', 'tsx', HARVESTER_MAIN], {
    env: {
      ...process.env, HARVESTER_SOURCE: 'sim', HARVESTER_MEM_MIB: '32', HARVESTER_VCPUS: '1', HARVESTER_RATE: '2000', HARVESTER_INTERVAL_MS: '50',
      HARVESTER_METRICS_PORT: '0', HARVESTER_VM_ID: 'svc-vm', HARVESTER_KAFKA_BROKERS: servers.brokers.join(','), HARVESTER_KAFKA_IDEMPOTENT: 'false',
      HARVESTER_WINDOW_BYTES: String(3 << 20),
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  let started = '';
  harvester.stderr.on('data', (d: Buffer) => {
    log = (log + d.toString()).slice(-5000);
    started ||= /^.*"msg":"started".*\n/m.exec(log)?.[0] ?? ''; // a whole line (a chunk may end mid-line)
  });
  const redis = new Redis(servers.redisUrl);
  try {
    const store = new StandbyStore(redis, servers.redisPrefix);
    const meta = await pollMeta(store, 'svc-vm', (m) => m !== null && m.epoch >= 5, 30_000);
    assert.ok(meta && meta.epoch >= 5, `the standby reached epoch ${meta?.epoch} in 30 s; harvester log: ${log}`);
    assert.equal(meta.state, 'ok');
    // Record batches carry the native CRC-32C (kafkajs's own is several times slower).
    assert.match(started, /"kafkaCrc32c":"native"/);
    // And go through the chunked encoder (kafkajs's own copies each record about nine times).
    assert.match(started, /"kafkaEncoder":"chunked"/);
    // The image the replicator built hashes to the digest the harvester committed.
    const g = meta.generation;
    const recomputed = await store.computeImageDigest('svc-vm', g, meta.slots, meta.pageSize);
    const again = await store.readMeta('svc-vm');
    if (again?.generation === g && again.epoch === meta.epoch) assert.equal(recomputed.toHex(), meta.digest);
    // What an operator sees: the live RPO per VM, the applied epoch, the Kafka lag, and readiness.
    const base = `http://127.0.0.1:${metricsPort}`;
    assert.equal((await fetch(`${base}/readyz`)).status, 200);
    const text = await (await fetch(`${base}/metrics`)).text();
    const age = /^ckpt_replicator_standby_age_seconds\{vm="svc-vm"\} (\S+)$/m.exec(text);
    assert.ok(age && Number(age[1]) >= 0 && Number(age[1]) < 30, `standby age of svc-vm: ${age?.[1]}`);
    const last = /^ckpt_replicator_last_applied_epoch\{vm="svc-vm"\} (\d+)$/m.exec(text);
    assert.ok(last && Number(last[1]) >= 5, `last applied epoch ${last?.[1]}`);
    assert.match(text, /^ckpt_replicator_consumer_lag_records\{partition="\d"\} \d+$/m);
  } finally {
    const exited = new Promise<number | null>((r) => harvester.once('exit', (code) => r(code)));
    harvester.kill('SIGTERM');
    assert.equal(await exited, 0, `harvester exit code; log: ${log}`);
    await stopChild(replicator);
    redis.disconnect();
    await servers.stop();
  }
});

/** Servers, a live replicator, a producer to the pages topic and a reader of the dead-letter topic. */
async function deadLetterRig(partitions: number, name: string) {
  const servers = await startServers({ partitions });
  const replicator = spawnReplicator(servers);
  let log = '';
  replicator.stderr?.on('data', (d: Buffer) => { log = (log + d.toString()).slice(-5000); });
  const kafka = new Kafka({ clientId: name, brokers: servers.brokers, logLevel: logLevel.NOTHING });
  const producer = kafka.producer({ idempotent: false, allowAutoTopicCreation: false });
  const consumer = kafka.consumer({ groupId: `${name}-reader-${process.pid}`, maxWaitTimeInMs: 50 });
  const dead: KafkaMessage[] = [];
  await consumer.connect();
  await consumer.subscribe({ topic: servers.topics.deadLetter, fromBeginning: true });
  await consumer.run({ eachMessage: ({ message }) => { dead.push(message); return Promise.resolve(); } });
  await producer.connect();
  return {
    servers, replicator, producer, dead, log: () => log,
    close: async (): Promise<void> => {
      await consumer.disconnect().catch(() => undefined);
      await producer.disconnect().catch(() => undefined);
      await stopChild(replicator);
      await servers.stop();
    },
  };
}

test('a live replicator parks bad records on the dead-letter topic, with why and where, and keeps applying', async () => {
  const { servers, replicator, producer, dead, log, close } = await deadLetterRig(1, 'dead-letter-test');
  const redis = new Redis(servers.redisUrl);
  try {
    const garbage = Buffer.from('not a protobuf record at all');
    const h = new FakeHarvester('dl-vm', 7);
    const epoch = h.epochRecords(new Map([[1, 1], [2, 2]]));
    const foreign = new FakeHarvester('other-vm', 7).epochRecords(new Map([[3, 3]]))[0]!;
    await producer.send({
      topic: servers.topics.pages, acks: -1,
      messages: [
        { key: 'dl-vm', value: garbage },
        { key: 'dl-vm', value: foreign }, // a record of VM other-vm under the key dl-vm
        ...epoch.map((value) => ({ key: 'dl-vm', value })),
      ],
    });
    const store = new StandbyStore(redis, servers.redisPrefix);
    const meta = await pollMeta(store, 'dl-vm', (m) => m !== null && dead.length >= 2, 60_000);
    const reasons = dead.map((m) => m.headers?.reason?.toString());
    assert.deepEqual(reasons, ['malformed', 'key-mismatch'], `dead letters: ${JSON.stringify(reasons)}; replicator log: ${log()}`);
    assert.deepEqual(dead[0]!.value, garbage, 'the parked record is the original bytes');
    assert.deepEqual(dead[1]!.value, foreign);
    assert.equal(dead[0]!.key?.toString(), 'dl-vm');
    assert.equal(dead[0]!.headers?.['source-topic']?.toString(), servers.topics.pages);
    assert.equal(dead[0]!.headers?.['source-offset']?.toString(), '0');
    assert.equal(dead[1]!.headers?.['source-offset']?.toString(), '1');
    assert.match(dead[1]!.headers?.detail?.toString() ?? '', /record of VM other-vm arrived with key dl-vm/);
    // The records after them still apply: the baseline of dl-vm is the image.
    assert.ok(meta, `no standby for dl-vm; replicator log: ${log()}`);
    assert.equal(meta.state, 'ok');
    assert.equal(meta.generation, 7);
    assert.equal(meta.digest, h.model.digest().toHex());
    assert.equal(replicator.exitCode, null, 'the replicator is still running');
  } finally {
    redis.disconnect();
    await close();
  }
});

test('a replicator that takes over reports the standby of a VM that publishes nothing any more, until that standby is deleted', async () => {
  // A harvester that died with its host sends no more records; its standby is what a failover uses,
  // and its age (the RPO) must stay visible when another replicator takes the partition over.
  const servers = await startServers({ partitions: 2 });
  let log = '';
  const onLog = (line: string): void => { log = (log + line + '\n').slice(-6000); };
  const first = spawnReplicator(servers, {}, onLog);
  const kafka = new Kafka({ clientId: 'quiet-vm-test', brokers: servers.brokers, logLevel: logLevel.NOTHING });
  const producer = kafka.producer({ idempotent: false, allowAutoTopicCreation: false });
  const redis = new Redis(servers.redisUrl);
  let second: ReturnType<typeof spawnReplicator> | null = null;
  try {
    await producer.connect();
    const h = new FakeHarvester('quiet-vm', 11);
    const records = [...h.epochRecords(new Map([[1, 1]])), ...h.epochRecords(new Map([[2, 2]]))];
    await producer.send({ topic: servers.topics.pages, acks: -1, messages: records.map((value) => ({ key: 'quiet-vm', value })) });
    const store = new StandbyStore(redis, servers.redisPrefix);
    const meta = await pollMeta(store, 'quiet-vm', (m) => m !== null && m.epoch >= 1, 60_000);
    assert.equal(meta?.epoch, 1, `the first replicator did not apply epoch 1; log: ${log}`);
    assert.deepEqual(await store.listVms(), ['quiet-vm']);
    await new Promise((r) => setTimeout(r, 500)); // its offsets are committed
    await stopChild(first);
    const metricsPort = await freePort();
    second = spawnReplicator(servers, { REPLICATOR_METRICS_PORT: String(metricsPort), REPLICATOR_DELETED_CHECK_MS: '300', REPLICATOR_SCRUB_INTERVAL_MS: '300' }, onLog);
    let text = '';
    for (const deadline = Date.now() + 45_000; Date.now() < deadline && !/standby_age_seconds\{vm="quiet-vm"\}/.test(text);) {
      await new Promise((r) => setTimeout(r, 200));
      text = await fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.text(), () => '');
    }
    const age = /^ckpt_replicator_standby_age_seconds\{vm="quiet-vm"\} (\S+)$/m.exec(text);
    assert.ok(age && Number(age[1]) >= 0.5, `the new owner reports no standby age for quiet-vm; log: ${log}`);
    assert.match(text, /^ckpt_replicator_last_applied_epoch\{vm="quiet-vm"\} 1$/m);
    assert.match(text, /^ckpt_replicator_vm_stale\{vm="quiet-vm"\} 0$/m);
    // From Redis, not from records delivered again: the new owner consumed none.
    assert.doesNotMatch(text, /^ckpt_replicator_records_total\{kind="\w+"\} [1-9]/m);

    // A page key lost (evicted, deleted by hand) under the image of a VM whose harvester is gone: only
    // the scrub finds it before a failover would (the image said ok and fresh until the restore refused it).
    assert.equal(await redis.del(store.keys('quiet-vm').page(11, 0, 2)), 1);
    let scrubbed = await store.readMeta('quiet-vm');
    for (const deadline = Date.now() + 15_000; Date.now() < deadline && scrubbed?.state !== 'stale'; scrubbed = await store.readMeta('quiet-vm')) await new Promise((r) => setTimeout(r, 200));
    assert.match(log, /pages of a standby image are missing from Redis/);
    text = await fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.text(), () => '');
    assert.ok(Number(/^ckpt_replicator_scrub_pages_total (\S+)$/m.exec(text)?.[1]) >= 2, 'the scrub counts the pages it checks');
    assert.ok(Number(/^ckpt_replicator_scrub_last_pass_timestamp_seconds (\S+)$/m.exec(text)?.[1]) > Date.now() / 1000 - 60, 'and its passes');
    assert.equal(scrubbed?.state, 'stale', `the scrub marked it stale; log: ${log}`);
    assert.match(scrubbed?.staleReason ?? '', /^pages-lost: 1 page\(s\) of the image are missing from Redis \(evicted or deleted\), e\.g\. 0:2$/);

    // Redis loses the image (restarted without persistence, flushed): no tombstone of standby forget,
    // so the VM stays reported, stale, its age growing. It was dropped as if forgotten, which resolved
    // the RPO alert of a guest that had nothing left to fail over to.
    for (const key of await redis.keys(`${servers.redisPrefix}:{quiet-vm}:*`)) await redis.del(key);
    for (const deadline = Date.now() + 15_000; Date.now() < deadline && !/vanished from Redis/.test(log);) await new Promise((r) => setTimeout(r, 200));
    await new Promise((r) => setTimeout(r, 1000)); // three more checks
    text = await fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.text(), () => '');
    assert.match(log, /the standby image of this VM vanished from Redis, and nobody forgot it/);
    assert.match(text, /^ckpt_replicator_vm_stale\{vm="quiet-vm"\} 1$/m, `still reported, stale; log: ${log}`);
    assert.match(text, /^ckpt_replicator_gaps_total\{reason="image-lost"\} 1$/m);
    assert.ok(Number(/^ckpt_replicator_standby_age_seconds\{vm="quiet-vm"\} (\S+)$/m.exec(text)?.[1]) >= Number(age[1]), 'its age keeps growing');

    // The VM is retired (`npm run standby -- forget`): its series go, or the RPO alert would fire for ever.
    await store.deleteVm('quiet-vm');
    for (const deadline = Date.now() + 15_000; Date.now() < deadline && /vm="quiet-vm"/.test(text);) {
      await new Promise((r) => setTimeout(r, 200));
      text = await fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.text(), () => text);
    }
    assert.doesNotMatch(text, /vm="quiet-vm"/, `the replicator still reports the deleted VM; log: ${log}`);
    assert.match(log, /this VM has no standby image \(standby forget deleted it\): no longer reporting it/);
  } finally {
    await producer.disconnect().catch(() => undefined);
    await stopChild(first);
    if (second) await stopChild(second);
    redis.disconnect();
    await servers.stop();
  }
});

test('records under VM ids that never get an image (a harvester renamed at each restart, junk) do not leave series and cached state behind for good; a real VM\'s stay', async () => {
  const servers = await startServers({ partitions: 1 });
  const metricsPort = await freePort();
  let log = '';
  // Seen as they arrive: the log tail kept for messages is too short to still hold junk-39's baseline
  // request once forty "no longer reporting" lines have followed it.
  const baselineAsked = new Set<string>();
  const droppedVms = new Set<string>();
  const replicator = spawnReplicator(servers, { REPLICATOR_METRICS_PORT: String(metricsPort), REPLICATOR_DELETED_CHECK_MS: '500' }, (line) => {
    log = (log + line + '\n').slice(-6000);
    const vm = /"vm":"([^"]+)"/.exec(line)?.[1];
    if (vm && line.includes('"msg":"requesting a baseline"')) baselineAsked.add(vm);
    if (vm && line.includes('"msg":"this VM has no standby image (never made here): no longer reporting it"')) droppedVms.add(vm);
  });
  const producer = new Kafka({ clientId: 'junk-ids-test', brokers: servers.brokers, logLevel: logLevel.NOTHING }).producer({ idempotent: false, allowAutoTopicCreation: false });
  try {
    await producer.connect();
    const real = new FakeHarvester('real-vm', 7);
    const messages = real.epochRecords(new Map([[1, 1]])).map((value) => ({ key: 'real-vm', value }));
    // 40 VMs whose first records are a delta: no image, a gap, a stale mark, a resync request.
    for (let i = 0; i < 40; i++) {
      const junk = new FakeHarvester(`junk-${i}`, 5);
      junk.epochRecords(new Map([[1, 1]])); // the baseline no replicator sees
      for (const value of junk.epochRecords(new Map([[2, 2]]))) messages.push({ key: `junk-${i}`, value });
    }
    await producer.send({ topic: servers.topics.pages, acks: -1, messages });
    const metrics = (): Promise<string> => fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.text(), () => '');
    let text = '';
    const commits = (): number => Number(/^ckpt_replicator_records_total\{kind="commit"\} (\d+)$/m.exec(text)?.[1] ?? 0);
    for (const deadline = Date.now() + 45_000; Date.now() < deadline && commits() < 41;) {
      await new Promise((r) => setTimeout(r, 200));
      text = await metrics();
    }
    assert.equal(commits(), 41, `every record was handled; log: ${log}`);
    assert.ok(baselineAsked.has('junk-39'), `the junk VMs were gaps; log: ${log}`);
    for (const deadline = Date.now() + 15_000; Date.now() < deadline && /vm="junk-/.test(text);) {
      await new Promise((r) => setTimeout(r, 200));
      text = await metrics();
    }
    assert.doesNotMatch(text, /vm="junk-/, 'the series of VMs without an image go');
    assert.ok(droppedVms.has('junk-39'), `the replicator says it stops reporting a VM without an image; log: ${log}`);
    assert.ok(!droppedVms.has('real-vm'), 'the real VM is not dropped');
    assert.match(text, /^ckpt_replicator_last_applied_epoch\{vm="real-vm"\} 0$/m, 'the real VM is still reported');
    assert.match(text, /^ckpt_replicator_standby_age_seconds\{vm="real-vm"\} /m);
  } finally {
    await producer.disconnect().catch(() => undefined);
    await stopChild(replicator);
    await servers.stop();
  }
});

test('a replicator whose consumer kafkajs gives up on joins the group again in-process, and gives up itself only when crashes keep coming', async (t) => {
  const servers = await serversWithEmbeddedBroker(t, ' to inject errors');
  if (!servers) return;
  // INVALID_REQUEST to a SyncGroup is what the embedded broker sends a follower that syncs late; kafkajs
  // deems it final and stops the consumer (CRASH with restart: false).
  await servers.kafka.pushRequestErrors(KafkaApi.SyncGroup, [KafkaErr.InvalidRequest, KafkaErr.InvalidRequest]);
  const metricsPort = await freePort();
  let log = '';
  let rejoins = 0;
  let gaveUp = '';
  const replicator = spawnReplicator(servers, { REPLICATOR_METRICS_PORT: String(metricsPort) }, (line) => {
    log = (log + line + '\n').slice(-8000);
    if (line.includes('consumer crashed; joining the group again')) rejoins++;
    if (line.includes('giving up')) gaveUp = line;
  });
  const kafka = new Kafka({ clientId: 'rejoin-test', brokers: servers.brokers, logLevel: logLevel.NOTHING });
  const producer = kafka.producer({ idempotent: false, allowAutoTopicCreation: false });
  const redis = new Redis(servers.redisUrl);
  try {
    await producer.connect();
    const h = new FakeHarvester('rejoin-vm', 9);
    const records = [...h.epochRecords(new Map([[1, 1], [2, 2]])), ...h.epochRecords(new Map([[2, 3], [5, 4]]))];
    await producer.send({ topic: servers.topics.pages, acks: -1, messages: records.map((value) => ({ key: 'rejoin-vm', value })) });
    const store = new StandbyStore(redis, servers.redisPrefix);
    const meta = await pollMeta(store, 'rejoin-vm', (m) => (m !== null && m.epoch >= 1) || replicator.exitCode !== null, 60_000);
    assert.equal(replicator.exitCode, null, `the replicator exited; log: ${log}`);
    assert.ok(meta && meta.epoch === 1 && meta.state === 'ok', `standby ${JSON.stringify(meta)}; log: ${log}`);
    assert.equal(meta.digest, h.model.digest().toHex());
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    assert.match(text, /^ckpt_replicator_consumer_restarts_total 2$/m, `two crashes, two in-process restarts; log: ${log}`);
    assert.equal(rejoins, 2, log);

    // Crashes that keep coming end the process (non-zero), so its supervisor starts a fresh one: a
    // heartbeat answered REBALANCE_IN_PROGRESS makes it join and sync again, into refusals in a row.
    await servers.kafka.pushRequestErrors(KafkaApi.SyncGroup, Array<number>(12).fill(KafkaErr.InvalidRequest));
    await servers.kafka.pushRequestErrors(KafkaApi.Heartbeat, [KafkaErr.RebalanceInProgress]);
    const exited = await new Promise<number | null>((resolve) => {
      const timer = setTimeout(() => resolve(null), 90_000);
      replicator.once('exit', (code) => { clearTimeout(timer); resolve(code); });
    });
    assert.ok(exited !== null && exited !== 0, `exit code ${exited}; log: ${log}`);
    assert.match(gaveUp, /crashed 6 times in a minute; giving up/, log);
  } finally {
    await producer.disconnect().catch(() => undefined);
    await stopChild(replicator);
    redis.disconnect();
    await servers.stop();
  }
});

test('the services refuse bad configuration with exit code 2 and name every problem', () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', REPLICATOR_MAIN, '--max-record-bytes', '12', '--kafka-sasl-mechanism', 'kerberos'], { encoding: 'utf8', env: { ...process.env, REPLICATOR_KAFKA_BROKERS: '', REPLICATOR_REDIS_URL: '' } });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /--max-record-bytes: 12 is below the minimum/);
  assert.match(r.stderr, /"kerberos" is not one of none, plain/);
  const h = spawnSync(process.execPath, ['--import', 'tsx', HARVESTER_MAIN], { encoding: 'utf8', env: { ...process.env, HARVESTER_VM_ID: 'bad id!', HARVESTER_SOURCE: 'sim' } });
  assert.equal(h.status, 2, h.stderr);
  assert.match(h.stderr, /HARVESTER_VM_ID/);
});

/** Runs a service until it exits on its own (killed after 30 s: one that should have refused to start keeps running). */
async function runService(main: string, env: Record<string, string>): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', main], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  clearTimeout(timer);
  return { code, stderr };
}

test('an idempotent producer the broker gives no producer id: both services say so and how to turn it off, not that Kafka is unreachable (exit 1)', async () => {
  const servers = await startServers({ partitions: 1 });
  try {
    // The embedded broker cannot give producer ids; the idempotent producer is the services' default.
    const h = await runService(HARVESTER_MAIN, {
      HARVESTER_SOURCE: 'sim', HARVESTER_MEM_MIB: '32', HARVESTER_METRICS_PORT: '-1', HARVESTER_VM_ID: 'idem-vm', HARVESTER_KAFKA_BROKERS: servers.brokers.join(','),
      HARVESTER_PAGES_TOPIC: servers.topics.pages, HARVESTER_CONTROL_TOPIC: servers.topics.control,
    });
    assert.equal(h.code, 1, h.stderr);
    assert.match(h.stderr, /"code":"CKPT_ERR_KAFKA_IDEMPOTENT"/);
    assert.match(h.stderr, /the Kafka brokers answer but gave the idempotent producer no producer id \(.+\): .* or turn it off with HARVESTER_KAFKA_IDEMPOTENT=false \(--no-kafka-idempotent\)/);
    assert.doesNotMatch(h.stderr, /cannot connect to Kafka/);
    const r = await runService(REPLICATOR_MAIN, {
      REPLICATOR_KAFKA_BROKERS: servers.brokers.join(','), REPLICATOR_REDIS_URL: servers.redisUrl, REPLICATOR_METRICS_PORT: '-1',
      REPLICATOR_PAGES_TOPIC: servers.topics.pages, REPLICATOR_CONTROL_TOPIC: servers.topics.control, REPLICATOR_DEAD_LETTER_TOPIC: servers.topics.deadLetter,
    });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /replicator: the Kafka brokers answer but gave the idempotent producer no producer id .* REPLICATOR_KAFKA_IDEMPOTENT=false \(--no-kafka-idempotent\)/);
  } finally {
    await servers.stop();
  }
});

test('a topic the brokers do not have, or may not be used: both services name it and its setting (exit 1), before the harvester reports started', async (t) => {
  const servers = await serversWithEmbeddedBroker(t, ' to make a topic answer as missing');
  if (!servers) return;
  const harvester = (): Promise<{ code: number | null; stderr: string }> => runService(HARVESTER_MAIN, {
    HARVESTER_SOURCE: 'sim', HARVESTER_MEM_MIB: '16', HARVESTER_METRICS_PORT: '-1', HARVESTER_VM_ID: 'topic-vm', HARVESTER_KAFKA_BROKERS: servers.brokers.join(','),
    HARVESTER_KAFKA_IDEMPOTENT: 'false', HARVESTER_PAGES_TOPIC: servers.topics.pages, HARVESTER_CONTROL_TOPIC: servers.topics.control,
  });
  const replicator = (): Promise<{ code: number | null; stderr: string }> => runService(REPLICATOR_MAIN, {
    REPLICATOR_KAFKA_BROKERS: servers.brokers.join(','), REPLICATOR_REDIS_URL: servers.redisUrl, REPLICATOR_METRICS_PORT: '-1', REPLICATOR_KAFKA_IDEMPOTENT: 'false',
    REPLICATOR_PAGES_TOPIC: servers.topics.pages, REPLICATOR_CONTROL_TOPIC: servers.topics.control, REPLICATOR_DEAD_LETTER_TOPIC: servers.topics.deadLetter,
  });
  try {
    // The embedded broker creates any topic a client asks about; a metadata error is how it says "missing".
    await servers.kafka.setTopicError(servers.topics.pages, KafkaErr.UnknownTopicOrPartition);
    const h = await harvester();
    assert.equal(h.code, 1, h.stderr);
    assert.match(h.stderr, /"code":"CKPT_ERR_KAFKA_TOPIC_MISSING"/);
    assert.ok(h.stderr.includes(`the Kafka topic ${servers.topics.pages} (HARVESTER_PAGES_TOPIC (--pages-topic)) does not exist`), h.stderr);
    assert.doesNotMatch(h.stderr, /"msg":"started"|cannot connect to Kafka/);
    const r = await replicator();
    assert.equal(r.code, 1, r.stderr);
    assert.ok(r.stderr.includes(`replicator: the Kafka topic ${servers.topics.pages} (REPLICATOR_PAGES_TOPIC (--pages-topic)) does not exist`), r.stderr);
    await servers.kafka.setTopicError(servers.topics.pages, 0);
    // One the user may not use: the control topic for the harvester, the dead-letter topic for the replicator.
    await servers.kafka.setTopicError(servers.topics.control, KafkaErr.TopicAuthorizationFailed);
    const h2 = await harvester();
    assert.equal(h2.code, 1, h2.stderr);
    assert.match(h2.stderr, /"code":"CKPT_ERR_KAFKA_TOPIC_DENIED"/);
    assert.ok(h2.stderr.includes(`this Kafka user may not use the topic ${servers.topics.control} (HARVESTER_CONTROL_TOPIC (--control-topic))`), h2.stderr);
    await servers.kafka.setTopicError(servers.topics.control, 0);
    await servers.kafka.setTopicError(servers.topics.deadLetter, KafkaErr.UnknownTopicOrPartition);
    const r2 = await replicator();
    assert.equal(r2.code, 1, r2.stderr);
    assert.ok(r2.stderr.includes(`the Kafka topic ${servers.topics.deadLetter} (REPLICATOR_DEAD_LETTER_TOPIC (--dead-letter-topic)) does not exist`), r2.stderr);
  } finally {
    await servers.stop();
  }
});

test('a Redis that may evict pages is refused at start (CKPT_ERR_REDIS_EVICTION, exit 1); one without AOF is reported and shown in a gauge', async (t) => {
  const servers = await startServers({ partitions: 1 });
  if (!servers.redis) {
    t.skip('REDIS_URL points at a Redis of the user\'s: this test changes its eviction and AOF settings');
    await servers.stop();
    return;
  }
  const redis = new Redis(servers.redisUrl);
  try {
    await redis.config('SET', 'maxmemory-policy', 'allkeys-lru');
    await redis.config('SET', 'maxmemory', String(1 << 30));
    let log = '';
    const refused = spawnReplicator(servers, {}, (line) => { log += line + '\n'; });
    const code = await new Promise<number | null>((resolve) => {
      const timer = setTimeout(() => refused.kill('SIGKILL'), 30_000);
      refused.once('exit', (c) => { clearTimeout(timer); resolve(c); });
    });
    assert.equal(code, 1, log);
    assert.match(log, /replicator: Redis may evict standby pages \(maxmemory-policy allkeys-lru, maxmemory 1073741824 bytes\): .*Set maxmemory-policy noeviction.* \[CKPT_ERR_REDIS_EVICTION\]/);
    assert.doesNotMatch(log, /"msg":"replicating"/);

    await redis.config('SET', 'maxmemory-policy', 'noeviction');
    await redis.config('SET', 'appendonly', 'no');
    const metricsPort = await freePort();
    let log2 = '';
    const rep = spawnReplicator(servers, { REPLICATOR_METRICS_PORT: String(metricsPort) }, (line) => { log2 += line + '\n'; });
    try {
      let text = '';
      for (const deadline = Date.now() + 20_000; Date.now() < deadline && !/"msg":"replicating"/.test(log2);) await new Promise((r) => setTimeout(r, 100));
      text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      assert.match(text, /^ckpt_replicator_redis_aof_enabled 0$/m, log2);
      assert.match(text, /^ckpt_replicator_redis_evicts_pages 0$/m);
      assert.match(log2, /"level":"warn".*Redis writes no append-only file \(appendonly no\)/);
    } finally {
      await stopChild(rep);
    }
  } finally {
    await redis.config('SET', 'appendonly', 'yes').catch(() => undefined);
    redis.disconnect();
    await servers.stop();
  }
});

test('dead letters from partitions consumed at once each carry their own record, key and source offset', async () => {
  // Two partitions handled concurrently, each with the first records of many VMs: a batch without its
  // begin is parked only after its VM's state is read from Redis, so the partitions interleave there.
  // The record being handled was one field for all partitions: a dead letter could carry another VM's
  // record, or none at all.
  const { servers, producer, dead, log, close } = await deadLetterRig(2, 'dead-letter-concurrent-test');
  const N = 40;
  const sent = new Map<string, Buffer>();
  try {
    const messages = [0, 1].flatMap((p) => Array.from({ length: N }, (_, i) => {
      const vm = `vm-p${p}-${i}`;
      const batch = new FakeHarvester(vm, 7).epochRecords(new Map([[1, 1]]))[1]!; // a batch without its begin
      sent.set(`${p}@${i}`, batch);
      return { key: vm, partition: p, value: batch };
    }));
    await producer.send({ topic: servers.topics.pages, acks: -1, messages });
    const deadline = Date.now() + 60_000;
    while (dead.length < 2 * N && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.equal(dead.length, 2 * N, `dead letters: ${dead.length}; replicator log: ${log()}`);
    for (const m of dead) {
      const where = `${m.headers?.['source-partition']?.toString()}@${m.headers?.['source-offset']?.toString()}`;
      assert.equal(m.headers?.reason?.toString(), 'unknown-epoch', where);
      const want = sent.get(where);
      assert.ok(want, `a dead letter names source ${where}, which was not sent (key ${m.key?.toString()})`);
      assert.ok(m.value && Buffer.compare(m.value, want) === 0, `the record at ${where} (key ${m.key?.toString()})`);
      assert.equal(m.key?.toString(), `vm-p${where.replace('@', '-')}`, `key of ${where}`);
    }
  } finally {
    await close();
  }
});

test('SIGTERM ends a harvester promptly while it waits for a replicator that is away (it waited up to 60 s, past the pod\'s 30 s grace)', async () => {
  const servers = await startServers({ partitions: 1 });
  let log = '';
  let waiting = false;
  // No replicator: the 64 MiB baseline fills the 1 MiB window and the harvester waits for markers.
  const harvester = spawnHarvester(servers, {
    HARVESTER_VM_ID: 'term-vm', HARVESTER_SOURCE: 'sim', HARVESTER_MEM_MIB: '64', HARVESTER_WORKLOAD: 'random', HARVESTER_RATE: '2000',
    HARVESTER_WINDOW_BYTES: String(1 << 20), LOG_LEVEL: 'debug',
  }, (line) => {
    log = (log + line + '\n').slice(-8000);
    // Noted as it arrives: debug lines that follow could push it out of the kept tail between polls.
    if (line.includes('waiting for the replicator')) waiting = true;
  });
  try {
    const deadline = Date.now() + 30_000;
    while (!waiting && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.ok(waiting, `the window is full; log: ${log.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 500));
    const t0 = Date.now();
    const exited = new Promise<number | null>((r) => harvester.once('exit', (code) => r(code)));
    harvester.kill('SIGTERM');
    const code = await exited;
    const ms = Date.now() - t0;
    assert.ok(ms < 8000, `exited ${ms} ms after SIGTERM; log: ${log.slice(-2000)}`);
    assert.equal(code, 0, `a stop is not a failure; log: ${log.slice(-2000)}`);
    assert.match(log, /"msg":"stopped"|stopped/);
  } finally {
    if (harvester.exitCode === null) harvester.kill('SIGKILL');
    await servers.stop();
  }
});

test('SIGTERM ends a harvester that lived through a broker outage (a consumer restart kafkajs had scheduled kept it alive for good)', async (t) => {
  const servers = await serversWithEmbeddedBroker(t, ' to take it down');
  if (!servers) return;
  let log = '';
  const harvester = spawnHarvester(servers, { HARVESTER_VM_ID: 'outage-vm', HARVESTER_SOURCE: 'sim', HARVESTER_MEM_MIB: '16', HARVESTER_WINDOW_BYTES: '0' },
    (line) => { log = (log + line + '\n').slice(-6000); });
  try {
    await new Promise((r) => setTimeout(r, 7000)); // past the group join (the broker delays it 3 s)
    await servers.kafka.brokerDown(-1);
    await new Promise((r) => setTimeout(r, 4000));
    await servers.kafka.brokerUp(-1);
    await new Promise((r) => setTimeout(r, 8000));
    assert.equal(harvester.exitCode, null, `the harvester survived the outage; log: ${log}`);
    const t0 = Date.now();
    const exited = new Promise<number | null>((r) => harvester.once('exit', (code) => r(code)));
    harvester.kill('SIGTERM');
    const code = await Promise.race([exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 15_000))]);
    assert.notEqual(code, 'hung', `still running 15 s after SIGTERM; log: ${log.slice(-2000)}`);
    assert.equal(code, 0, log.slice(-2000));
    assert.ok(Date.now() - t0 < 10_000, `exited ${Date.now() - t0} ms after SIGTERM`);
  } finally {
    if (harvester.exitCode === null) harvester.kill('SIGKILL');
    await servers.stop();
  }
});

test('a broker outage shows at once in the harvester: /readyz 503 within seconds, produce errors counted, the generation ended after HARVESTER_PUBLISH_TIMEOUT_MS (kafkajs\'s own retries hid it for 20 s)', async (t) => {
  const servers = await serversWithEmbeddedBroker(t, ' to take it down');
  if (!servers) return;
  const port = await freePort();
  let log = '';
  let newGenerationAt = 0;
  const harvester = spawnHarvester(servers, {
    HARVESTER_VM_ID: 'timeout-vm', HARVESTER_SOURCE: 'sim', HARVESTER_MEM_MIB: '16', HARVESTER_WINDOW_BYTES: '0',
    HARVESTER_PUBLISH_TIMEOUT_MS: '3000', HARVESTER_METRICS_PORT: String(port),
  }, (line) => {
    log = (log + line + '\n').slice(-6000);
    if (!newGenerationAt && line.includes('"msg":"starting a new generation"') && line.includes('CKPT_ERR_PUBLISH_FAILED')) newGenerationAt = Date.now();
  });
  const get = (path: string): Promise<{ status: number; body: string }> => fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(3000) })
    .then(async (r) => ({ status: r.status, body: await r.text() }), (err: unknown) => ({ status: 0, body: (err as Error).message }));
  try {
    for (const deadline = Date.now() + 20_000; Date.now() < deadline && (await get('/readyz')).status !== 200;) await new Promise((r) => setTimeout(r, 200));
    await new Promise((r) => setTimeout(r, 2000));
    assert.equal((await get('/readyz')).status, 200, `ready before the outage; log: ${log}`);
    const downAt = Date.now();
    await servers.kafka.brokerDown(-1);
    let notReadyAt = 0;
    for (const deadline = downAt + 15_000; Date.now() < deadline && !(notReadyAt && newGenerationAt);) {
      if (!notReadyAt && (await get('/readyz')).status === 503) notReadyAt = Date.now();
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(notReadyAt > 0 && notReadyAt - downAt < 6000, `not ready ${notReadyAt ? notReadyAt - downAt : 'never'} ms after the broker went down; log: ${log.slice(-2000)}`);
    assert.ok(newGenerationAt > 0 && newGenerationAt - downAt < 10_000, `generation ended ${newGenerationAt ? newGenerationAt - downAt : 'never'} ms after the broker went down (timeout 3000 ms); log: ${log.slice(-2000)}`);
    assert.match((await get('/metrics')).body, /^ckpt_harvester_produce_errors_total\{[^}]*\} [1-9]/m, 'produce errors are counted');
    await servers.kafka.brokerUp(-1);
  } finally {
    await stopChild(harvester);
    await servers.stop();
  }
});

test('two harvesters with one VM id: the later one stops (CKPT_ERR_VM_ID_IN_USE), the earlier one says so and goes on; a restart with the same id is no conflict', async () => {
  const servers = await startServers({ partitions: 1 });
  const port = await freePort();
  const env = { HARVESTER_VM_ID: 'twin-vm', HARVESTER_SOURCE: 'sim', HARVESTER_MEM_MIB: '16', HARVESTER_WINDOW_BYTES: '0', HARVESTER_WRITER_HEARTBEAT_MS: '1000' };
  let firstLog = '';
  let secondLog = '';
  let thirdLog = '';
  let sawTwin = false;
  const first = spawnHarvester(servers, { ...env, HARVESTER_METRICS_PORT: String(port) }, (line) => {
    firstLog = (firstLog + line + '\n').slice(-6000);
    if (line.includes('another harvester started as this VM')) sawTwin = true;
  });
  const children = [first];
  const metric = async (): Promise<number> => Number(/^ckpt_harvester_duplicate_writers(?:\{[^}]*\})? (\d+)/m.exec(await fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text(), () => ''))?.[1] ?? -1);
  try {
    await new Promise((r) => setTimeout(r, 5000));
    const second = spawnHarvester(servers, env, (line) => { secondLog = (secondLog + line + '\n').slice(-6000); });
    children.push(second);
    let maxSeen = 0;
    const exited = new Promise<number | null>((r) => second.once('exit', (code) => r(code)));
    const poll = setInterval(() => { void metric().then((n) => { maxSeen = Math.max(maxSeen, n); }); }, 250);
    const code = await Promise.race([exited, new Promise<'running'>((r) => setTimeout(() => r('running'), 25_000))]);
    // The gauge holds a writer for three heartbeats after its last: the first one may hear the second late.
    for (const deadline = Date.now() + 4000; Date.now() < deadline && maxSeen < 1;) await new Promise((r) => setTimeout(r, 250));
    clearInterval(poll);
    assert.equal(code, 1, `the second harvester exits 1 (got ${code}); its log: ${secondLog.slice(-2000)}`);
    assert.match(secondLog, /"code":"CKPT_ERR_VM_ID_IN_USE"/);
    assert.match(secondLog, /another harvester publishes as VM twin-vm: .* pid \d+ .*this one stops/);
    assert.equal(first.exitCode, null, `the first one goes on; its log: ${firstLog.slice(-2000)}`);
    assert.ok(sawTwin, `the first one says another harvester started as its VM; its log: ${firstLog.slice(-2000)}`);
    assert.equal(maxSeen, 1, 'ckpt_harvester_duplicate_writers showed the second writer');
    // The same VM restarted (the first one stopped, a new process with the same id): no conflict.
    await stopChild(first);
    const third = spawnHarvester(servers, env, (line) => { thirdLog = (thirdLog + line + '\n').slice(-6000); });
    children.push(third);
    await new Promise((r) => setTimeout(r, 8000));
    assert.equal(third.exitCode, null, `a restart with the same id keeps running; its log: ${thirdLog.slice(-2000)}`);
    assert.doesNotMatch(thirdLog, /CKPT_ERR_VM_ID_IN_USE|another harvester/);
  } finally {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) await stopChild(c);
    await servers.stop();
  }
});

test('the replicator\'s /readyz tells the truth: 503 within seconds for a Redis that holds the connection but does not answer, and for a broker that went away', async () => {
  const servers = await startServers({ partitions: 1 });
  const port = await freePort();
  const replicator = spawnReplicator(servers, { REPLICATOR_METRICS_PORT: String(port) });
  const readyz = async (): Promise<{ status: number; body: string; ms: number }> => {
    const t0 = Date.now();
    try {
      const r = await fetch(`http://127.0.0.1:${port}/readyz`, { signal: AbortSignal.timeout(5000) });
      return { status: r.status, body: await r.text(), ms: Date.now() - t0 };
    } catch (err) {
      return { status: 0, body: (err as Error).message, ms: Date.now() - t0 };
    }
  };
  const until = async (what: string, ok: (r: { status: number; body: string }) => boolean, ms: number): Promise<{ status: number; body: string; ms: number }> => {
    const deadline = Date.now() + ms;
    let r = await readyz();
    while (!ok(r) && Date.now() < deadline) {
      await new Promise((res) => setTimeout(res, 250));
      r = await readyz();
    }
    assert.ok(ok(r), `${what}: /readyz answered ${r.status} ${r.body}`);
    return r;
  };
  try {
    await until('ready once it joined the group', (r) => r.status === 200, 30_000);
    // A Redis that is stopped keeps the connection open and never answers: the probe answered nothing.
    process.kill(servers.redis!.pid!, 'SIGSTOP');
    try {
      const r = await readyz();
      assert.equal(r.status, 503, r.body);
      assert.match(r.body, /redis: no answer to PING within 2 s/);
      assert.ok(r.ms < 4000, `answered after ${r.ms} ms`);
    } finally {
      process.kill(servers.redis!.pid!, 'SIGCONT');
    }
    await until('ready again', (r) => r.status === 200, 30_000);
    // A broker that went away: not ready once the coordinator stops answering heartbeats (it was
    // ready for about 20 s, until kafkajs gave up on the consumer).
    await servers.kafka!.brokerDown();
    await until('not ready without the broker', (r) => r.status === 503 && /kafka|retrying/.test(r.body), 30_000);
    await servers.kafka!.brokerUp();
    await until('ready again with the broker', (r) => r.status === 200, 60_000);
  } finally {
    await stopChild(replicator);
    await servers.stop();
  }
});

test('SIGTERM ends a replicator whose Redis holds the connection but does not answer: it exits after --stop-timeout-ms, code 1', async () => {
  const servers = await startServers({ partitions: 1 });
  let log = '';
  const replicator = spawnReplicator(servers, { REPLICATOR_STOP_TIMEOUT_MS: '2000' }, (line) => { log = (log + line + '\n').slice(-6000); });
  const kafka = new Kafka({ clientId: 'stop-timeout-test', brokers: servers.brokers, logLevel: logLevel.NOTHING });
  const producer = kafka.producer({ idempotent: false, allowAutoTopicCreation: false });
  const redisPid = servers.redis!.pid!;
  try {
    const deadline = Date.now() + 30_000;
    while (!/joined the consumer group/.test(log) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    await producer.connect();
    process.kill(redisPid, 'SIGSTOP');
    // A record the replicator now waits on Redis for.
    await producer.send({ topic: servers.topics.pages, acks: -1, messages: [{ key: 'stop-vm', value: new FakeHarvester('stop-vm', 3).epochRecords(new Map([[1, 1]]))[0]! }] });
    await new Promise((r) => setTimeout(r, 1000));
    const t0 = Date.now();
    const exited = new Promise<number | null>((r) => replicator.once('exit', (code) => r(code)));
    replicator.kill('SIGTERM');
    const code = await Promise.race([exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 15_000))]);
    assert.notEqual(code, 'hung', `still running 15 s after SIGTERM; log: ${log.slice(-1500)}`);
    assert.equal(code, 1);
    assert.ok(Date.now() - t0 < 8000);
    assert.match(log, /still stopping after 2000 ms \(Redis or Kafka does not answer\): exiting/);
  } finally {
    process.kill(redisPid, 'SIGCONT');
    if (replicator.exitCode === null) replicator.kill('SIGKILL');
    await producer.disconnect().catch(() => undefined);
    await servers.stop();
  }
});
