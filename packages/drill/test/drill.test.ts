/**
 * The drill itself, end to end (real broker over TCP, redis-server, replicator process, the primary
 * in its own process killed with -9, real KVM when usable), every scenario in turn; and a negative
 * test: the drill's byte comparison reports a restored image that differs from the committed epoch.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { SparseImage } from '@ckpt/common';
import { kvmAvailability } from '@ckpt/kvm-native';
import type { RestoredImage } from '@ckpt/restorer';
import { compare, type ScenarioResult } from '../src/drill.ts';

const CLI = fileURLToPath(new URL('../src/cli.ts', import.meta.url));

test('npm run drill -- --help prints the options at once, without the set-up (npm ci, apt-get, the native build)', () => {
  const r = spawnSync('bash', [fileURLToPath(new URL('../../../scripts/drill.sh', import.meta.url)), '--help'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^usage: npm run drill/);
  assert.doesNotMatch(r.stderr, /setup:/, 'the set-up ran');
});

test('a scenario that restarts a server the drill did not start is a bad option (exit 2, before anything starts; it ran 10 s and exited 1)', () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', CLI, '--scenario', 'all'], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, REDIS_URL: 'redis://127.0.0.1:1', KAFKA_BROKERS: '127.0.0.1:1' } });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /--scenario all restarts Redis: it needs the embedded redis-server \(unset REDIS_URL\)/);
  assert.match(r.stderr, /--scenario all stops the broker: it needs the embedded one \(unset KAFKA_BROKERS\)/);
});

test('a drill against a Redis it cannot reach fails at once and names it; what it did not measure is null', () => {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, ['--import', 'tsx', CLI, '--json'], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, REDIS_URL: 'redis://127.0.0.1:1' } });
  const took = performance.now() - t0;
  assert.equal(r.status, 1, r.stderr.slice(-2000));
  const report = JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '') as { verified: boolean; scenarios: ScenarioResult[] };
  const s = report.scenarios[0]!;
  assert.equal(report.verified, false);
  assert.match(s.problems.join('; '), /cannot connect to Redis at redis:\/\/127\.0\.0\.1:1 \(REDIS_URL\)/);
  assert.deepEqual([s.rpoMs, s.rpoEpochs, s.rtoMs, s.recoveryMs, s.restoreMBps], [null, null, null, null, null]);
  assert.ok(took < 30_000, `failed after ${took.toFixed(0)} ms (it used to wait 90 s for the standby)`);
});

test('npm run drill --scenario all: every scenario fails over, verifies and (on KVM) resumes', () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', CLI, '--scenario', 'all', '--run-s', '2', '--seed', '42', '--json'], { encoding: 'utf8', timeout: 600_000 });
  const last = r.stdout.trim().split('\n').at(-1) ?? '';
  assert.equal(r.status, 0, `${r.stderr.slice(-3000)}\n${last}`);
  const report = JSON.parse(last) as { source: string; verified: boolean; scenarios: ScenarioResult[] };
  assert.equal(report.verified, true);
  assert.equal(report.source, kvmAvailability().usable ? 'kvm' : 'sim');
  assert.deepEqual(report.scenarios.map((s) => s.name), ['primary-crash', 'replicator-crash', 'redis-restart', 'redis-data-loss', 'broker-outage']);
  for (const s of report.scenarios) {
    assert.equal(s.verified, true, JSON.stringify(s));
    assert.equal(s.restoredEpoch, s.lastCommittedEpoch);
    assert.ok(s.pagesCompared > 0 && s.epochsCommitted >= 3 && s.rtoMs !== null && s.rtoMs > 0 && s.rpoMs !== null && s.rpoMs >= 0, JSON.stringify(s));
    if (report.source === 'kvm') assert.equal(s.resumed, true, s.resumeDetail);
    if (s.name === 'primary-crash') assert.equal(s.recoveryMs, null);
    else assert.ok(s.recoveryMs !== null && s.recoveryMs >= 0 && s.recoveryMs < 90_000, `${s.name}: recovery measured (${s.recoveryMs})`);
  }
  assert.match(r.stderr, /recovery from the injury: \d+ ms until the standby held an epoch paused after it ended/);
  assert.match(r.stderr, /drill report:/);
});

test('NEGATIVE: the drill\'s comparison reports a restored page that differs from the committed epoch', () => {
  const want = new SparseImage(4096, [64]);
  const page = new Uint8Array(4096).fill(7);
  want.writePages(0, 5, 1, page, 0);
  want.writePages(0, 9, 1, page, 0);
  const digest = want.digest().toHex();
  const got = new SparseImage(4096, [64]);
  got.writePages(0, 5, 1, page, 0);
  got.writePages(0, 9, 1, page.slice().fill(8, 100, 101), 0);
  const img = { generation: 1, epoch: 3, digest, pageSize: 4096, slots: [{ id: 0, pages: 64 }] } as unknown as RestoredImage;
  const res = { problems: [], pagesCompared: 0, restoredEpoch: '1/3', lastCommittedEpoch: '1/3' } as unknown as ScenarioResult;
  compare(img, got, want, { generation: 1, epoch: 3, digest }, res);
  assert.ok(res.problems.some((p) => /page 0:9 differs/.test(p)), res.problems.join('; '));
  assert.ok(res.problems.some((p) => /hash to/.test(p)), res.problems.join('; '));
  const ok = { problems: [], pagesCompared: 0 } as unknown as ScenarioResult;
  compare(img, want, want, { generation: 1, epoch: 3, digest }, ok);
  assert.deepEqual(ok.problems, []);
});

/** Every live descendant of `pid`, with its command line. */
function descendants(pid: number): { pid: number; cmd: string[] }[] {
  const parent = new Map<number, number>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      parent.set(Number(d), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch { /* gone */ }
  }
  const out: { pid: number; cmd: string[] }[] = [];
  const walk = (p: number): void => {
    for (const [c, pp] of parent) {
      if (pp !== p) continue;
      try { out.push({ pid: c, cmd: readFileSync(`/proc/${c}/cmdline`, 'utf8').split('\0') }); } catch { /* gone */ }
      walk(c);
    }
  };
  walk(pid);
  return out;
}

