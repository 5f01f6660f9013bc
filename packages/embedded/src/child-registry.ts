import type { ChildProcess } from 'node:child_process';

/**
 * Child processes that must not outlive this one (the servers this package starts, replicators a
 * pipeline starts): they are killed on normal exit and on SIGINT/SIGTERM (the handlers re-raise the
 * signal after cleaning up).
 */
const children = new Set<ChildProcess>();
let hooked = false;

function killAll(): void {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  children.clear();
}

export function track(child: ChildProcess): void {
  children.add(child);
  child.once('exit', () => children.delete(child));
  if (hooked) return;
  hooked = true;
  process.once('exit', killAll);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      killAll();
      // Only re-raise when nobody else handles the signal: then the default action (exit) applies.
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    });
  }
}
