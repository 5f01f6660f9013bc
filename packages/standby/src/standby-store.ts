/**
 * The standby image in Redis (layout in keys.ts): staging an epoch's batches as they arrive, checking
 * its digest, and making it visible atomically; marking an image stale; reading it back.
 *
 * Durability: every method resolves once Redis has acknowledged its writes; with AOF and
 * `appendfsync always` (the embedded default) that means on disk.
 */
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import { CkptError, Digest64, pageHash } from '@ckpt/common';
import type { EpochBegin, EpochCommit, PageBatch, SlotInfo } from '@ckpt/proto';
import { APPLY_EPOCH_LUA, COMMIT_BASELINE_LUA, FENCE_REFRESH_LUA, FENCE_RELEASE_LUA, MARK_STALE_LUA, MISSING_PAGES_LUA, RUN_CLAIM_REFRESH_LUA, ZERO_BASELINE_PAGES_LUA } from './lua.ts';
import { CHUNK_PAGES, DEFAULT_PREFIX, hashValue, pageField, validVmId, VmKeys } from './keys.ts';

export type ImageState = 'ok' | 'stale';

export interface StandbyMeta {
  generation: number;
  epoch: number;
  digest: string;
  state: ImageState;
  staleReason: string;
  pageSize: number;
  slots: SlotInfo[];
  vcpus: number;
  vcpuStates: Buffer[];
  /**
   * vcpuStatesDigest() of the states as the replicator applied them: the page digest does not cover
   * them, this does. '' on images applied before 2026-11-25.
   */
  vcpuDigest: string;
  guestCounters: number[];
  /**
   * The harvester's clock: when the pause that captured the epoch began (the guest time the image
   * holds; images applied before 2026-11-25 have the commit time here) and when it committed the
   * epoch; then when it was applied here.
   */
  pausedAtMs: number;
  committedAtMs: number;
  appliedAtMs: number;
}

/**
 * Pages of `batch` marked zero that staging and the apply clear one by one (a staged hash field and a
 * key each): a delta's zero pages. Zero marks carry no bytes, so without a bound a record of a few bytes
 * could ask for billions of them. (A baseline's zero marks cost at most the pages its generation holds:
 * ZERO_BASELINE_PAGES_LUA.)
 */
export function zeroMarkWork(asm: Pick<Assembly, 'baseline'>, batch: Pick<PageBatch, 'slots' | 'counts' | 'zero'>): number {
  if (asm.baseline) return 0;
  let work = 0;
  for (let i = 0; i < batch.slots.length; i++) if (batch.zero[i] === 1) work += batch.counts[i]!;
  return work;
}

/** The epoch being assembled (persisted in the asm hash, so a restarted replicator resumes it). */
export interface Assembly {
  generation: number;
  epoch: number;
  baseline: boolean;
  begin: EpochBegin;
  /** Batches staged so far: the next expected batch seq. */
  nextSeq: number;
  stagedBytes: number;
  /** Baselines only: per slot, the highest page written so far in this epoch (-1: none). */
  maxWritten: Record<number, number>;
  /** Pages staged as zero that the apply clears one by one (bounded: see the replicator's zeroMarkWork). Absent in assemblies from before 2026-11-25. */
  zeroMarks?: number;
}

export type ApplyOutcome =
  | { result: 'applied'; digest: string }
  | { result: 'already' }
  | { result: 'fenced' }
  | { result: 'digest-mismatch'; expected: string; computed: string }
  | { result: 'conflict'; detail: string };

const ZERO_HASH = Buffer.alloc(0);

/** One VM of listImages(): its record, or why that record cannot be used. */
export type ListedImage = { vm: string; meta: StandbyMeta; problem?: undefined } | { vm: string; meta?: undefined; problem: string };

/** vCPUs a standby record may name (the harvester runs at most 64). */
const MAX_META_VCPUS = 4096;

function num(b: Buffer | undefined, dflt = 0): number {
  if (!b) return dflt;
  const n = Number(b.toString());
  return Number.isFinite(n) ? n : dflt;
}

export class StandbyStore {
  constructor(readonly redis: Redis, readonly prefix = DEFAULT_PREFIX) {
    redis.defineCommand('ckptApplyEpoch', { lua: APPLY_EPOCH_LUA });
    redis.defineCommand('ckptCommitBaseline', { lua: COMMIT_BASELINE_LUA });
    redis.defineCommand('ckptZeroBaselinePages', { numberOfKeys: 1, lua: ZERO_BASELINE_PAGES_LUA });
    redis.defineCommand('ckptMarkStale', { numberOfKeys: 2, lua: MARK_STALE_LUA });
    redis.defineCommand('ckptMissingPages', { numberOfKeys: 3, lua: MISSING_PAGES_LUA });
    // Both scripts are defined without a fixed key count: callers pass numKeys first.
  }

  keys(vm: string): VmKeys {
    return new VmKeys(vm, this.prefix);
  }

