import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import { processCpuMs } from './process-cpu.ts';

test('processCpuMs follows a busy process and agrees with its own count; a gone process is null', async () => {
  // This process: /proc and process.cpuUsage() count the same thing (within a clock tick or two).
  const end = Date.now() + 300;
  let x = 0;
  while (Date.now() < end) x += Math.sqrt(x + 1);
  const own = process.cpuUsage();
  const fromProc = processCpuMs(process.pid);
  assert.ok(fromProc !== null);
  assert.ok(Math.abs(fromProc - (own.user + own.system) / 1000) < 50, `/proc ${fromProc} ms, cpuUsage ${(own.user + own.system) / 1000} ms`);
  // Another process, busy until its own count says 400 ms of CPU (on a loaded machine that takes
  // longer than 400 ms): it shows, and an idle wait does not add to it.
  const child = spawn(process.execPath, ['-e',
    'let x = 0; for (;;) { const u = process.cpuUsage(); if (u.user + u.system >= 400e3) break; for (let i = 0; i < 1e5; i++) x += Math.sqrt(x + 1); } process.stdout.write("busy done\\n"); setTimeout(() => {}, 60_000);']);
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the child did not finish 400 ms of CPU in 30 s')), 30_000);
      child.stdout.on('data', (d: Buffer) => { if (d.toString().includes('busy done')) { clearTimeout(timer); resolve(); } });
    });
    const busy = processCpuMs(child.pid!);
    assert.ok(busy !== null && busy >= 380, `child used ${busy} ms`);
    await new Promise((r) => setTimeout(r, 300));
    const idle = processCpuMs(child.pid!)! - busy;
    assert.ok(idle < 100, `an idle child used ${idle} ms`);
  } finally {
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
  }
  assert.equal(processCpuMs(child.pid!), null);
  assert.equal(processCpuMs(2 ** 22 + 12345), null);
  void x;
});
