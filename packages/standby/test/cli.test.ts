/**
 * `npm run standby` against a real redis-server: list shows each VM's committed epoch, state and age;
 * forget deletes exactly one VM's keys, refuses while a restore holds the fence, and says so when there
 * is nothing to delete; bad options exit 2 naming the problem.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { RedisServer } from '@ckpt/embedded';
import { redisForTests } from '@ckpt/embedded/test-support';
import { StandbyStore } from '../src/index.ts';

const CLI = fileURLToPath(new URL('../src/cli.ts', import.meta.url));
const RESTORE = fileURLToPath(new URL('../../../services/restorer/src/main.ts', import.meta.url));
const db = redisForTests();

const run = (...args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', CLI, ...args], { encoding: 'utf8', env: { ...process.env, REDIS_URL: db.server.url } });

/** A committed image as the replicator leaves it: meta, a page and its hash (and, for `staged`, a staged page). */
async function image(prefix: string, vm: string, epoch: number, state: 'ok' | 'stale', committedAtMs: number): Promise<void> {
  const k = new StandbyStore(db.redis, prefix).keys(vm);
  await db.redis.hset(k.meta, 'generation', '7', 'epoch', String(epoch), 'state', state, 'digest', '0123456789abcdef', 'pageSize', '4096', 'slots', '[{"id":0,"pages":16}]', 'vcpus', '0', 'committedAtMs', String(committedAtMs));
  await db.redis.set(k.page(7, 0, 3), Buffer.alloc(4096, 1));
  await db.redis.hset(k.hashes(7), '0:3', Buffer.alloc(8, 2));
  await db.redis.set(`${k.stagePrefix(7, epoch + 1)}0:4`, Buffer.alloc(4096, 3));
  await db.redis.sadd(`${prefix}:vms`, vm);
}

test('list shows every VM with a standby, its epoch, state and age, and who runs a restored copy', async () => {
  const now = Date.now();
  await image('l1', 'vm-a', 5, 'ok', now - 2000);
  await image('l1', 'vm-b', 9, 'stale', now - 60_000);
  await db.redis.hset(new StandbyStore(db.redis, 'l1').keys('vm-b').meta, 'staleReason', 'pages-lost: 1 page(s) gone');
  await image('l1-other', 'vm-c', 1, 'ok', now); // another prefix: not listed
  await db.redis.set(new StandbyStore(db.redis, 'l1').keys('vm-b').runClaim, 'run-pod-7-abc', 'PX', 60_000);
  const r = run('list', '--redis-prefix', 'l1', '--json');
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { vms: { vm: string; epoch: number; state: string; staleReason: string | null; ageS: number; restoredRunningUnder: string | null }[] };
  assert.deepEqual(out.vms.map((v) => [v.vm, v.epoch, v.state, v.restoredRunningUnder]), [['vm-a', 5, 'ok', null], ['vm-b', 9, 'stale', 'run-pod-7-abc']]);
  assert.deepEqual(out.vms.map((v) => v.staleReason), [null, 'pages-lost: 1 page(s) gone'], 'why a stale image is stale');
  assert.ok(out.vms[0]!.ageS >= 2 && out.vms[0]!.ageS < 30, `age ${out.vms[0]!.ageS}`);
  assert.ok(out.vms[1]!.ageS >= 60);
  assert.match(r.stderr, /2 standby images under the key prefix "l1:" in redis:\/\//);
  assert.match(r.stderr, /vm-b {2}epoch 7\/9 {2}STALE/);
  // Without --json the list itself is on stdout (pipe it to grep), the heading on stderr.
  const text = run('list', '--redis-prefix', 'l1');
  assert.equal(text.status, 0, text.stderr);
  assert.match(text.stdout, /^ {2}vm-a {2}epoch 7\/5 {2}ok {2}/m);
  assert.match(text.stdout, /^ {2}vm-b {2}epoch 7\/9 {2}STALE \(pages-lost: 1 page\(s\) gone\) {2}.* {2}restored, running under run-pod-7-abc$/m);
  assert.doesNotMatch(text.stdout, /vm-a .*running under/);
  assert.doesNotMatch(text.stdout, /standby images under/);
  assert.match(text.stderr, /2 standby images under the key prefix "l1:" in redis:\/\//);
});

test('forget deletes one VM\'s keys and nothing else; refuses while fenced; says when there is nothing', async () => {
  await image('f1', 'vm-x', 3, 'ok', Date.now());
  await image('f1', 'vm-y', 4, 'ok', Date.now());
  const store = new StandbyStore(db.redis, 'f1');
  assert.equal(await store.acquireFence('vm-x', 'restore-1', 60_000), true);
  let r = run('forget', '--vm', 'vm-x', '--redis-prefix', 'f1', '--json');
  assert.equal(r.status, 1);
  assert.match(r.stderr, /vm-x is fenced by restore-1 for (59|60)\.\d s more \(a restore is reading its image\): not deleted; .*npm run standby -- unfence --vm vm-x/);
  const failed = JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '') as { failed: boolean; code: string; retriable: boolean };
  assert.deepEqual([failed.failed, failed.code, failed.retriable], [true, 'CKPT_ERR_STANDBY_FENCED', true], '--json: a failure is a JSON last line too');
  assert.notEqual(await store.readMeta('vm-x'), null);
  await store.releaseFence('vm-x', 'restore-1');
  r = run('forget', '--vm', 'vm-x', '--redis-prefix', 'f1', '--json');
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout.trim()), { vm: 'vm-x', deletedKeys: 4, epoch: '7/3' });
  assert.deepEqual(await db.redis.keys('f1:{vm-x}:*'), ['f1:{vm-x}:forgotten'], 'only the tombstone that tells replicators it was on purpose');
  assert.ok(await db.redis.ttl('f1:{vm-x}:forgotten') > 86_000, 'kept for a day');
  assert.equal((await db.redis.keys('f1:{vm-y}:*')).length, 4, 'the other VM is untouched');
  assert.deepEqual(await store.listVms(), ['vm-y']);
  assert.equal(await db.redis.exists('f1:{vm-x}:fence'), 0, 'its own fence released');
  // Nothing left (again, or an image Redis lost: the runbook retires that VM this way): still done,
  // and the tombstone is there for the replicators. It exited 1, failing the runbook's step.
  await db.redis.del('f1:{vm-x}:forgotten');
  r = run('forget', '--vm', 'vm-x', '--redis-prefix', 'f1', '--json');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /no standby image of vm-x under the key prefix "f1:" \(nothing deleted\); it is marked forgotten, so replicators that still report it/);
  assert.deepEqual(JSON.parse(r.stdout.trim()), { vm: 'vm-x', deletedKeys: 0, epoch: null });
  assert.equal(await db.redis.exists('f1:{vm-x}:forgotten'), 1);
});