  /**
   * The VM's committed image's record, or null when it has none. Throws CKPT_ERR_STANDBY_CORRUPT, naming
   * the key and the field, when the record is not what this product writes (edited by hand, say): a
   * vCPU count of 50 million ran the replicator and both commands out of memory, bad JSON stopped them
   * with a bare parser message, and a number spelled "01000" kept the replicator retrying for good.
   */
  async readMeta(vm: string): Promise<StandbyMeta | null> {
    const key = this.keys(vm).meta;
    const h = await this.redis.hgetallBuffer(key);
    if (!h.generation) return null;
    const bad = (field: string, why: string): never => {
      throw new CkptError('CKPT_ERR_STANDBY_CORRUPT', `the standby record of ${vm} (${key}) is unusable: ${field} ${why}; this product did not write it so. `
        + `Its image cannot be trusted: \`npm run standby -- forget --vm ${vm}\` deletes it, and the VM's harvester is then asked for a new baseline`, { context: { vm, key, field } });
    };
    const int = (field: string, min: number, max: number): number => {
      const text = h[field]?.toString() ?? '';
      const n = Number(text);
      if (!/^(0|[1-9]\d*)$/.test(text) || !Number.isSafeInteger(n) || n < min || n > max) bad(field, `is ${JSON.stringify(text.slice(0, 40))}, not a whole number from ${min} to ${max}`);
      return n;
    };
    const json = (field: string, valid: (v: unknown) => boolean, what: string): unknown => {
      const text = h[field]?.toString() ?? '';
      let v: unknown;
      try {
        v = JSON.parse(text);
      } catch {
        bad(field, `is not JSON (${JSON.stringify(text.slice(0, 40))})`);
      }
      if (!valid(v)) bad(field, `is not ${what}`);
      return v;
    };
    const generation = int('generation', 1, Number.MAX_SAFE_INTEGER);
    const epoch = int('epoch', 0, Number.MAX_SAFE_INTEGER);
    const pageSize = int('pageSize', 1, 1 << 30);
    if ((pageSize & (pageSize - 1)) !== 0) bad('pageSize', `is ${pageSize}, not a power of two`);
    const vcpus = int('vcpus', 0, MAX_META_VCPUS);
    const slots = json('slots', (v) => Array.isArray(v) && v.every((s) => typeof s === 'object' && s !== null && Number.isSafeInteger((s as SlotInfo).id) && (s as SlotInfo).id >= 0
      && Number.isSafeInteger((s as SlotInfo).pages) && (s as SlotInfo).pages > 0), 'a list of slots ({id, pages})') as SlotInfo[];
    const guestCounters = h.guestCounters ? json('guestCounters', (v) => Array.isArray(v) && v.every((x) => typeof x === 'number'), 'a list of numbers') as number[] : [];
    const vcpuStates: Buffer[] = [];
    for (let i = 0; i < vcpus; i++) vcpuStates.push(h[`vcpu:${i}`] ?? Buffer.alloc(0));
    return {
      generation, epoch, digest: h.digest?.toString() ?? '', state: h.state?.toString() === 'ok' ? 'ok' : 'stale',
      staleReason: h.staleReason?.toString() ?? '', pageSize, slots, vcpus, vcpuStates, vcpuDigest: h.vcpuDigest?.toString() ?? '', guestCounters,
      pausedAtMs: num(h.pausedAtMs) || num(h.committedAtMs), committedAtMs: num(h.committedAtMs), appliedAtMs: num(h.appliedAtMs),
    };
  }

  /** Just the committed (generation, epoch): cheap enough to poll. */
  async readPosition(vm: string): Promise<{ generation: number; epoch: number } | null> {
    const [g, e] = await this.redis.hmget(this.keys(vm).meta, 'generation', 'epoch');
    return g ? { generation: Number(g), epoch: Number(e) } : null;
  }

  /** The epoch being assembled, or null. An assembly that is not JSON is dropped (it only ever holds staged work a baseline redoes). */
  async readAssembly(vm: string): Promise<Assembly | null> {
    const key = this.keys(vm).asm;
    const a = await this.redis.hget(key, 'json');
    if (!a) return null;
    try {
      const asm = JSON.parse(a) as Assembly;
      if (typeof asm === 'object' && asm !== null && Number.isSafeInteger(asm.generation) && Number.isSafeInteger(asm.epoch) && typeof asm.begin === 'object') return asm;
    } catch { /* below */ }
    throw new CkptError('CKPT_ERR_STANDBY_CORRUPT', `the assembly record of ${vm} (${key}) is unusable: not an epoch this product staged (${JSON.stringify(a.slice(0, 40))}); `
      + `\`npm run standby -- forget --vm ${vm}\` deletes it with the VM's standby`, { context: { vm, key } });
  }

  /** Starts assembling an epoch; drops what an abandoned assembly had staged. */
  async startAssembly(vm: string, asm: Assembly, abandoned: Assembly | null): Promise<void> {
    if (abandoned) await this.dropAssembly(vm, abandoned);
    await this.redis.hset(this.keys(vm).asm, 'json', JSON.stringify(asm));
  }

