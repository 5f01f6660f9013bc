/**
 * Waits that must not outlast a shutdown: a client's disconnect() that waits out its retries against
 * a server that is gone, a send that retries for its full timeout.
 */

/** Waits for `p` (its outcome ignored) at most `ms`; true when it settled in time. */
export async function settleWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const settled = p.then(() => true, () => true);
  const timedOut = new Promise<boolean>((r) => { timer = setTimeout(() => r(false), ms); });
  try {
    return await Promise.race([settled, timedOut]);
  } finally {
    clearTimeout(timer);
  }
}

/** `p`, or a rejection with `onAbort()` as soon as `signal` aborts (at once if it already has). */
export function unlessAborted<T>(p: Promise<T>, signal: AbortSignal | undefined, onAbort: () => Error): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) return Promise.reject(onAbort());
  return new Promise<T>((resolve, reject) => {
    const stop = (): void => reject(onAbort());
    signal.addEventListener('abort', stop, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', stop));
  });
}
