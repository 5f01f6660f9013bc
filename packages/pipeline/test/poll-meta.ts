import type { StandbyMeta, StandbyStore } from '@ckpt/standby';

/** Reads a VM's standby meta every 100 ms until `done(meta)` holds or `timeoutMs` passed; returns the last read. */
export async function pollMeta(store: StandbyStore, vm: string, done: (m: StandbyMeta | null) => boolean, timeoutMs: number): Promise<StandbyMeta | null> {
  const deadline = Date.now() + timeoutMs;
  let meta = await store.readMeta(vm);
  while (!done(meta) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    meta = await store.readMeta(vm);
  }
  return meta;
}