  /** Deletes an assembly's staged keys (and, for a baseline, its whole generation). */
  async dropAssembly(vm: string, asm: Assembly): Promise<void> {
    const k = this.keys(vm);
    const meta = await this.readMeta(vm);
    if (asm.baseline) {
      // Never delete the live generation's keys.
      if (!meta || meta.generation !== asm.generation) await this.deleteGeneration(vm, asm.generation);
    } else {
      // Every staged page has a field in the staged hashes (written in the same MULTI).
      const sh = k.stagedHashes(asm.generation, asm.epoch);
      const prefix = k.stagePrefix(asm.generation, asm.epoch);
      await this.forEachField(sh, '*', async (fields) => { await this.redis.unlink(...fields.map((f) => prefix + f)); });
      await this.redis.unlink(sh, k.stagedBatches(asm.generation, asm.epoch));
    }
    await this.redis.del(k.asm);
  }

  /** Deletes every key of one generation. */
  deleteGeneration(vm: string, generation: number): Promise<number> {
    return this.unlinkMatching(`${this.keys(vm).gen(generation)}:*`, () => true);
  }

  /** HSCAN of a hash: calls `onFields` with each non-empty page of field names matching `match`. */
  private async forEachField(key: string, match: string, onFields: (fields: string[]) => void | Promise<void>): Promise<void> {
    let cursor = '0';
    do {
      const [next, kv] = await this.redis.hscan(key, cursor, 'MATCH', match, 'COUNT', 4096);
      cursor = next;
      const fields: string[] = [];
      for (let i = 0; i < kv.length; i += 2) fields.push(kv[i]!);
      if (fields.length) await onFields(fields);
    } while (cursor !== '0');
  }

  /** The set of VMs whose epochs were applied under this prefix (a hint: listVms() checks each). */
  get vmIndexKey(): string {
    return `${this.prefix}:vms`;
  }

  /**
   * The VMs that have a standby image under this store's prefix, from the index every applied epoch
   * adds its VM to (no SCAN of the keyspace, which holds one key per page). An image last applied
   * before the index existed shows from its next epoch on.
   */
  async listVms(): Promise<string[]> {
    const vms = await this.indexedVms();
    const present = await this.imagesExist(vms);
    return vms.filter((_, i) => present[i]);
  }

  /** The VMs with an image, each with its record, or the problem that makes the record unusable (one bad VM does not hide the others). */
  async listImages(): Promise<ListedImage[]> {
    const vms = await this.indexedVms();
    const metas = await Promise.allSettled(vms.map((vm) => this.readMeta(vm)));
    return vms.flatMap((vm, i): ListedImage[] => {
      const m = metas[i]!;
      if (m.status === 'rejected') {
        if (m.reason instanceof CkptError && m.reason.code === 'CKPT_ERR_STANDBY_CORRUPT') return [{ vm, problem: m.reason.message }];
        throw m.reason as Error;
      }
      return m.value ? [{ vm, meta: m.value }] : [];
    });
  }

  /** The index's members (a VM deleted since may still be there: callers check its meta), sorted. */
  private async indexedVms(): Promise<string[]> {
    return (await this.redis.smembers(this.vmIndexKey)).filter(validVmId).sort();
  }

  /**
   * For each VM, whether it has a standby image (a meta record with a committed epoch), in one round
   * trip. (Stores written before 2026-11-25 may hold a meta record with only a stale mark for a VM
   * whose first records were a gap: no image either.)
   */
  async imagesExist(vms: string[]): Promise<boolean[]> {
    return this.perVm(vms, (p, vm) => p.hexists(this.keys(vm).meta, 'generation'));
  }

  /** One pipelined command per VM whose reply is 0 or 1 (EXISTS, HEXISTS): the replies as booleans. */
  private async perVm(vms: string[], queue: (p: ReturnType<Redis['pipeline']>, vm: string) => void): Promise<boolean[]> {
    if (!vms.length) return [];
    const p = this.redis.pipeline();
    for (const vm of vms) queue(p, vm);
    const res = (await p.exec()) ?? [];
    return vms.map((_, i) => {
      const [err, n] = res[i] ?? [new Error('no reply'), 0];
      if (err) throw err;
      return n === 1;
    });
  }

  /**
   * Deletes every key of one VM (its image and what is staged for it) but its fence and its run
   * claim (a restored guest may still run), and drops it from the index; returns how many keys went.
   * Leaves a tombstone for a day (or until a baseline makes a new image), so replicators tell the
   * deletion from Redis losing the image.
   */
  async deleteVm(vm: string): Promise<number> {
    const k = this.keys(vm);
    // First: a replicator that checks while the keys go must see a deletion, not a loss.
    await this.redis.set(k.forgotten, String(Date.now()), 'EX', 86_400);
    const n = await this.unlinkMatching(`${k.base}:*`, (key) => key.startsWith(`${k.base}:`) && key !== k.fence && key !== k.runClaim && key !== k.forgotten);
    await this.redis.srem(this.vmIndexKey, vm);
    return n;
  }

