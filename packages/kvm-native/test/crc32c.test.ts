/**
 * The native CRC-32C that replaces kafkajs's JavaScript one for record batches: a wrong value would
 * pass every test against the embedded broker (neither it nor kafkajs's consumer checks it) and be
 * refused by a real broker (CORRUPT_MESSAGE), so it is checked here against kafkajs's own code.
 * Also the helper's other function that needs no /dev/kvm: the thread CPU clock.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { test } from 'node:test';
import { crc32c, crc32cImpl, threadCpuMs } from '../ts/index.ts';

// kafkajs's byte-at-a-time CRC-32C (its inner module: the one the harvester never replaces).
const kafkajsCrc = createRequire(import.meta.url)('kafkajs/src/protocol/recordBatch/crc32C/crc32C.js') as (b: Buffer) => number;
const reference = (b: Buffer): number => kafkajsCrc(b) >>> 0;

test('crc32c: the check value, and kafkajs\'s result on every length and alignment', () => {
  assert.match(crc32cImpl(), /^(sse4\.2|table)$/);
  for (const tableOnly of [false, true]) {
    assert.equal(crc32c(Buffer.from('123456789'), tableOnly), 0xe3069283, `check value, tableOnly=${tableOnly}`);
    assert.equal(crc32c(new Uint8Array(0), tableOnly), 0);
  }
  const data = randomBytes(70_000);
  for (let len = 0; len <= 64; len++) {
    for (let off = 0; off < 8; off++) {
      const b = data.subarray(off, off + len);
      const want = reference(b);
      assert.equal(crc32c(b), want, `len ${len} offset ${off}`);
      assert.equal(crc32c(b, true), want, `table, len ${len} offset ${off}`);
    }
  }
  for (const len of [4095, 4096, 65_537, 69_993]) {
    const b = data.subarray(7, 7 + len);
    assert.equal(crc32c(b), reference(b));
    assert.equal(crc32c(b, true), reference(b));
  }
  // One flipped bit changes it.
  const c = Buffer.from(data.subarray(0, 1000));
  const before = crc32c(c);
  c[500]! ^= 0x10;
  assert.notEqual(crc32c(c), before);
});

test('crc32c: arguments other than a Uint8Array are refused with a TypeError', () => {
  assert.throws(() => crc32c('abc' as unknown as Uint8Array), { name: 'TypeError', message: /data must be/ });
  assert.throws(() => crc32c(new Uint32Array(4) as unknown as Uint8Array), TypeError);
});

test('threadCpuMs() counts this thread\'s CPU: it moves with work, not while the thread sleeps', () => {
  const sleep = new Int32Array(new SharedArrayBuffer(4));
  const a = threadCpuMs();
  Atomics.wait(sleep, 0, 0, 60);
  const b = threadCpuMs();
  assert.ok(b - a < 20, `asleep 60 ms, the clock moved ${b - a} ms`);
  // Busy until the clock has moved 30 ms: on a loaded machine that takes longer than 30 ms of wall
  // time, not forever, and not much less (the two clocks are read a little apart and counted by
  // different means: a clean-clone run saw 30.05 ms of CPU in 28.79 ms of wall time; a clock counting
  // the whole process's threads would run well ahead).
  let x = 0;
  const t0 = performance.now();
  while (threadCpuMs() - b < 30 && performance.now() - t0 < 5000) x += Math.sqrt(x + 1);
  const wall = performance.now() - t0;
  const cpu = threadCpuMs() - b;
  assert.ok(cpu >= 30 && wall >= cpu * 0.9, `busy: the clock moved ${cpu} ms in ${wall} ms of wall time (${x > 0})`);
});
