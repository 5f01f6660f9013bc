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
import { freePort } from '@ckpt/embedded';
import { StandbyStore } from '@ckpt/standby';
import { spawnReplicator, startServers, stopChild } from '../src/index.ts';

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
  harvester.stderr.on('data', (d: Buffer) => { log = (log + d.toString()).slice(-5000); });
  const redis = new Redis(servers.redisUrl);
  try {
    const store = new StandbyStore(redis, servers.redisPrefix);
    const deadline = Date.now() + 30_000;
    let meta = await store.readMeta('svc-vm');
    while ((!meta || meta.epoch < 5) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      meta = await store.readMeta('svc-vm');
    }
    assert.ok(meta && meta.epoch >= 5, `the standby reached epoch ${meta?.epoch} in 30 s; harvester log: ${log}`);
    assert.equal(meta.state, 'ok');
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

test('the services refuse bad configuration with exit code 2 and name every problem', () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', REPLICATOR_MAIN, '--max-record-bytes', '12', '--kafka-sasl-mechanism', 'kerberos'], { encoding: 'utf8', env: { ...process.env, REPLICATOR_KAFKA_BROKERS: '', REPLICATOR_REDIS_URL: '' } });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /--max-record-bytes: 12 is below the minimum/);
  assert.match(r.stderr, /"kerberos" is not one of none, plain/);
  const h = spawnSync(process.execPath, ['--import', 'tsx', HARVESTER_MAIN], { encoding: 'utf8', env: { ...process.env, HARVESTER_VM_ID: 'bad id!', HARVESTER_SOURCE: 'sim' } });
  assert.equal(h.status, 2, h.stderr);
  assert.match(h.stderr, /HARVESTER_VM_ID/);
});