  /** Per VM, whether `standby forget` deleted its image within the last day (its tombstone). */
  async wereForgotten(vms: string[]): Promise<boolean[]> {
    return this.perVm(vms, (p, vm) => p.exists(this.keys(vm).forgotten));
  }

  /** Deletes every key under this store's prefix, of every VM (a run's own prefix, after the run). */
  deleteAll(): Promise<number> {
    return this.unlinkMatching(`${this.prefix}:*`, () => true);
  }

  /** SCAN + UNLINK of the keys matching `pattern` that `drop` selects; returns how many went. */
  private async unlinkMatching(pattern: string, drop: (key: string) => boolean): Promise<number> {
    let cursor = '0';
    let n = 0;
    do {
      const [next, found] = await this.redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
      cursor = next;
      const victims = found.filter(drop);
      if (victims.length) n += await this.redis.unlink(...victims);
    } while (cursor !== '0');
    return n;
  }

  /**
   * Stages one batch (already validated against the assembly's layout) durably, together with the
   * assembly's progress, in one MULTI. `pages` is the batch's decompressed page bytes. A baseline's
   * pages go straight to its generation's page keys; an incremental epoch's to its staged page keys.
   * Pages whose bytes are all zero are stored as absent, like zero marks.
   */
  async stageBatch(vm: string, asm: Assembly, batch: PageBatch, pages: Uint8Array): Promise<void> {
    const zeroMarks = zeroMarkWork(asm, batch);
    const k = this.keys(vm);
    const ps = asm.begin.pageSize;
    const pw = ps >>> 2;
    const words = new Uint32Array(pages.buffer, pages.byteOffset, pages.byteLength >>> 2);
    const out = new Uint32Array(2);
    const multi = this.redis.multi();
    const g = asm.generation;
    const prefix = asm.baseline ? k.pagePrefix(g) : k.stagePrefix(g, asm.epoch);
    const setArgs: (string | Buffer)[] = [];
    const hashArgs: (string | Buffer)[] = [];
    /** Baselines: pages this epoch wrote earlier that are zero now (their key and hash go). */
    const unset: string[] = [];
    const zeroRanges: string[] = [];
    let dataOff = 0;
    for (let i = 0; i < batch.slots.length; i++) {
      const slot = batch.slots[i]!;
      const first = batch.firsts[i]!;
      const count = batch.counts[i]!;
      const max = asm.baseline ? asm.maxWritten[slot] ?? -1 : -1;
      if (batch.zero[i] === 1) {
        if (asm.baseline) {
          // Pages of a baseline start out zero: only pages this epoch already wrote need zeroing.
          if (first <= max) zeroRanges.push(String(slot), String(first), String(Math.min(count, max - first + 1)));
        } else {
          for (let p = 0; p < count; p++) hashArgs.push(pageField(slot, first + p), ZERO_HASH);
        }
        continue;
      }
      for (let p = 0; p < count; p++) {
        const gfn = first + p;
        const off = dataOff + p * ps;
        pageHash(words, off >>> 2, pw, slot, gfn, out);
        const field = pageField(slot, gfn);
        if (out[0] === 0 && out[1] === 0) {
          if (!asm.baseline) hashArgs.push(field, ZERO_HASH);
          else if (gfn <= max) unset.push(field);
        } else {
          setArgs.push(prefix + field, Buffer.from(pages.buffer, pages.byteOffset + off, ps));
          hashArgs.push(field, hashValue(out[0]!, out[1]!));
        }
      }
      dataOff += count * ps;
      if (asm.baseline) asm.maxWritten[slot] = Math.max(max, first + count - 1);
    }
    // Commands take their arguments in slices: a zero range may span millions of pages.
    sliced(setArgs, (a) => multi.mset(...a));
    if (asm.baseline) {
      sliced(hashArgs, (a) => multi.hset(k.hashes(g), ...a));
      sliced(unset, (a) => multi.hdel(k.hashes(g), ...a));
      sliced(unset, (a) => multi.unlink(...a.map((f) => prefix + f)));
      sliced(zeroRanges, (a) => (multi as unknown as ZeroPages).ckptZeroBaselinePages(k.hashes(g), prefix, ...a), 3 * 2730);
    } else {
      sliced(hashArgs, (a) => multi.hset(k.stagedHashes(g, asm.epoch), ...a));
      multi.hset(k.stagedBatches(g, asm.epoch), String(batch.seq), '1');
    }
    asm.nextSeq = batch.seq + 1;
    asm.stagedBytes += pages.byteLength;
    asm.zeroMarks = (asm.zeroMarks ?? 0) + zeroMarks;
    multi.hset(k.asm, 'json', JSON.stringify(asm));
    await execOrThrow(multi, 'stage a batch');
  }

