/**
 * Child of probe-and-errors.test.ts, started under deny-kvm-cap (a kernel that lacks some KVM
 * capabilities): prints as JSON what the helper reports and does with a ring VM and a bitmap VM.
 * Not a test file itself.
 */
import { KvmError } from '@ckpt/common';
import { KvmVm, kvmAvailability, probeKvm } from '../ts/index.ts';

const MiB = 1024 * 1024;

function outcome(fn: () => Record<string, unknown>): Record<string, unknown> {
  try {
    return { code: 'none', ...fn() };
  } catch (err) {
    return err instanceof KvmError ? { code: err.code, message: err.message } : { code: 'not-a-KvmError', message: String(err) };
  }
}

/** Runs a guest writing 200 pages, then drains what the kernel logged. */
function harvested(ringEntries: number): Record<string, unknown> {
  const vm = KvmVm.create({ slotBytes: [16 * MiB], vcpus: 1, ringEntries, ratePagesPerSec: 0, maxWritesPerVcpu: 200 });
  try {
    const slots = new Uint32Array(65536);
    const offsets = new Uint32Array(65536);
    vm.start();
    const counters = new Float64Array(2);
    const deadline = Date.now() + 20_000;
    do vm.guestCounters(counters); while (counters[1]! < 200 && Date.now() < deadline);
    vm.pause();
    const n = vm.drain(slots, offsets);
    return { acqRel: vm.stats().acqRel, pagesWritten: counters[1], entries: n };
  } finally {
    vm.destroy();
  }
}

process.stdout.write(JSON.stringify({
  probe: probeKvm(),
  availability: kvmAvailability(),
  ring: outcome(() => harvested(4096)),
  bitmap: outcome(() => harvested(0)),
}) + '\n');
