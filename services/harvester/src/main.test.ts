import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { once } from 'node:events';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const main = fileURLToPath(new URL('./main.ts', import.meta.url));

test('the harvester service serves /metrics, /healthz and /readyz and stops cleanly on SIGTERM', async () => {
  const child = spawn(process.execPath, ['--import', 'tsx', main], {
    env: { ...process.env, HARVESTER_VM_ID: 'main-test', HARVESTER_SOURCE: 'sim', HARVESTER_MEM_MIB: '32', HARVESTER_INTERVAL_MS: '20', HARVESTER_METRICS_PORT: '0' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`service did not start: ${stderr}`)), 20_000);
    child.stderr.on('data', (d: string) => {
      stderr += d;
      const m = /"msg":"started".*"metricsPort":(\d+)/.exec(stderr);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
  });
  try {
    const base = `http://127.0.0.1:${port}`;
    assert.equal((await fetch(`${base}/healthz`)).status, 200);
    assert.equal((await fetch(`${base}/readyz`)).status, 200);
    await new Promise((r) => setTimeout(r, 300));
    const text = await (await fetch(`${base}/metrics`)).text();
    for (const name of ['ckpt_harvester_pages_harvested_total', 'ckpt_harvester_invalid_entries_total', 'ckpt_harvester_ring_full_exits_total',
      'ckpt_harvester_pause_seconds_bucket', 'ckpt_harvester_drain_seconds_bucket', 'ckpt_harvester_epoch_bytes_bucket', 'process_cpu_seconds_total']) {
      assert.ok(text.includes(name), `${name} exported`);
    }
    assert.match(text, /ckpt_harvester_epochs_total\{kind="delta",vm="[^"]+"\} [1-9]/, 'epochs are being cut, labelled with the VM');
    assert.match(text, /ckpt_harvester_harvested_bytes_total\{vm="[^"]+"\} [1-9]/, 'harvested bytes counted');
  } finally {
    child.kill('SIGTERM');
  }
  const [code] = (await once(child, 'exit')) as [number | null];
  assert.equal(code, 0, stderr);
  assert.match(stderr, /"msg":"stopped"/);
});

test('the harvester service rejects bad configuration with every problem listed (exit 2)', async () => {
  const child = spawn(process.execPath, ['--import', 'tsx', main], {
    env: { ...process.env, HARVESTER_RING_ENTRIES: '1000', HARVESTER_VCPUS: 'x' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d: string) => { stderr += d; });
  const [code] = (await once(child, 'exit')) as [number | null];
  assert.equal(code, 2);
  const record = JSON.parse(stderr.trim().split('\n').pop()!) as { err: { code: string; message: string } };
  assert.equal(record.err.code, 'CKPT_ERR_CONFIG_INVALID');
  assert.match(record.err.message, /HARVESTER_RING_ENTRIES: 1000 must be a power of two/);
  assert.match(record.err.message, /HARVESTER_VCPUS: "x" is not a number/);
});

test('the harvester service refuses an unknown flag instead of ignoring it (exit 2)', async () => {
  const child = spawn(process.execPath, ['--import', 'tsx', main, '--bogus'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d: string) => { stderr += d; });
  const [code] = (await once(child, 'exit')) as [number | null];
  assert.equal(code, 2);
  assert.match(stderr, /unknown option --bogus/);
});

test('the harvester service refuses to start without a VM id (exit 2): it ran as vm-0, so two harvesters that forgot it wrote as one VM', async () => {
  const env: NodeJS.ProcessEnv = { ...process.env, HARVESTER_SOURCE: 'sim', HARVESTER_MEM_MIB: '16' };
  delete env.HARVESTER_VM_ID;
  for (const vmEnv of [{}, { HARVESTER_VM_ID: '' }]) {
    const child = spawn(process.execPath, ['--import', 'tsx', main], { env: { ...env, ...vmEnv }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => { stderr += d; });
    const [code] = (await once(child, 'exit')) as [number | null];
    assert.equal(code, 2, stderr);
    assert.match(stderr, /HARVESTER_VM_ID \(--vm-id\) is required/);
    assert.doesNotMatch(stderr, /"msg":"started"/);
  }
});

test('a metrics port in use: exit 1 naming HARVESTER_METRICS_PORT, before any guest is made (it was a bare EADDRINUSE "unexpected failure")', async () => {
  const taken = createServer();
  await new Promise<void>((r) => taken.listen(0, '0.0.0.0', () => r()));
  const port = (taken.address() as { port: number }).port;
  try {
    const child = spawn(process.execPath, ['--import', 'tsx', main], {
      env: { ...process.env, HARVESTER_VM_ID: 'port-test', HARVESTER_SOURCE: 'sim', HARVESTER_MEM_MIB: '16', HARVESTER_METRICS_PORT: String(port) },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => { stderr += d; });
    const [code] = (await once(child, 'exit')) as [number | null];
    assert.equal(code, 1, stderr);
    assert.match(stderr, /"code":"CKPT_ERR_METRICS_PORT"/);
    assert.match(stderr, new RegExp(`cannot serve /metrics on port ${port}: .*EADDRINUSE.*; choose another HARVESTER_METRICS_PORT \\(--metrics-port\\)`));
    assert.doesNotMatch(stderr, /unexpected failure|"msg":"started"/);
  } finally {
    taken.close();
  }
});