  /** Checks the assembled epoch's digest and, if it matches, makes the epoch the image atomically. */
  async applyEpoch(vm: string, asm: Assembly, commit: EpochCommit): Promise<ApplyOutcome> {
    const k = this.keys(vm);
    const g = asm.generation;
    const fields = metaFields(asm, commit);
    if (asm.baseline) {
      const digest = await this.sumHashes(k.hashes(g));
      if (digest.toHex() !== commit.digest) return { result: 'digest-mismatch', expected: commit.digest, computed: digest.toHex() };
      const r = String(await (this.redis as unknown as Scripts).ckptCommitBaseline(4, k.meta, k.fence, k.asm, k.forgotten, String(g), ...fields));
      if (r === 'OK') {
        await this.redis.sadd(this.vmIndexKey, vm);
        // The previous generation is no longer reachable; reclaim its keys.
        await this.deleteOtherGenerations(vm, g);
        return { result: 'applied', digest: commit.digest };
      }
      return outcome(r);
    }
    const meta = await this.readMeta(vm);
    if (!meta) return { result: 'conflict', detail: 'no image to apply an incremental epoch to' };
    if (meta.generation === g && meta.epoch === asm.epoch) return { result: 'already' };
    const staged = await this.redis.hgetallBuffer(k.stagedHashes(g, asm.epoch));
    const names = Object.keys(staged);
    const digest = Digest64.fromHex(meta.digest);
    if (names.length) {
      // The pages' current hashes, in slices of one pipeline (an epoch may touch millions of pages).
      const p = this.redis.pipeline();
      sliced(names, (a) => p.hmgetBuffer(k.hashes(g), ...a));
      const res = (await p.exec()) ?? [];
      let i = 0;
      for (const [err, old] of res) {
        if (err) throw err;
        for (const o of old as (Buffer | null)[]) {
          if (o && o.length === 8) digest.sub(o.readUInt32BE(0), o.readUInt32BE(4));
          const n = staged[names[i++]!]!;
          if (n.length === 8) digest.add(n.readUInt32BE(0), n.readUInt32BE(4));
        }
      }
    }
    if (digest.toHex() !== commit.digest) return { result: 'digest-mismatch', expected: commit.digest, computed: digest.toHex() };
    const r = String(await (this.redis as unknown as Scripts).ckptApplyEpoch(
      6, k.meta, k.hashes(g), k.stagedHashes(g, asm.epoch), k.fence, k.asm, k.stagedBatches(g, asm.epoch),
      String(g), String(asm.epoch - 1), String(asm.epoch), k.pagePrefix(g), k.stagePrefix(g, asm.epoch), String(asm.nextSeq), ...fields,
    ));
    if (r !== 'OK') return outcome(r);
    await this.redis.sadd(this.vmIndexKey, vm); // also indexes images older than the index
    return { result: 'applied', digest: commit.digest };
  }

  /**
   * Holds the VM's fence (no epoch is applied while it exists) under `token` for `ttlMs`, so a
   * restorer reads one committed epoch. False if someone else holds it. The TTL frees a VM whose
   * restorer died; refreshFence() extends it.
   */
  async acquireFence(vm: string, token: string, ttlMs: number): Promise<boolean> {
    return this.takeLease(this.keys(vm).fence, token, ttlMs);
  }

  /**
   * Who holds `vm`'s fence and for how much longer, as far as Redis says: the holder is the fence's
   * token (a restorer's is `restore-<host>-<pid>-<random>`, `standby forget`'s `forget-<pid>-<time>`).
   * Nulls when there is no fence or Redis cannot say: this is for messages only.
   */
  async fenceHolder(vm: string): Promise<{ holder: string | null; ttlMs: number | null }> {
    return this.holderOf(this.keys(vm).fence);
  }

  private async holderOf(key: string): Promise<{ holder: string | null; ttlMs: number | null }> {
    try {
      const [holder, ttl] = await Promise.all([this.redis.get(key), this.redis.pttl(key)]);
      return { holder, ttlMs: ttl >= 0 ? ttl : null };
    } catch {
      return { holder: null, ttlMs: null };
    }
  }

  /** Whether someone holds the VM's fence (a restore reading it, `standby forget` deleting it). */
  async isFenced(vm: string): Promise<boolean> {
    return (await this.redis.exists(this.keys(vm).fence)) === 1;
  }

  /** Extends a fence this token holds; false if it is no longer held (expired or taken). */
  async refreshFence(vm: string, token: string, ttlMs: number): Promise<boolean> {
    return Number(await this.redis.eval(FENCE_REFRESH_LUA, 1, this.keys(vm).fence, token, String(ttlMs))) === 1;
  }

  /** Drops the fence if this token holds it; true when it did. */
  async releaseFence(vm: string, token: string): Promise<boolean> {
    return this.dropLease(this.keys(vm).fence, token);
  }

  /** The fence and the run claim are leases: a key holding its holder's token, with a TTL. */
  private async takeLease(key: string, token: string, ttlMs: number): Promise<boolean> {
    return (await this.redis.set(key, token, 'PX', ttlMs, 'NX')) === 'OK';
  }

  private async dropLease(key: string, token: string): Promise<boolean> {
    return Number(await this.redis.eval(FENCE_RELEASE_LUA, 1, key, token)) === 1;
  }