/**
 * Starts a drill, sends it SIGINT once its stderr matches `when`, and checks the promise of
 * docs/failover.md: exit 130, no process of the drill left, the embedded Redis data directory gone.
 */
async function interruptDrill(when: RegExp, needHarvester: boolean): Promise<{ ms: number }> {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, '--run-s', '30'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  await new Promise<void>((resolve, reject) => {
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); if (when.test(err)) resolve(); });
    child.once('exit', () => reject(new Error(`the drill exited early: ${err}`)));
  });
  const kids = descendants(child.pid!);
  // redis-server rewrites its command line, but it runs in its --dir.
  const redis = kids.find((k) => readFileSync(`/proc/${k.pid}/comm`, 'utf8').trim() === 'redis-server');
  const dirArg = redis ? readlinkSync(`/proc/${redis.pid}/cwd`) : '';
  if (needHarvester) assert.ok(kids.some((k) => k.cmd.some((a) => a.includes('harvester/src/main.ts'))), `the primary runs: ${JSON.stringify(kids.map((k) => k.cmd.join(' ')))}`);
  assert.ok(dirArg !== '' && existsSync(dirArg), `the embedded redis-server has a data directory: ${JSON.stringify(redis)}`);
  const t0 = Date.now();
  child.kill('SIGINT');
  const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  const ms = Date.now() - t0;
  assert.equal(code, 130, err.slice(-2000));
  await new Promise((r) => setTimeout(r, 300));
  const left = kids.filter((k) => existsSync(`/proc/${k.pid}`) && !readFileSync(`/proc/${k.pid}/stat`, 'utf8').includes(') Z '));
  assert.deepEqual(left.map((k) => k.cmd.join(' ')), [], 'no process of the drill survives it');
  assert.equal(existsSync(dirArg), false, `${dirArg} was removed`);
  return { ms };
}

test('Ctrl-C during a drill: exit 130, every process it started is gone, and so is the Redis data directory', async () => {
  await interruptDrill(/epochs committed [1-9]/, true);
});

test('Ctrl-C before the first epoch: the clean-up does not wait for the witness\'s Kafka retries (it hung for good)', async () => {
  // The servers die at the signal; the witness's consumer, still joining, retried for about 100 s
  // and its disconnect() waited for that. The clean-up gives it 3 s; the CLI's last resort is 20 s.
  const { ms } = await interruptDrill(/epochs committed 0/, false);
  assert.ok(ms < 15_000, `the drill took ${ms} ms to exit after SIGINT`);
});
