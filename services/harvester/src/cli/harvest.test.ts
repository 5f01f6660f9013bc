import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { KVM_CAP, needKvm, nodeWithoutKvmCaps } from '@ckpt/kvm-native/test-support';

const script = fileURLToPath(new URL('./harvest.ts', import.meta.url));

function harvest(args: string[]): { code: number | null; stdout: string; stderr: string; json: Record<string, unknown> | null } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', script, ...args], { encoding: 'utf8', timeout: 60_000 });
  const last = r.stdout.trim().split('\n').pop() ?? '';
  let json: Record<string, unknown> | null = null;
  try { json = JSON.parse(last) as Record<string, unknown>; } catch { json = null; }
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, json };
}

const REQUIRED = ['source', 'epochs', 'pagesHarvested', 'mismatches', 'invalidEntries', 'ringFullExits', 'pauseP50Us', 'pauseP99Us'];

test('harvest --source sim --verify --json: exit 0 and one JSON summary line', () => {
  const r = harvest(['--source', 'sim', '--mem-mib', '64', '--vcpus', '2', '--workload', 'hotset', '--rate', '20000', '--epochs', '5', '--interval-ms', '10', '--verify', '--json', '--inject-hostile', '4']);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.json, `last line is JSON: ${r.stdout}`);
  for (const k of REQUIRED) assert.ok(k in r.json, k);
  assert.equal(r.json.source, 'sim');
  assert.equal(r.json.epochs, 6);
  assert.equal(r.json.mismatches, 0);
  assert.equal(r.json.invalidEntries, 4 * 5);
  assert.match(r.stderr, /verify\s+OK/);
});

test('harvest exits 1 when verification finds a mismatch (deliberately wrong cycle)', () => {
  const r = harvest(['--source', 'sim', '--mem-mib', '32', '--vcpus', '1', '--workload', 'hotset', '--hot-pages', '16', '--rate', '100000', '--epochs', '6', '--interval-ms', '10', '--precopy-rounds', '1', '--unsafe-copy-before-reset-ms', '3', '--verify', '--json']);
  assert.equal(r.code, 1, r.stderr);
  assert.ok((r.json?.mismatches as number) > 0);
  assert.match(r.stderr, /verify\s+FAILED/);
});

test('bad options: every problem listed, exit 2', () => {
  const r = harvest(['--ring-entries', '1000', '--vcpus', '0', '--workload', 'nope', '--bogus']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /power of two/);
  assert.match(r.stderr, /--vcpus: 0 is below the minimum 1/);
  assert.match(r.stderr, /not one of idle, sequential, random, hotset/);
  assert.match(r.stderr, /unknown option --bogus/);
});

test('guest sizes the chosen source cannot take: exit 2 naming the option, before any VM is made', () => {
  // KVM: the test guest's page tables map 125 GiB (it said 'options.slotBytes[0] is above ...').
  let r = harvest(['--source', 'kvm', '--mem-mib', '1000000', '--epochs', '1']);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /--mem-mib 1000000 is above the KVM test guest's 125 GiB \(128000 MiB\)/);
  assert.doesNotMatch(r.stderr, /slotBytes/);
  // The simulator: one slot of 2^32 pages or more (it spun for good).
  r = harvest(['--source', 'sim', '--mem-mib', String(32 * 1024 * 1024), '--epochs', '1']);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /slot 0 would hold 8589934592 pages.*split the guest with --slots/);
});

test('a missing KVM device is a clear error, not a crash', () => {
  const r = harvest(['--source', 'kvm', '--dev-path', '/nonexistent/kvm', '--epochs', '1']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /cannot open \/nonexistent\/kvm.*CKPT_ERR_KVM_NO_DEVICE/s);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
});

test('a failure with --json: one JSON line saying what failed; a busy metrics port is a clear error, not a stack trace', async () => {
  const busy = createServer();
  await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
  try {
    const port = (busy.address() as AddressInfo).port;
    const r = harvest(['--source', 'sim', '--epochs', '1', '--metrics-port', String(port), '--json']);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`cannot serve /metrics on port ${port}: .*EADDRINUSE.*--metrics-port`));
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    assert.deepEqual({ ...r.json, message: undefined }, { failed: true, code: 'CKPT_ERR_HARVEST_METRICS_PORT', message: undefined, retriable: false });
  } finally {
    busy.close();
  }
  const dev = harvest(['--source', 'kvm', '--dev-path', '/nonexistent/kvm', '--epochs', '1', '--json']);
  assert.equal(dev.json?.code, 'CKPT_ERR_KVM_NO_DEVICE', dev.stdout);
  assert.equal(harvest(['--bogus', '--json']).json?.code, 'CKPT_ERR_CONFIG_INVALID');
});

test('--source auto says which source it used', () => {
  const r = harvest(['--source', 'auto', '--dev-path', '/nonexistent/kvm', '--mem-mib', '16', '--epochs', '1', '--interval-ms', '5', '--json']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.json?.source, 'sim');
  assert.match(String(r.json?.fallbackReason), /nonexistent/);
});

test('--help lists every option', () => {
  const r = harvest(['--help']);
  assert.equal(r.code, 0);
  for (const f of ['--source', '--mem-mib', '--vcpus', '--workload', '--rate', '--epochs', '--interval-ms', '--verify', '--json', '--ring-entries', '--precopy-rounds']) assert.ok(r.stdout.includes(f), f);
});

test('harvest on real KVM with --verify --json', (t) => {
  if (!needKvm(t)) return;
  const r = harvest(['--source', 'kvm', '--mem-mib', '128', '--vcpus', '2', '--workload', 'random', '--rate', '20000', '--epochs', '10', '--interval-ms', '20', '--verify', '--json']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.json?.source, 'kvm');
  assert.equal(r.json?.mismatches, 0);
  assert.ok((r.json?.pagesHarvested as number) > 32768);
});

test('a kernel without the dirty ring (hidden by seccomp on the real /dev/kvm): a clear error naming the option that works, and bitmap mode harvests exactly', (t) => {
  if (!needKvm(t)) return;
  const caps = [KVM_CAP.DIRTY_LOG_RING, KVM_CAP.DIRTY_LOG_RING_ACQ_REL];
  const refused = nodeWithoutKvmCaps(caps, [script, '--source', 'kvm', '--mem-mib', '16', '--epochs', '2']);
  assert.equal(refused.status, 1, refused.stderr);
  assert.match(refused.stderr, /^harvest: cannot use a dirty ring on \/dev\/kvm: this kernel lacks KVM_CAP_DIRTY_LOG_RING .*--ring-entries 0 .*\[CKPT_ERR_KVM_NO_DIRTY_RING\]$/m);
  assert.doesNotMatch(refused.stderr, /\n\s+at /, 'no stack trace');
  const bitmap = nodeWithoutKvmCaps(caps, [script, '--source', 'kvm', '--ring-entries', '0', '--mem-mib', '16', '--rate', '5000', '--epochs', '3', '--interval-ms', '20', '--verify', '--json']);
  assert.equal(bitmap.status, 0, bitmap.stderr);
  const json = JSON.parse(bitmap.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
  assert.deepEqual([json.source, json.mode, json.mismatches], ['kvm', 'bitmap', 0]);
});