  /**
   * Takes `vm`'s run claim under `token` for `ttlMs`: the claim says who runs the restored guest, so a
   * second restorer asked to keep it running (a rescheduled failover pod while the first still runs on
   * a partitioned node) does not start a second copy. False if someone else holds it.
   */
  async acquireRunClaim(vm: string, token: string, ttlMs: number): Promise<boolean> {
    return this.takeLease(this.keys(vm).runClaim, token, ttlMs);
  }

  /** Who holds `vm`'s run claim and for how much longer; nulls when nobody does or Redis cannot say. */
  async runClaimHolder(vm: string): Promise<{ holder: string | null; ttlMs: number | null }> {
    return this.holderOf(this.keys(vm).runClaim);
  }

  /**
   * Extends the run claim `token` holds: 'held'; 'retaken' when nobody held it any more (it expired
   * while Redis was out of reach, or it was deleted by hand) and this token took it again;
   * 'lost' when someone else holds it.
   */
  async refreshRunClaim(vm: string, token: string, ttlMs: number): Promise<'held' | 'retaken' | 'lost'> {
    const r = Number(await this.redis.eval(RUN_CLAIM_REFRESH_LUA, 1, this.keys(vm).runClaim, token, String(ttlMs)));
    return r === 1 ? 'held' : r === 2 ? 'retaken' : 'lost';
  }

  /** Drops the run claim if this token holds it; true when it did. */
  async releaseRunClaim(vm: string, token: string): Promise<boolean> {
    return this.dropLease(this.keys(vm).runClaim, token);
  }

  /**
   * Flags the image stale: it stays the last committed epoch, but must not be trusted as current.
   * With `expect`, only if the image and the assembly are still what the caller saw (one atomic
   * compare-and-set, which also deletes the assembly record; its staged keys are the caller's to drop):
   * false when they changed.
   */
  async markStale(vm: string, reason: string, expect?: { meta: StandbyMeta | null; asm: Assembly | null }): Promise<boolean> {
    const k = this.keys(vm);
    if (!expect) {
      await this.redis.hset(k.meta, 'state', 'stale', 'staleReason', reason);
      return true;
    }
    const { meta: m, asm: a } = expect;
    const r = await (this.redis as unknown as MarkStale).ckptMarkStale(k.meta, k.asm,
      m ? String(m.generation) : '', m ? String(m.epoch) : '', m?.state ?? '',
      a ? String(a.generation) : '', a ? String(a.epoch) : '', a ? String(a.nextSeq) : '', reason);
    return r === 'OK';
  }

  /**
   * Scrubs generation `g`'s image for page keys Redis lost: each step (`count` hash fields) is one
   * script, so applies interleave with the scrub but never tear a step. Null when the image stopped
   * being generation `g`, went stale, or was fenced meanwhile. `missing` counts pages (a field HSCAN returns twice
   * is counted twice); `fields` names up to 16 of them. `afterStep` is awaited after each step with the
   * fields it checked (the caller's pacing: a step of 250 fields holds Redis for about 0.6 ms).
   */
  async missingPages(vm: string, g: number, afterStep?: (checked: number) => Promise<void>, count = 250): Promise<{ missing: number; fields: string[] } | null> {
    const k = this.keys(vm);
    let cursor = '0';
    let missing = 0;
    const fields: string[] = [];
    do {
      const [next, n, some, checked] = await (this.redis as unknown as MissingPages).ckptMissingPages(k.meta, k.hashes(g), k.fence, String(g), k.pagePrefix(g), cursor, String(count));
      if (n < 0) return null;
      missing += n;
      for (const f of some ?? []) if (fields.length < 16) fields.push(f);
      cursor = next;
      await afterStep?.(checked ?? 0);
    } while (cursor !== '0');
    return { missing, fields };
  }

  /** Which of generation `g`'s page fields have no page key (one round trip). */
  async stillMissing(vm: string, g: number, fields: string[]): Promise<string[]> {
    if (!fields.length) return [];
    const k = this.keys(vm);
    const p = this.redis.pipeline();
    for (const f of fields) p.exists(k.pagePrefix(g) + f);
    const res = (await p.exec()) ?? [];
    return fields.filter((_, i) => res[i]?.[1] === 0);
  }

  async deleteOtherGenerations(vm: string, keep: number): Promise<void> {
    const base = this.keys(vm).base;
    const re = /:g(\d+):/;
    await this.unlinkMatching(`${base}:g*`, (key) => {
      const m = re.exec(key.slice(base.length));
      return m !== null && Number(m[1]) !== keep;
    });
  }

  /** Sum of a hash table's page hashes. */
  async sumHashes(key: string): Promise<Digest64> {
    const d = new Digest64();
    let cursor = '0';
    do {
      const [next, kv] = await this.redis.hscanBuffer(key, cursor, 'COUNT', 4096);
      cursor = next.toString();
      for (let i = 1; i < kv.length; i += 2) {
        const v = kv[i]!;
        if (v.length === 8) d.add(v.readUInt32BE(0), v.readUInt32BE(4));
      }
    } while (cursor !== '0');
    return d;
  }

