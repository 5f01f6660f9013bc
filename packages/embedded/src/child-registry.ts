import type { ChildProcess } from 'node:child_process';

/**
 * Child processes that must not outlive this one (the servers this package starts, replicators a
 * pipeline starts): they are killed on normal exit and on SIGINT/SIGTERM (the handlers re-raise the
 * signal after cleaning up). Synchronous clean-ups registered with onExitSync() (a server's temp
 * directory) run right after the kill, so a command without a signal handler of its own, killed by
 * Ctrl-C, leaves nothing behind either.
 */
const children = new Set<ChildProcess>();
const cleanups = new Set<() => void>();
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
  for (const f of cleanups) {
    try {
      f();
    } catch {
      // best effort: the process is going away
    }
  }
  cleanups.clear();
}

function hook(): void {
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

export function track(child: ChildProcess): void {
  children.add(child);
  child.once('exit', () => children.delete(child));
  hook();
}

/** Runs `f` (synchronous) when this process exits or is interrupted; the returned function unregisters it. */
export function onExitSync(f: () => void): () => void {
  cleanups.add(f);
  hook();
  return () => void cleanups.delete(f);
}
