/**
 * Reads one VM's committed image out of Redis, consistently, and proves it: the fence stops the
 * replicator from applying newer epochs while the chunks are read (so the bytes are one committed
 * epoch, named in the result), and the digest recomputed from the bytes read must equal the digest the
 * harvester put in that epoch's commit. Chunks are read with pipelined GETs (no per-page round trips)
 * and handed to a RestoreTarget (memory, raw files, or a fresh KVM VM: targets.ts).
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { CkptError, silentLogger, type Logger } from '@ckpt/common';
import type { SlotInfo } from '@ckpt/proto';
import { CHUNK_PAGES, ChunkDigest, type StandbyMeta, type StandbyStore, vcpuStatesDigest } from '@ckpt/standby';
import type { RestoreOutcome, RestorerMetrics } from './metrics.ts';

/** The image's layout, given to a target before any page. */
export interface ImageLayout {
  vm: string;
  pageSize: number;
  slots: readonly SlotInfo[];
  vcpus: number;
  /** Bytes of one vCPU's saved state (the native helper's layout on KVM; a simulated guest's is smaller). */
  vcpuStateBytes: number;
}

/** Where restored pages go. Chunks not written are zero. */
export interface RestoreTarget {
  open(layout: ImageLayout): void | Promise<void>;
  /** `pages` pages from page `firstPage` of slot index `slotIndex` (not the slot id). The bytes are only valid during the call. */
  write(slotIndex: number, firstPage: number, bytes: Uint8Array): void;
  /** The image verified: vCPU state and the epoch it is. */
  finish(image: RestoredImage): void | Promise<void>;
  /** The image was refused or the read failed: drop what was written. */
  abort(): void | Promise<void>;
}

export interface RestoredImage {
  vm: string;
  generation: number;
  epoch: number;
  digest: string;
  /** 'stale' only with allowStale: the newest verified epoch of an image that lost continuity. */
  state: 'ok' | 'stale';
  staleReason: string;
  pageSize: number;
  slots: SlotInfo[];
  vcpuStates: Buffer[];
  guestCounters: number[];
  committedAtMs: number;
  appliedAtMs: number;
  /** The vCPU states matched the digest stored with them; false for an image applied before vCPU digests (2026-11-25). */
  vcpuVerified: boolean;
  /** Bytes of the pages read from Redis (absent pages, which are zero, are not counted: they were counted up to 2026-11-25). */
  bytesRead: number;
  /** Guest memory size restored (all slots). */
  imageBytes: number;
  /** From holding the fence to the image verified and handed over: the restore itself, without fenceWaitMs. */
  durationMs: number;
  /** Time spent waiting for a fence someone else held before this restore could take it (0 if free). */
  fenceWaitMs: number;
  /** imageBytes per second of durationMs, in MB/s. */
  mbps: number;
}