  /**
   * Reads the image of generation `g`: calls `onChunk` for every chunk (CHUNK_PAGES consecutive pages)
   * that holds a page, in slot and chunk order, with the chunk's bytes up to its last page that exists
   * (whole pages, absent ones zero, 4-byte aligned) and how many of its pages Redis held. One MGET per chunk, `window` chunks per round trip: no per-page round
   * trips. `bytes` is reused: valid only during the call. `afterWindow` (tests) runs between round trips.
   * A sparse image (few pages in a big slot) is read through its hash table instead of probing every page.
   * Resolves with the number of pages the hash table lists (every non-zero page has a hash): a reader that
   * found fewer knows pages are missing.
   */
  async forEachChunk(vm: string, g: number, slots: SlotInfo[], pageSize: number, onChunk: (slot: number, chunk: number, bytes: Buffer, pagesRead: number) => void,
    window = 64, afterWindow?: () => Promise<void>): Promise<number> {
    const k = this.keys(vm);
    const prefix = k.pagePrefix(g);
    const buf = Buffer.alloc(CHUNK_PAGES * pageSize);
    const hashed = await this.redis.hlen(k.hashes(g));
    const emit = (slot: number, chunk: number, gfns: number[] | null, vals: (Buffer | null)[]): void => {
      let end = 0; // bytes of buf holding this chunk so far; pages skipped on the way are zeroed
      let read = 0;
      for (let i = 0; i < vals.length; i++) {
        const v = vals[i];
        if (!v) continue;
        read++;
        const p = gfns ? gfns[i]! - chunk * CHUNK_PAGES : i;
        if (v.byteLength !== pageSize) throw new CkptError('CKPT_ERR_STANDBY_CORRUPT', `page ${slot}:${chunk * CHUNK_PAGES + p} of ${vm} holds ${v.byteLength} bytes, not ${pageSize}`);
        if (p * pageSize > end) buf.fill(0, end, p * pageSize);
        buf.set(v, p * pageSize);
        end = (p + 1) * pageSize;
      }
      if (end > 0) onChunk(slot, chunk, buf.subarray(0, end), read);
    };
    for (const s of slots) {
      if (s.pages > 1 << 16 && hashed * 16 < s.pages) {
        await this.forEachSparseChunk(vm, g, s.id, window, emit, afterWindow);
        continue;
      }
      const chunks = Math.ceil(s.pages / CHUNK_PAGES);
      for (let c = 0; c < chunks; c += window) {
        const lists: string[][] = [];
        for (let i = 0; i < Math.min(window, chunks - c); i++) {
          const keys: string[] = [];
          for (let gfn = (c + i) * CHUNK_PAGES; gfn < Math.min(s.pages, (c + i + 1) * CHUNK_PAGES); gfn++) keys.push(prefix + pageField(s.id, gfn));
          lists.push(keys);
        }
        (await this.mgetEach(lists)).forEach((vals, i) => emit(s.id, c + i, null, vals));
        await afterWindow?.();
      }
    }
    return hashed;
  }

  /** forEachChunk() over the pages of one slot that the hash table lists (every non-zero page has a hash). */
  private async forEachSparseChunk(vm: string, g: number, slot: number, window: number,
    emit: (slot: number, chunk: number, gfns: number[], vals: (Buffer | null)[]) => void, afterWindow?: () => Promise<void>): Promise<void> {
    const k = this.keys(vm);
    const found: number[] = [];
    const field = `${slot}:`;
    await this.forEachField(k.hashes(g), `${field}*`, (fields) => { for (const f of fields) found.push(Number(f.slice(field.length))); });
    found.sort((a, b) => a - b);
    const groups: number[][] = [];
    for (const gfn of found) {
      const last = groups.at(-1);
      if (last && Math.floor(last[0]! / CHUNK_PAGES) === Math.floor(gfn / CHUNK_PAGES)) last.push(gfn);
      else groups.push([gfn]);
    }
    for (let c = 0; c < groups.length; c += window) {
      const part = groups.slice(c, c + window);
      (await this.mgetEach(part.map((gfns) => gfns.map((gfn) => k.page(g, slot, gfn)))))
        .forEach((vals, i) => emit(slot, Math.floor(part[i]![0]! / CHUNK_PAGES), part[i]!, vals));
      await afterWindow?.();
    }
  }

  /** One MGET per key list, all in one round trip; each list's values in order (null: absent). */
  private async mgetEach(lists: string[][]): Promise<(Buffer | null)[][]> {
    const p = this.redis.pipeline();
    for (const keys of lists) p.mgetBuffer(...keys);
    return ((await p.exec()) ?? []).map(([err, v]) => {
      if (err) throw err;
      return v as (Buffer | null)[];
    });
  }

  /** Recomputes the digest of generation `g`'s image from its bytes. */
  async computeImageDigest(vm: string, g: number, slots: SlotInfo[], pageSize: number): Promise<Digest64> {
    const d = new ChunkDigest(vm, pageSize);
    await this.forEachChunk(vm, g, slots, pageSize, (slot, chunk, bytes) => d.add(slot, chunk, bytes));
    return d.digest;
  }
}

