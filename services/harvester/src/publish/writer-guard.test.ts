import assert from 'node:assert/strict';
import { test } from 'node:test';
import { silentLogger, type CkptError } from '@ckpt/common';
import type { WriterHeartbeat } from '@ckpt/proto';
import { WriterGuard } from './writer-guard.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function guard(): { g: WriterGuard; sent: WriterHeartbeat[]; others: number[]; intruder: () => CkptError | null } {
  const sent: WriterHeartbeat[] = [];
  const others: number[] = [];
  let told: CkptError | null = null;
  const g: WriterGuard = new WriterGuard({
    vm: 'vm-g', periodMs: 100, generation: () => 7, log: silentLogger,
    send: (hb) => { sent.push(hb); return Promise.resolve(); },
    onOthers: (n) => others.push(n), onIntruder: () => { told = g.intruder; },
  });
  // What the callback was told: set, and the same as the guard's own.
  return { g, sent, others, intruder: () => { assert.equal(told, g.intruder); return told; } };
}

const beat = (writerId: string, startedAtMs: number): WriterHeartbeat => ({ writerId, host: 'node-b', pid: 9, startedAtMs, generation: 1, atMs: Date.now() });

test('a writer guard stops this harvester only after two heartbeats of one that started earlier; its own, a later one\'s and a single stray one do not', async () => {
  const { g, sent, others, intruder } = guard();
  g.start();
  try {
    assert.equal(sent.length, 1, 'a heartbeat at once');
    assert.deepEqual([sent[0]!.writerId, sent[0]!.generation, sent[0]!.pid], [g.writerId, 7, process.pid]);
    g.heard(sent[0]!); // its own, read back from the topic
    g.heard(beat('later', g.startedAtMs + 5000));
    g.heard(beat('later', g.startedAtMs + 5000));
    assert.equal(intruder(), null, 'a writer that started later is the one to stop, not this one');
    g.heard(beat('earlier', g.startedAtMs - 5000));
    assert.equal(intruder(), null, 'one stray heartbeat is not a writer');
    assert.equal(others.at(-1), 2, 'both others are counted');
    g.heard(beat('earlier', g.startedAtMs - 5000));
    const err = intruder();
    assert.equal(err?.code, 'CKPT_ERR_VM_ID_IN_USE');
    assert.match(err?.message ?? '', /another harvester publishes as VM vm-g: node-b pid 9 \(writer earlier/);
    const before = sent.length;
    await sleep(250);
    assert.equal(sent.length, before, 'an intruder sends no more heartbeats');
  } finally {
    g.stop();
  }
});

test('a writer guard forgets a writer not heard for three heartbeats', async () => {
  const { g, others } = guard();
  g.start();
  try {
    g.heard(beat('later', g.startedAtMs + 5000));
    assert.equal(others.at(-1), 1);
    await sleep(450);
    assert.equal(others.at(-1), 0);
  } finally {
    g.stop();
  }
});