export interface RestoreOptions {
  /** Take a stale image (its last verified epoch) instead of refusing it. */
  allowStale?: boolean;
  /** Fence lifetime; refreshed while reading. Default 10 s. */
  fenceTtlMs?: number;
  /** How long to wait for a fence someone else holds (another restore, `standby forget`). Default 30 s. */
  fenceWaitMs?: number;
  /** Chunks (one MGET of 256 page keys each) per pipelined round trip. Default 4: measured faster than 8 or 16 here. */
  window?: number;
  metrics?: RestorerMetrics;
  log?: Logger;
  /** Aborts the restore between reads (SIGINT, SIGTERM): CKPT_ERR_RESTORE_INTERRUPTED, the fence released, the target's files dropped. */
  signal?: AbortSignal;
  /** TEST ONLY: skip the fence (a negative test shows a torn read is then caught by the digest). */
  unsafeNoFence?: boolean;
  /** TEST ONLY: awaited between pipelined reads (a test applies an epoch there). */
  afterWindow?: () => Promise<void>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Throws CKPT_ERR_RESTORE_INTERRUPTED once `signal` is aborted (its reason names the signal). */
function checkInterrupted(vm: string, signal: AbortSignal | undefined, fenced = true): void {
  if (signal?.aborted) throw interrupted(vm, signal, fenced);
}

function interrupted(vm: string, signal: AbortSignal, fenced: boolean): CkptError {
  // While waiting for another holder's fence, this restore holds none: that fence is not ours to release.
  return new CkptError('CKPT_ERR_RESTORE_INTERRUPTED', `the restore of ${vm} was interrupted (${String(signal.reason ?? 'aborted')}): nothing was kept${fenced ? ', and the fence is released' : ' (it held no fence yet)'}`,
    { retriable: true });
}

/**
 * `p`, or `stopped()`'s error as soon as `signal` is aborted: a Redis call that does not return (Redis
 * stopped, a partition) must not hold a SIGINT/SIGTERM up until the connection is cut. The call itself
 * is left to end on its own; its result is ignored.
 */
export function interruptible<T>(p: Promise<T>, signal: AbortSignal | undefined, stopped: () => Error): Promise<T> {
  if (!signal) return p;
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(stopped());
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    p.then((v) => { signal.removeEventListener('abort', onAbort); resolve(v); }, (err: unknown) => { signal.removeEventListener('abort', onAbort); reject(err instanceof Error ? err : new Error(String(err))); });
  });
}

/**
 * interruptible() for a call that takes a lease (a SET NX of the fence or the run claim): one still
 * pending when the signal came may take the lease after all, and `giveBack` then releases it. (A lease
 * taken before the signal is the caller's to release.)
 */
export function interruptibleTake(taking: Promise<boolean>, signal: AbortSignal | undefined, stopped: () => Error, giveBack: () => Promise<unknown>): Promise<boolean> {
  taking.then((ok) => { if (ok && signal?.aborted) void giveBack().catch(() => undefined); }, () => undefined);
  return interruptible(taking, signal, stopped);
}

/**
 * Restores `vm`'s committed image into `target`. Throws CkptError: CKPT_ERR_RESTORE_NO_IMAGE,
 * CKPT_ERR_RESTORE_STALE (unless allowStale), CKPT_ERR_RESTORE_DIGEST (bytes do not hash to the
 * committed digest), CKPT_ERR_RESTORE_BUSY (someone else held the fence for all of fenceWaitMs), or a Redis error.
 */