/**
 * Adds chunks read from Redis (forEachChunk: whole pages, absent ones zero) to an image digest,
 * hashing the pages where they are (a chunk whose bytes are not 4-byte aligned is copied first).
 */
export class ChunkDigest {
  readonly digest = new Digest64();
  private readonly scratch: Uint8Array;
  private readonly out = new Uint32Array(2);

  constructor(private readonly vm: string, private readonly pageSize: number) {
    this.scratch = new Uint8Array(CHUNK_PAGES * pageSize);
  }

  /** Hashes the chunk's pages; returns how many pages it holds. */
  add(slot: number, chunk: number, bytes: Uint8Array): number {
    if (bytes.byteLength > this.scratch.byteLength || bytes.byteLength % this.pageSize !== 0) {
      throw new CkptError('CKPT_ERR_STANDBY_CORRUPT', `chunk ${slot}:${chunk} of ${this.vm} holds ${bytes.byteLength} bytes, not whole pages of ${this.pageSize} bytes up to ${CHUNK_PAGES} pages`);
    }
    let src = bytes;
    if (bytes.byteOffset % 4 !== 0) {
      this.scratch.set(bytes);
      src = this.scratch.subarray(0, bytes.byteLength);
    }
    const words = new Uint32Array(src.buffer, src.byteOffset, src.byteLength >>> 2);
    const pw = this.pageSize >>> 2;
    const pages = bytes.byteLength / this.pageSize;
    for (let p = 0; p < pages; p++) {
      pageHash(words, p * pw, pw, slot, chunk * CHUNK_PAGES + p, this.out);
      this.digest.add(this.out[0]!, this.out[1]!);
    }
    return pages;
  }
}

/** Calls `f` with consecutive slices of `args` (`size` must be a multiple of the group size, so field/value pairs or triples stay whole). */
function sliced<T>(args: T[], f: (a: T[]) => unknown, size = 8192): void {
  for (let i = 0; i < args.length; i += size) f(args.slice(i, i + size));
}

interface ZeroPages {
  ckptZeroBaselinePages(hashesKey: string, pagePrefix: string, ...ranges: string[]): unknown;
}

interface MissingPages {
  ckptMissingPages(meta: string, hashes: string, fence: string, ...args: string[]): Promise<[string, number, string[] | undefined, number | undefined]>;
}

interface MarkStale {
  ckptMarkStale(meta: string, asm: string, ...args: string[]): Promise<string>;
}

interface Scripts {
  ckptApplyEpoch(numKeys: number, ...args: (string | Buffer)[]): Promise<unknown>;
  ckptCommitBaseline(numKeys: number, ...args: (string | Buffer)[]): Promise<unknown>;
}

function outcome(r: string): ApplyOutcome {
  if (r === 'ALREADY') return { result: 'already' };
  if (r === 'FENCED') return { result: 'fenced' };
  return { result: 'conflict', detail: r };
}

/**
 * SHA-256 (hex) of an epoch's vCPU states: their count, then each one's length and bytes. Stored with
 * the image, so a restore can tell the states it loads are the ones applied.
 */
export function vcpuStatesDigest(states: readonly Uint8Array[]): string {
  const h = createHash('sha256');
  const n = Buffer.alloc(4);
  n.writeUInt32LE(states.length);
  h.update(n);
  for (const s of states) {
    const len = Buffer.alloc(4);
    len.writeUInt32LE(s.byteLength);
    h.update(len).update(s);
  }
  return h.digest('hex');
}

function metaFields(asm: Assembly, c: EpochCommit): (string | Buffer)[] {
  const f: (string | Buffer)[] = [
    'generation', String(asm.generation), 'epoch', String(asm.epoch), 'digest', c.digest, 'state', 'ok',
    'pageSize', String(asm.begin.pageSize), 'slots', JSON.stringify(asm.begin.slots), 'vcpus', String(c.vcpuStates.length),
    'guestCounters', JSON.stringify(c.guestCounters), 'pausedAtMs', String(c.pausedAtMs), 'committedAtMs', String(c.committedAtMs), 'appliedAtMs', String(Date.now()),
    'pauseUs', String(c.pauseUs), 'vcpuDigest', vcpuStatesDigest(c.vcpuStates),
  ];
  c.vcpuStates.forEach((s, i) => f.push(`vcpu:${i}`, Buffer.from(s.buffer, s.byteOffset, s.byteLength)));
  return f;
}

async function execOrThrow(multi: ReturnType<Redis['multi']>, what: string): Promise<void> {
  const res = await multi.exec();
  if (!res) throw new CkptError('CKPT_ERR_REDIS', `cannot ${what}: the transaction was discarded`, { retriable: true });
  for (const [err] of res) if (err) throw new CkptError('CKPT_ERR_REDIS', `cannot ${what}: ${err.message}`, { retriable: true });
}