test('forget under a prefix with glob characters deletes only that prefix\'s keys', async () => {
  await image('g*', 'vm-z', 1, 'ok', Date.now());
  await image('gx', 'vm-z', 1, 'ok', Date.now());
  const r = run('forget', '--vm', 'vm-z', '--redis-prefix', 'g*');
  assert.equal(r.status, 0, r.stderr);
  assert.equal((await db.redis.keys('gx:{vm-z}:*')).length, 4);
});

test('unfence removes a fence its holder left behind (a restorer killed with kill -9), naming the holder; nothing else changes', async () => {
  await image('u1', 'vm-u', 2, 'ok', Date.now());
  const store = new StandbyStore(db.redis, 'u1');
  assert.equal(await store.acquireFence('vm-u', 'restore-host-4242-dead', 300_000), true);
  let r = run('unfence', '--vm', 'vm-u', '--redis-prefix', 'u1', '--json');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /removed vm-u's fence, held by restore-host-4242-dead for (299|300)\.\d s more/);
  const out = JSON.parse(r.stdout.trim()) as { removed: boolean; holder: string; ttlMs: number };
  assert.equal(out.removed, true);
  assert.equal(out.holder, 'restore-host-4242-dead');
  assert.ok(out.ttlMs > 290_000 && out.ttlMs <= 300_000, String(out.ttlMs));
  assert.equal(await db.redis.exists('u1:{vm-u}:fence'), 0);
  assert.notEqual(await store.readMeta('vm-u'), null, 'the image stays');
  // A fence that is gone is not an error.
  r = run('unfence', '--vm', 'vm-u', '--redis-prefix', 'u1');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /vm-u has no fence \(nothing removed\)/);
  assert.equal(run('unfence', '--redis-prefix', 'u1').status, 2);
});

test('a standby record this product did not write: list shows it UNUSABLE with the field and the others as usual (exit 1), forget deletes it; a 50-million vCPU count is refused, not allocated', async () => {
  await image('c1', 'vm-good', 3, 'ok', Date.now());
  await image('c1', 'vm-json', 3, 'ok', Date.now());
  await image('c1', 'vm-cpus', 3, 'ok', Date.now());
  await image('c1', 'vm-num', 3, 'ok', Date.now());
  await db.redis.hset('c1:{vm-json}:meta', 'slots', '{not json');
  await db.redis.hset('c1:{vm-cpus}:meta', 'vcpus', '50000000');
  await db.redis.hset('c1:{vm-num}:meta', 'generation', '01000');
  const t0 = Date.now();
  const r = run('list', '--redis-prefix', 'c1');
  assert.ok(Date.now() - t0 < 10_000, `answered in ${Date.now() - t0} ms`);
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /1 standby image under the key prefix "c1:" .*, and 3 unusable/);
  assert.match(r.stdout, /^ {2}vm-good {2}epoch 7\/3 {2}ok/m);
  assert.match(r.stdout, /^ {2}vm-json {2}UNUSABLE: the standby record of vm-json \(c1:\{vm-json\}:meta\) is unusable: slots is not JSON \("\{not json"\); .*npm run standby -- forget --vm vm-json/m);
  assert.match(r.stdout, /^ {2}vm-cpus {2}UNUSABLE: .*vcpus is "50000000", not a whole number from 0 to 4096/m);
  assert.match(r.stdout, /^ {2}vm-num {2}UNUSABLE: .*generation is "01000", not a whole number/m);
  const f = run('forget', '--vm', 'vm-json', '--redis-prefix', 'c1');
  assert.equal(f.status, 0, f.stderr);
  assert.deepEqual(await db.redis.keys('c1:{vm-json}:*'), ['c1:{vm-json}:forgotten']);
});

