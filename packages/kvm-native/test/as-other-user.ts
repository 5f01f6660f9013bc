/**
 * Child of probe-and-errors.test.ts, started as root: loads the native helper, drops to the user and
 * group given in argv (as a service started by an unprivileged user would be), and prints as JSON what
 * each entry point says about the device in argv. Not a test file itself.
 */
import { KvmError } from '@ckpt/common';
import { KvmVm, kvmAvailability, loadNative, probeKvm } from '../ts/index.ts';

const [dev, uid, gid] = [process.argv[2]!, Number(process.argv[3]), Number(process.argv[4])];
loadNative();
if (!process.setuid || !process.setgid || !process.setgroups) throw new Error('this platform cannot change the user');
process.setgroups([]);
process.setgid(gid);
process.setuid(uid);

function outcome(fn: () => unknown): { code: string; message: string } {
  try {
    fn();
    return { code: 'none', message: 'it worked' };
  } catch (err) {
    return err instanceof KvmError ? { code: err.code, message: err.message } : { code: 'not-a-KvmError', message: String(err) };
  }
}

process.stdout.write(JSON.stringify({
  uid: process.getuid?.(),
  probe: outcome(() => probeKvm(dev)),
  create: outcome(() => KvmVm.create({ devPath: dev, slotBytes: [16 << 20], ratePagesPerSec: 100 }).destroy()),
  availability: kvmAvailability(dev),
}) + '\n');