export async function restoreImage(store: StandbyStore, vm: string, target: RestoreTarget, opts: RestoreOptions = {}): Promise<RestoredImage> {
  const log = opts.log ?? silentLogger;
  const ttl = opts.fenceTtlMs ?? 10_000;
  // Says who holds the fence, for whoever has to wait for it (see fenceHolder()).
  const token = `restore-${hostname()}-${process.pid}-${randomBytes(6).toString('hex')}`;
  let outcome: RestoreOutcome = 'error';
  let fenced = false;
  let refresher: NodeJS.Timeout | undefined;
  let fenceLost = false;
  let opened = false;
  let fenceWaitMs = 0;
  // Started once the fence is held: time spent waiting for someone else's fence is not restore time.
  let t0 = performance.now();
  let end: (() => number) | undefined;
  try {
    if (!opts.unsafeNoFence) {
      const maxWaitMs = opts.fenceWaitMs ?? 30_000;
      const waitStart = performance.now();
      let holder: string | null = null;
      let holderTtlMs: number | null = null;
      let said = false;
      let waitedAtAll = false;
      const notFenced = (): CkptError => interrupted(vm, opts.signal!, false);
      const acquire = (): Promise<boolean> => interruptibleTake(store.acquireFence(vm, token, ttl), opts.signal, notFenced, () => store.releaseFence(vm, token));
      while (!(await acquire())) {
        waitedAtAll = true;
        checkInterrupted(vm, opts.signal, false);
        if (!said) {
          said = true;
          const h = await interruptible(store.fenceHolder(vm), opts.signal, notFenced);
          holder = h.holder;
          holderTtlMs = h.ttlMs;
          log.warn(`${vm} is fenced by ${holder ?? 'another holder'}${h.ttlMs === null ? '' : ` (for ${(h.ttlMs / 1000).toFixed(1)} s more unless it is refreshed)`}: waiting up to ${maxWaitMs / 1000} s for the fence`,
            { vm, holder, holderTtlMs: h.ttlMs, maxWaitMs });
        }
        const waited = performance.now() - waitStart;
        if (waited > maxWaitMs) {
          const left = (await store.fenceHolder(vm)).ttlMs ?? holderTtlMs;
          throw new CkptError('CKPT_ERR_RESTORE_BUSY', `cannot restore ${vm}: its fence (${store.keys(vm).fence}) is still held by ${holder ?? 'another holder'} after waiting ${maxWaitMs / 1000} s; `
            + `try again once that restore (or standby forget) is done. A holder that died (kill -9) stops refreshing it, and it expires by itself${left === null ? '' : ` in ${(left / 1000).toFixed(1)} s`}; `
            + `if that holder is certainly gone, \`npm run standby -- unfence --vm ${vm}\` removes it now`,
            { retriable: true, context: { vm, holder, fenceWaitMs: Math.round(waited) } });
        }
        await sleep(100);
      }
      // 0 when the fence was free: the one SET NX round trip is not a wait.
      fenceWaitMs = waitedAtAll ? performance.now() - waitStart : 0;
      fenced = true;
      refresher = setInterval(() => {
        store.refreshFence(vm, token, ttl).then((held) => { if (!held) fenceLost = true; }, () => { fenceLost = true; });
      }, Math.max(50, Math.floor(ttl / 3)));
    }
    t0 = performance.now();
    end = opts.metrics?.durationSeconds.startTimer();
    const stopped = (): CkptError => interrupted(vm, opts.signal!, !opts.unsafeNoFence);
    const meta = await interruptible(store.readMeta(vm), opts.signal, stopped);
    if (!meta) throw new CkptError('CKPT_ERR_RESTORE_NO_IMAGE', `no standby image of ${vm} in Redis (prefix ${store.prefix})`);
    if (meta.state !== 'ok' && !opts.allowStale) {
      outcome = 'refused-stale';
      throw new CkptError('CKPT_ERR_RESTORE_STALE', `the standby image of ${vm} is stale (${meta.staleReason}): it is epoch ${meta.generation}/${meta.epoch}, committed ${new Date(meta.committedAtMs).toISOString()}, but newer epochs were lost; pass --allow-stale to restore it anyway`);
    }
    // Before any page is read: the page digest does not cover the vCPU state, this does.
    const vcpuDigest = meta.vcpuDigest ? vcpuStatesDigest(meta.vcpuStates) : '';
    if (vcpuDigest !== meta.vcpuDigest) {
      outcome = 'refused-digest';
      throw new CkptError('CKPT_ERR_RESTORE_DIGEST', `the vCPU state of ${vm}'s standby image does not verify: it hashes to ${vcpuDigest}, epoch ${meta.generation}/${meta.epoch} was applied with ${meta.vcpuDigest}; refusing to restore it`);
    }
    if (!meta.vcpuDigest) log.warn(`${vm}'s standby image stores no digest of its vCPU states (applied before 2026-11-25, or the field was removed): its pages are verified, its vCPU states are not`, { vm, generation: meta.generation, epoch: meta.epoch });
    const layout: ImageLayout = { vm, pageSize: meta.pageSize, slots: meta.slots, vcpus: meta.vcpus, vcpuStateBytes: Math.max(0, ...meta.vcpuStates.map((b) => b.byteLength)) };
    checkInterrupted(vm, opts.signal);
    await target.open(layout);
    opened = true;
    const slotIndex = new Map(meta.slots.map((s, i) => [s.id, i]));
    const digest = new ChunkDigest(vm, meta.pageSize);
    let pagesFound = 0;
    const pagesListed = await interruptible(store.forEachChunk(vm, meta.generation, meta.slots, meta.pageSize, (slot, chunk, bytes, pagesRead) => {
      checkInterrupted(vm, opts.signal);
      digest.add(slot, chunk, bytes); // whole pages: it refuses anything else
      pagesFound += pagesRead; // the pages Redis held, not the zero gaps between them
      target.write(slotIndex.get(slot)!, chunk * CHUNK_PAGES, bytes);
    }, opts.window ?? 4, opts.afterWindow), opts.signal, stopped);
    if (fenceLost) throw new CkptError('CKPT_ERR_RESTORE_FENCE_LOST', `the fence of ${vm} expired or was taken while reading: the read may mix epochs; try again (or raise the fence TTL)`, { retriable: true });
    const recomputed = digest.digest.toHex();
    if (recomputed !== meta.digest) {
      outcome = 'refused-digest';
      // Which failure it is, where that shows: pages gone (evicted, deleted) or bytes changed.
      const why = pagesFound < pagesListed
        ? `; ${pagesListed - pagesFound} of its ${pagesListed} pages are missing from Redis (evicted under a maxmemory policy, or deleted)`
        : '; every page it lists is there, so page bytes were changed';
      throw new CkptError('CKPT_ERR_RESTORE_DIGEST', `the standby image of ${vm} does not verify: its bytes hash to ${recomputed}, epoch ${meta.generation}/${meta.epoch} was committed with digest ${meta.digest}${why}; refusing to restore it`);
    }
    const image = toImage(vm, meta, pagesFound * meta.pageSize, performance.now() - t0, fenceWaitMs);
    checkInterrupted(vm, opts.signal);
    await target.finish(image);
    outcome = image.state === 'ok' ? 'ok' : 'ok-stale';
    opts.metrics?.bytes.inc(image.imageBytes);
    opts.metrics?.throughput.set(image.imageBytes / (image.durationMs / 1000));
    opts.metrics?.lastSuccess.set(Date.now() / 1000);
    log.info('image restored', { vm, generation: image.generation, epoch: image.epoch, digest: image.digest, bytes: image.imageBytes, ms: Math.round(image.durationMs), fenceWaitMs: Math.round(fenceWaitMs), mbps: image.mbps });
    return image;
  } catch (err) {
    if (opened) await Promise.resolve(target.abort()).catch(() => undefined);
    throw err;
  } finally {
    if (refresher) clearInterval(refresher);
    if (fenced) {
      const release = store.releaseFence(vm, token).catch((err: unknown) => log.warn('cannot release the fence; it expires by itself', { vm, err }));
      // Interrupted, a Redis that does not answer gets a second for it: the fence expires by itself.
      await (opts.signal?.aborted ? Promise.race([release, sleep(1000)]) : release);
    }
    const seconds = end?.();
    opts.metrics?.restores.inc({ outcome });
    if (seconds !== undefined) opts.metrics?.lastDurationSeconds.set(seconds);
    opts.metrics?.lastEnd.set({ outcome }, Date.now() / 1000);
  }
}

function toImage(vm: string, m: StandbyMeta, bytesRead: number, ms: number, fenceWaitMs: number): RestoredImage {
  const imageBytes = m.slots.reduce((n, s) => n + s.pages * m.pageSize, 0);
  return {
    vm, generation: m.generation, epoch: m.epoch, digest: m.digest, state: m.state, staleReason: m.staleReason, pageSize: m.pageSize, slots: m.slots,
    vcpuStates: m.vcpuStates, guestCounters: m.guestCounters, committedAtMs: m.committedAtMs, appliedAtMs: m.appliedAtMs,
    vcpuVerified: m.vcpuDigest !== '', bytesRead, imageBytes, durationMs: ms, fenceWaitMs, mbps: Number((imageBytes / (ms / 1000) / 1e6).toFixed(1)),
  };
}