test('bad options exit 2 and name the problem; --help exits 0', () => {
  let r = run();
  assert.equal(r.status, 2);
  assert.match(r.stderr, /say what to do: list, forget or unfence/);
  r = run('forget');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /forget needs --vm ID/);
  r = run('forget', '--vm', 'bad id!');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /is not a VM id/);
  r = run('drop');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /unknown command "drop"/);
  // --json promises a JSON last line, a failure's too: bad options included (there was none).
  for (const args of [['list', '--json', '--bogus'], ['forget', '--json']]) {
    r = run(...args);
    assert.equal(r.status, 2, args.join(' '));
    const last = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { failed: boolean; code: string; message: string };
    assert.deepEqual([last.failed, last.code], [true, 'CKPT_ERR_CONFIG_INVALID']);
    assert.match(last.message, args.includes('--bogus') ? /unknown option --bogus/ : /forget needs --vm ID/);
  }
  r = run('--help');
  assert.equal(r.status, 0);
  assert.match(r.stdout, /npm run standby -- forget --vm ID/);
});

test('a Redis nobody listens on: exit 1 naming the connection\'s own error, not ioredis\'s "Connection is closed."', () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', CLI, 'list', '--redis-url', 'redis://127.0.0.1:1', '--json'], { encoding: 'utf8' });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /standby: cannot connect to Redis at redis:\/\/127\.0\.0\.1:1: connect ECONNREFUSED 127\.0\.0\.1:1/);
  const failed = JSON.parse(r.stdout.trim()) as { failed: boolean; code: string; retriable: boolean; message: string };
  assert.deepEqual([failed.failed, failed.code, failed.retriable], [true, 'CKPT_ERR_REDIS_UNREACHABLE', true]);
  assert.match(failed.message, /ECONNREFUSED/);
});

test('a Redis that takes the connection but does not answer (SIGSTOP): list and restore fail within --redis-timeout-ms, retriable; list hung for good, restore took 2-3x its timeout', async () => {
  const server = await RedisServer.start();
  try {
    process.kill(server.pid!, 'SIGSTOP');
    for (const [cmd, args] of [[CLI, ['list', '--json']], [RESTORE, ['--vm', 'vm-0', '--out', '/tmp/ckpt-never', '--json']]] as const) {
      const t0 = Date.now();
      const r = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
        const child = spawn(process.execPath, ['--import', 'tsx', cmd, ...args, '--redis-url', server.url, '--redis-timeout-ms', '1500'], { stdio: ['ignore', 'pipe', 'pipe'] });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
        child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
        const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
        child.once('exit', (status) => { clearTimeout(timer); resolve({ status, stdout, stderr }); });
      });
      const ms = Date.now() - t0;
      assert.equal(r.status, 1, r.stderr);
      assert.ok(ms < 8000, `${args[0]}: failed after ${ms} ms with a 1.5 s timeout (node start included)`);
      const failed = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { code: string; retriable: boolean; message: string };
      assert.deepEqual([failed.code, failed.retriable], ['CKPT_ERR_REDIS_UNREACHABLE', true], r.stderr);
      assert.match(failed.message, /no answer within 1500 ms/);
    }
  } finally {
    process.kill(server.pid!, 'SIGCONT');
    await server.stop();
  }
});

test('refused credentials: list and restore fail with CKPT_ERR_REDIS_AUTH, not retriable (they said "unreachable, retriable", and a failover pod crash-looped on it)', async () => {
  const password = `pw-${process.pid}`;
  await db.redis.config('SET', 'requirepass', password); // this connection stays authenticated
  try {
    for (const [cmd, args] of [[CLI, ['list', '--json']], [RESTORE, ['--vm', 'vm-0', '--out', '/tmp/ckpt-never', '--json']]] as const) {
      for (const url of [db.server.url, db.server.url.replace('redis://', 'redis://:wrong@')]) {
        const r = spawnSync(process.execPath, ['--import', 'tsx', cmd, ...args, '--redis-url', url], { encoding: 'utf8' });
        assert.equal(r.status, 1, r.stderr);
        const failed = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { code: string; retriable: boolean; message: string };
        assert.deepEqual([failed.code, failed.retriable], ['CKPT_ERR_REDIS_AUTH', false], `${args[0]} ${url}: ${r.stderr}`);
        assert.match(failed.message, /refused the credentials: (NOAUTH|WRONGPASS)/);
        assert.doesNotMatch(r.stderr + r.stdout, /:wrong@/, 'the password is not shown');
      }
    }
  } finally {
    await db.redis.config('SET', 'requirepass', '');
  }
});
