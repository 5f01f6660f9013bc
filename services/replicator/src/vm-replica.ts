/**
 * The replicator's decisions, one record at a time, per VM: assemble an epoch's begin, batches and
 * commit; stage batches durably as they arrive; verify and apply the epoch atomically at its commit;
 * detect gaps and bad records. The standby image is always exactly a committed epoch: anything that
 * cannot complete an epoch leaves the image as it is (marked stale when continuity is lost) and asks
 * the harvester for a baseline.
 */
import { CkptError, type Logger } from '@ckpt/common';
import { batchPages, decodeEpochRecord, generationTooFarAhead, WireError, type EpochBegin, type EpochRecord, type PageBatch } from '@ckpt/proto';
import { validVmId, zeroMarkWork, type Assembly, type StandbyMeta, type StandbyStore } from '@ckpt/standby';
import type { DeadLetterReason, GapReason, ReplicatorMetrics } from './metrics.ts';

export type { DeadLetterReason } from './metrics.ts';

export interface ReplicaHooks {
  /** Parks the record being handled on the dead-letter topic. */
  deadLetter(vm: string | null, reason: DeadLetterReason, detail: string): Promise<void>;
  requestResync(vm: string, reason: string, generation: number, epoch: number): Promise<void>;
  /** The record was handled: (generation, epoch, part) of the VM is processed. */
  processed(vm: string, rec: EpochRecord, replica: VmReplica): void;
}

export interface ApplierOptions {
  maxRecordBytes: number;
  /** While a VM is stale, repeat the resync request this often. */
  resyncRetryMs: number;
  /** A fence holding applies back is logged once it held them this long (default 5 s), then every `fenceLogEveryMs` (30 s). */
  fenceQuietMs?: number;
  fenceLogEveryMs?: number;
  /** An assembly without a record for this long is abandoned as far as assembling() is concerned (default 60 s). */
  assemblyIdleMs?: number;
  /** A VM with a record handled within this long has records flowing (default 10 s; see RECORDS_FLOWING_MS). */
  recordsFlowingMs?: number;
}

export type HandleResult = 'done' | 'retry';

/** A record whose staging write is still in flight: `settled` resolves with null once it is durable, or with the error. */
export interface InFlight {
  settled: Promise<Error | null>;
}

const toError = (err: unknown): Error => (err instanceof Error ? err : new Error(String(err)));

/** A fence that holds applies back for less than this is a restore doing its work: not logged. */
const FENCE_QUIET_MS = 5000;
/** While a fence holds a VM's applies back, it is logged this often. */
const FENCE_LOG_EVERY_MS = 30_000;

/**
 * A VM with a record handled within this long has records flowing: what the periodic checks (scrub,
 * rollback, lost image) find is then acted on in the records' own order, or left to the apply path,
 * never beside a record in flight.
 */
const RECORDS_FLOWING_MS = 10_000;

/** Epochs in a row of one older generation after which its harvester is asked for a new one (see olderGeneration()). */
const BEHIND_EPOCHS = 3;

/** What the replicator knows of one VM (loaded from Redis on first sight). */
export interface VmReplica {
  vm: string;
  meta: StandbyMeta | null;
  asm: Assembly | null;
  stale: boolean;
  lastResyncAtMs: number;
  /** Highest epoch seen in the newest generation seen. */
  seen: { generation: number; epoch: number };
  /** An older generation than the image's whose epochs keep coming (see olderGeneration()). */
  behind?: { generation: number; epoch: number; count: number };
  /** Since when (ms) applies of this VM wait on a restorer's fence, and when that was last logged. */
  fenced?: { sinceMs: number; loggedMs: number };
  /** When a record of this VM was last handled (see Applier.assembling()). */
  lastRecordAtMs?: number;
  /** Pages a scrub found missing (in that generation) while records flowed: marked stale at the next delta's begin. */
  pagesLost?: { generation: number; detail: string };
}

/**
 * Thrown when the cached state of a VM turned out older than Redis's: the record is handled again.
 * Retriable: it means another member is moving the VM (a rebalance overlap), never a bad record.
 */
class StaleCache extends Error {
  readonly retriable = true;
}

const sameLayout = (a: EpochBegin, m: StandbyMeta): boolean =>
  a.pageSize === m.pageSize && a.slots.length === m.slots.length && a.slots.every((s, i) => s.id === m.slots[i]!.id && s.pages === m.slots[i]!.pages);

export class Applier {
  readonly replicas = new Map<string, VmReplica>();
  /**
   * VMs this instance applied or read an image of, and of those the ones whose image then vanished
   * (imageLost()). Kept apart from `replicas`, which forget() clears at every failed record and group
   * join: a Redis restart does both, at the moment this knowledge is needed.
   */
  private readonly knownImages = new Set<string>();
  private readonly lostImages = new Set<string>();

  constructor(private readonly store: StandbyStore, private readonly hooks: ReplicaHooks, private readonly metrics: ReplicatorMetrics,
    private readonly log: Logger, private readonly opts: ApplierOptions) {}

  /** Forgets cached state (after a partition was revoked, another instance may change it). */
  forget(vm?: string): void {
    if (vm) this.replicas.delete(vm);
    else this.replicas.clear();
  }

  /** Forgets a VM for good: its image was deleted on purpose (`standby forget`), or never made here. */
  dropVm(vm: string): void {
    this.replicas.delete(vm);
    this.knownImages.delete(vm);
    this.lostImages.delete(vm);
  }

  /**
   * True while an epoch of the VM is being assembled here and its records keep coming (staging writes
   * may be in flight). An assembly its harvester abandoned (killed during its first baseline, say) is
   * idle after `assemblyIdleMs` (60 s) without a record, and then no longer keeps the VM's series.
   */
  assembling(vm: string): boolean {
    const r = this.replicas.get(vm);
    return !!r?.asm && Date.now() - (r.lastRecordAtMs ?? 0) < (this.opts.assemblyIdleMs ?? 60_000);
  }

  /**
   * Reloads a VM whose image in Redis is behind what this instance last applied or read (Redis restarted
   * on an older AOF/RDB, or failed over to a lagging replica): without records to apply, its gauges
   * (standby age, last applied epoch) kept reporting the newer epoch, so the live RPO read low by the
   * whole rollback. True when it was behind.
   */
  async checkRolledBack(vm: string): Promise<boolean> {
    const r = this.replicas.get(vm);
    // Records flowing: the apply path finds a rollback itself (a missing epoch), and a position read
    // beside an apply in flight could look behind. Idle, it is never transient: the cache takes an
    // image's position from Redis after the apply, and other members only move it on.
    if (r && this.flowing(r)) return false;
    if (!r?.meta || r.stale) {
      // Not cached (forget() cleared it), or cached without an image or stale (an image put back, or
      // applied by another member): Redis's view, for the gauges. Without a cached position to compare,
      // a rollback is not logged here.
      await this.reload(vm);
      return false;
    }
    const pos = await this.store.readPosition(vm);
    if (!pos || this.replicas.get(vm) !== r || !r.meta) return false;
    const behind = pos.generation < r.meta.generation || (pos.generation === r.meta.generation && pos.epoch < r.meta.epoch);
    if (!behind) return false;
    this.log.warn('the standby image in Redis is older than the epoch this replicator applied: Redis lost writes (restarted on an older snapshot, or failed over to a lagging replica)',
      { vm, applied: `${r.meta.generation}/${r.meta.epoch}`, redisHolds: `${pos.generation}/${pos.epoch}` });
    await this.reload(vm);
    return true;
  }

  /** Whether a record of the VM was handled within recordsFlowingMs. */
  private flowing(r: VmReplica): boolean {
    return Date.now() - (r.lastRecordAtMs ?? 0) < (this.opts.recordsFlowingMs ?? RECORDS_FLOWING_MS);
  }

  /** Drops the VM's cached state and loads it from Redis again. */
  private async reload(vm: string): Promise<VmReplica> {
    this.replicas.delete(vm);
    return this.replica(vm);
  }

  /** Loads a VM's state from Redis (if not cached) so its gauges report it before any record of it arrives. */
  async watch(vm: string): Promise<void> {
    await this.replica(vm);
  }

  private async replica(vm: string): Promise<VmReplica> {
    let r = this.replicas.get(vm);
    if (!r) {
      const [meta, asm] = await Promise.all([this.store.readMeta(vm), this.store.readAssembly(vm)]);
      // Another caller (watch() and a record, say) may have loaded it meanwhile and moved it on.
      const loaded = this.replicas.get(vm);
      if (loaded) return loaded;
      r = { vm, meta, asm, stale: meta?.state === 'stale', lastResyncAtMs: 0, seen: { generation: meta?.generation ?? 0, epoch: meta?.epoch ?? -1 } };
      this.replicas.set(vm, r);
      if (meta) this.metrics.noteStandbyEpoch(vm, meta.epoch, meta.pausedAtMs);
      this.updateGauges(r);
    }
    return r;
  }

  /** Parks a record that failed with an unexpected error; the key's VM (if valid) loses continuity. */
  async poison(key: string | null, detail: string): Promise<void> {
    await this.hooks.deadLetter(key, 'invalid', `unexpected error: ${detail}`);
    if (key === null || !validVmId(key)) return;
    let r: VmReplica;
    try {
      r = await this.reload(key); // after an unexpected error, judge from what Redis holds
    } catch (err) {
      // A standby record this product did not write cannot be marked stale either: its records are
      // parked (as this one) until an operator deletes it, and the partition's other VMs go on.
      if (err instanceof CkptError && err.code === 'CKPT_ERR_STANDBY_CORRUPT') {
        this.log.error('a VM\'s standby record is unusable; its records are parked until it is deleted', { vm: key, err });
        return;
      }
      throw err;
    }
    await this.breakContinuity(r, 'missing-batch', `a record could not be handled: ${detail}`);
  }

  /**
   * Handles one raw record of the pages topic and waits until its effect is durable. `key` is the
   * Kafka message key.
   */
  async handle(raw: Buffer, key: string | null): Promise<HandleResult> {
    const rec = await this.parse(raw, key);
    if (!rec) return 'done';
    const r = await this.apply(rec);
    if (typeof r === 'string') return r;
    const err = await r.settled;
    if (err) throw err;
    return 'done';
  }

  /**
   * Decodes and vets a raw record. A record that is unusable as such (oversize, malformed, unknown
   * schema version, bad VM id, key mismatch) is parked on the dead-letter topic: null.
   */
  async parse(raw: Buffer, key: string | null): Promise<EpochRecord | null> {
    if (raw.byteLength > this.opts.maxRecordBytes) {
      this.metrics.records.inc({ kind: 'bad' });
      await this.hooks.deadLetter(key, 'oversize', `record of ${raw.byteLength} bytes exceeds the limit of ${this.opts.maxRecordBytes}`);
      return null;
    }
    if (raw.byteLength === 0) {
      this.metrics.records.inc({ kind: 'bad' });
      await this.hooks.deadLetter(key, 'malformed', 'an empty record (a tombstone, or a record without a value)');
      return null;
    }
    let rec: EpochRecord;
    try {
      rec = decodeEpochRecord(raw);
    } catch (err) {
      this.metrics.records.inc({ kind: 'bad' });
      const reason: DeadLetterReason = err instanceof WireError ? (err.code === 'CKPT_ERR_WIRE_MALFORMED' ? 'malformed' : err.code === 'CKPT_ERR_WIRE_VERSION' ? 'schema-version' : 'invalid') : 'malformed';
      await this.hooks.deadLetter(key, reason, (err as Error).message);
      return null;
    }
    this.metrics.records.inc({ kind: rec.kind });
    if (!validVmId(rec.vm)) {
      await this.hooks.deadLetter(key, 'bad-vm-id', `VM id ${JSON.stringify(rec.vm)} is not usable as a key`);
      return null;
    }
    if (rec.generation === 0) {
      // Harvesters number generations from 1 (by their clock): an image of generation 0 could never be
      // told from no image (it was parked as a duplicate of the missing image, which was marked stale).
      await this.hooks.deadLetter(key, 'invalid', 'generation 0: harvesters number generations from 1');
      return null;
    }
    if (generationTooFarAhead(rec.generation)) {
      // Harvesters number generations by their clock (ms). One far ahead would outrank every real
      // generation for good: a baseline at 2^53 - 1 took over the image, and the harvester's answer to
      // the resync that followed (one above it) was no longer a safe integer.
      await this.hooks.deadLetter(key, 'invalid', `generation ${rec.generation} is more than a day ahead of this replicator's clock (${Date.now()}); harvesters number generations by their clock`);
      return null;
    }
    if (key !== rec.vm) {
      // A record without a key lands on any partition (round robin), out of order with its VM's others:
      // it cannot be applied safely (and a dead letter filed under its body's VM lost its bytes).
      await this.hooks.deadLetter(key, 'key-mismatch', key === null
        ? `record of VM ${rec.vm} arrived without a key: a VM's records must be keyed by its id, which keeps them in order on one partition`
        : `record of VM ${rec.vm} arrived with key ${key}`);
      return null;
    }
    return rec;
  }

  /**
   * Handles a parsed record. A batch that is staged returns with its staging write still in flight
   * (`settled` tells how it ended; it never rejects): the VM's cached state already counts it, so a
   * caller that sees the write fail must forget() the cache and handle the record again. Redis runs one
   * connection's commands in order, so later records' commands see the write's effect.
   */
  async apply(rec: EpochRecord): Promise<HandleResult | InFlight> {
    let r = await this.replica(rec.vm);
    for (let attempt = 0; ; attempt++) {
      try {
        r.lastRecordAtMs = Date.now();
        return await this.handleRecord(r, rec);
      } catch (err) {
        // Another replicator (a rebalance overlaps members for a moment) moved this VM on: reload, retry once.
        if (!(err instanceof StaleCache) || attempt > 0) throw err;
        r = await this.reload(rec.vm);
      }
    }
  }

  private async handleRecord(r: VmReplica, rec: EpochRecord): Promise<HandleResult | InFlight> {
    if (rec.generation > r.seen.generation || (rec.generation === r.seen.generation && rec.epoch > r.seen.epoch)) r.seen = { generation: rec.generation, epoch: rec.epoch };
    let result: HandleResult = 'done';
    switch (rec.kind) {
      case 'begin': await this.onBegin(r, rec); break;
      case 'batch': {
        const staging = await this.onBatch(r, rec);
        if (staging) return { settled: staging.write.then(() => this.finished(r, rec)).then(() => null, (err: unknown) => toError(err)) };
        break;
      }
      case 'commit': result = await this.onCommit(r, rec); break;
    }
    if (result === 'done') await this.finished(r, rec);
    return result;
  }

  /** The record's effect is durable. */
  private async finished(r: VmReplica, rec: EpochRecord): Promise<void> {
    if (r.stale) await this.maybeResync(r, r.meta?.state === 'stale' ? 'still waiting for a baseline' : 'no image');
    this.updateGauges(r);
    this.hooks.processed(rec.vm, rec, r);
  }

  private async onBegin(r: VmReplica, rec: EpochRecord & { kind: 'begin' }): Promise<void> {
    const { generation: g, epoch: e, begin } = rec;
    if (r.asm && r.asm.generation === g && r.asm.epoch === e) {
      await this.hooks.deadLetter(r.vm, 'duplicate', `begin of epoch ${g}/${e} again (its assembly is in progress)`);
      return;
    }
    if (begin.baseline) {
      if (e !== 0) {
        await this.hooks.deadLetter(r.vm, 'invalid', `baseline begin with epoch ${e} (baselines are epoch 0)`);
        return;
      }
      const imageGen = r.meta?.generation ?? 0;
      if (r.asm && g < r.asm.generation) {
        await this.hooks.deadLetter(r.vm, 'old-generation', `baseline of generation ${g} while generation ${r.asm.generation} is being assembled`);
        return;
      }
      if (g === imageGen) {
        await this.hooks.deadLetter(r.vm, 'duplicate', `baseline of generation ${g}; the image is at generation ${imageGen}`);
        return;
      }
      if (g < imageGen) {
        await this.olderGeneration(r, g, e, `baseline of generation ${g}; the image is at generation ${imageGen}`);
        return;
      }
      r.pagesLost = undefined; // the baseline replaces every page
      await this.startAssembly(r, { generation: g, epoch: 0, baseline: true, begin, nextSeq: 0, stagedBytes: 0, maxWritten: {} });
      return;
    }
    // A delta epoch.
    if (r.pagesLost) {
      const lost = r.pagesLost;
      r.pagesLost = undefined;
      // Only against the generation the scrub read: a baseline since replaced every page.
      if (r.meta && !r.stale && r.meta.generation === lost.generation) {
        await this.breakContinuity(r, 'pages-lost', lost.detail);
        return;
      }
    }
    if (r.stale || !r.meta) {
      if (r.meta && g < r.meta.generation) await this.olderGeneration(r, g, e, `epoch ${g}/${e} of a generation older than the image's (${r.meta.generation})`);
      // Only the first such epoch is a gap: breakContinuity() asks for a baseline at once, bypassing
      // resyncRetryMs, so calling it for every epoch until the baseline's begin arrived sent one
      // request per epoch, and the harvester answered the late ones with a second full baseline.
      else if (!r.meta && !r.stale) await this.breakContinuity(r, 'no-image', `epoch ${g}/${e} arrived but there is no image to apply it to`);
      else this.metrics.skippedWhileStale.inc(); // waiting for a baseline
      return;
    }
    const m = r.meta;
    if (g < m.generation) {
      await this.olderGeneration(r, g, e, `epoch ${g}/${e} of a generation older than the image's (${m.generation})`);
      return;
    }
    if (g > m.generation) {
      await this.breakContinuity(r, 'new-generation', `epoch ${g}/${e} of generation ${g} arrived without its baseline (image at ${m.generation}/${m.epoch})`);
      return;
    }
    if (e <= m.epoch) {
      await this.hooks.deadLetter(r.vm, 'duplicate', `epoch ${g}/${e} is already applied (image at epoch ${m.epoch})`);
      return;
    }
    if (e > m.epoch + 1) {
      await this.breakContinuity(r, 'missing-epoch', `epoch ${g}/${e} follows ${m.epoch}: epochs ${m.epoch + 1}..${e - 1} are missing`);
      return;
    }
    if (!sameLayout(begin, m)) {
      await this.hooks.deadLetter(r.vm, 'layout-mismatch', `epoch ${g}/${e} has page size ${begin.pageSize} and slots ${JSON.stringify(begin.slots)}; the image has ${m.pageSize} and ${JSON.stringify(m.slots)}`);
      await this.breakContinuity(r, 'missing-epoch', `epoch ${g}/${e} cannot be applied (layout mismatch)`);
      return;
    }
    await this.startAssembly(r, { generation: g, epoch: e, baseline: false, begin, nextSeq: 0, stagedBytes: 0, maxWritten: {} });
  }

  private async startAssembly(r: VmReplica, asm: Assembly): Promise<void> {
    await this.store.startAssembly(r.vm, asm, r.asm);
    r.asm = asm;
  }

  /** Is this record (batch or commit) for the epoch being assembled? If not, says why and parks it. */
  private async matchAssembly(r: VmReplica, rec: EpochRecord): Promise<Assembly | null> {
    const a = r.asm;
    if (a && a.generation === rec.generation && a.epoch === rec.epoch) return a;
    const m = r.meta;
    if (m && rec.generation === m.generation && rec.epoch <= m.epoch) {
      await this.hooks.deadLetter(r.vm, 'duplicate', `${rec.kind} of epoch ${rec.generation}/${rec.epoch}, which is already applied`);
    } else if (m && rec.generation < m.generation) {
      await this.hooks.deadLetter(r.vm, 'old-generation', `${rec.kind} of generation ${rec.generation}; the image is at ${m.generation}`);
    } else if (r.stale) {
      // Waiting for a baseline: the records of epochs after a gap are of no use.
      this.metrics.skippedWhileStale.inc();
    } else {
      // Judged on cached state: check it first, so a record another member is handling is not parked
      // by mistake. Parked before the mark, so a failed send is retried rather than lost (a retry after
      // the mark would find the VM stale and skip the record); breakContinuity's compare-and-set covers
      // a change after the check.
      await this.ensureFresh(r);
      await this.hooks.deadLetter(r.vm, 'unknown-epoch', `${rec.kind} of epoch ${rec.generation}/${rec.epoch}, whose begin was not seen`);
      await this.breakContinuity(r, 'missing-epoch', `${rec.kind} of epoch ${rec.generation}/${rec.epoch} without its begin`);
    }
    return null;
  }

  /** Returns the staging write, in flight (wrapped: an async function would wait for a promise it returns), or null when the batch is not staged. */
  private async onBatch(r: VmReplica, rec: EpochRecord & { kind: 'batch' }): Promise<{ write: Promise<void> } | null> {
    const a = await this.matchAssembly(r, rec);
    if (!a) return null;
    const b = rec.batch;
    if (b.seq < a.nextSeq) {
      await this.ensureFresh(r);
      await this.hooks.deadLetter(r.vm, 'duplicate', `batch ${b.seq} of epoch ${a.generation}/${a.epoch} is already staged`);
      return null;
    }
    if (b.seq > a.nextSeq) {
      await this.ensureFresh(r); // as in matchAssembly
      await this.hooks.deadLetter(r.vm, 'out-of-order', `batch ${b.seq} of epoch ${a.generation}/${a.epoch} arrived before batch ${a.nextSeq}`);
      await this.breakContinuity(r, 'missing-batch', `batches ${a.nextSeq}..${b.seq - 1} of epoch ${a.generation}/${a.epoch} are missing`);
      return null;
    }
    let pages: Uint8Array;
    try {
      // Harvesters split batches by their uncompressed size under the record limit: a gzip'd batch that
      // declares more is a decompression bomb (three 0.9 MB batches declaring 900 MiB each took 1.9 GB).
      if (b.dataBytes > this.opts.maxRecordBytes) throw new Error(`batch ${b.seq} declares ${b.dataBytes} bytes of pages, more than a record may hold (${this.opts.maxRecordBytes})`);
      pages = batchPages(b);
      checkBatchAgainstLayout(b, a.begin, pages.byteLength);
      checkZeroMarks(b, a);
    } catch (err) {
      await this.hooks.deadLetter(r.vm, 'invalid', (err as Error).message);
      await this.breakContinuity(r, 'missing-batch', `batch ${b.seq} of epoch ${a.generation}/${a.epoch} is unusable: ${(err as Error).message}`);
      return null;
    }
    return { write: this.store.stageBatch(r.vm, a, b, pages) };
  }

  private async onCommit(r: VmReplica, rec: EpochRecord & { kind: 'commit' }): Promise<HandleResult> {
    const a = await this.matchAssembly(r, rec);
    if (!a) return 'done';
    const c = rec.commit;
    if (c.batches !== a.nextSeq) {
      await this.breakContinuity(r, 'missing-batch', `commit of epoch ${a.generation}/${a.epoch} names ${c.batches} batches, ${a.nextSeq} arrived`);
      return 'done';
    }
    if (c.vcpuStates.length !== a.begin.vcpus) {
      await this.hooks.deadLetter(r.vm, 'invalid', `commit of epoch ${a.generation}/${a.epoch} carries ${c.vcpuStates.length} vCPU states, its begin says ${a.begin.vcpus} vCPUs`);
      await this.breakContinuity(r, 'missing-epoch', `epoch ${a.generation}/${a.epoch} has an unusable commit`);
      return 'done';
    }
    const t0 = performance.now();
    const out = await this.store.applyEpoch(r.vm, a, c);
    switch (out.result) {
      case 'fenced':
        this.metrics.fencedWaits.inc();
        await this.noteFenced(r);
        return 'retry';
      case 'applied':
      case 'already': {
        const now = Date.now();
        if (r.fenced) {
          if (r.fenced.loggedMs) this.log.info('the fence is gone: applying again', { vm: r.vm, fencedMs: now - r.fenced.sinceMs });
          r.fenced = undefined;
        }
        if (out.result === 'applied') {
          this.metrics.applySeconds.observe((performance.now() - t0) / 1000);
          this.metrics.epochsApplied.inc({ kind: a.baseline ? 'baseline' : 'delta' });
          this.metrics.bytesApplied.inc(c.dataBytes);
          this.metrics.replicationLagSeconds.observe(Math.max(0, now - c.committedAtMs) / 1000);
          this.metrics.lagSeconds.set({ vm: r.vm }, Math.max(0, now - c.committedAtMs) / 1000);
        }
        r.asm = null;
        r.meta = await this.store.readMeta(r.vm);
        r.stale = r.meta?.state === 'stale';
        if (r.meta) this.metrics.noteStandbyEpoch(r.vm, r.meta.epoch, r.meta.pausedAtMs);
        if (a.baseline && !r.stale) this.log.info('baseline applied', { vm: r.vm, generation: a.generation, pages: c.pages });
        return 'done';
      }
      case 'digest-mismatch':
        // The digest is computed before the apply script checks the fence: a standby being deleted
        // under it (`npm run standby -- forget` of a VM whose harvester runs) reads as a mismatch
        // without any page being wrong. Wait for the fence, then judge again on fresh state.
        if (await this.store.isFenced(r.vm)) {
          this.metrics.fencedWaits.inc();
          return 'retry';
        }
        await this.ensureFresh(r);
        // Counted only once the mark landed: a digest computed while another member applied is no mismatch.
        await this.breakContinuity(r, 'digest-mismatch', `epoch ${a.generation}/${a.epoch} would give digest ${out.computed}, its commit says ${out.expected}: not applied`);
        this.metrics.digestMismatches.inc();
        return 'done';
      case 'conflict':
        // The compare-and-set of the mark tells a real gap (a staged batch or page missing) from another
        // member having moved the image on (then the record is handled again on fresh state).
        await this.breakContinuity(r, 'missing-epoch', `epoch ${a.generation}/${a.epoch} no longer fits the image (${out.detail})`);
        return 'done';
    }
  }

  /**
   * Before a record is judged out of place on cached state, checks that Redis still agrees with the
   * cache; if another member changed the VM meanwhile, throws StaleCache so the record is handled again.
   */
  private async ensureFresh(r: VmReplica): Promise<void> {
    const [meta, asm] = await Promise.all([this.store.readMeta(r.vm), this.store.readAssembly(r.vm)]);
    const key = (m: StandbyMeta | null, a: Assembly | null): string => `${m?.generation}/${m?.epoch}/${m?.state}|${a?.generation}/${a?.epoch}/${a?.nextSeq}`;
    if (key(meta, asm) !== key(r.meta, r.asm)) throw new StaleCache(`state of ${r.vm} changed under this replicator`);
  }

  /**
   * Continuity is lost: keep the image (it is a committed epoch), mark it stale, ask for a baseline.
   * The decision was made on cached state, so the mark is a compare-and-set against it in Redis: if
   * another member moved the VM on meanwhile, nothing is marked and StaleCache makes the caller reload
   * and handle the record again.
   */
  private async breakContinuity(r: VmReplica, reason: GapReason, detail: string): Promise<void> {
    if (!await this.store.markStale(r.vm, `${reason}: ${detail}`, { meta: r.meta, asm: r.asm })) {
      throw new StaleCache(`state of ${r.vm} changed under this replicator`);
    }
    this.metrics.gaps.inc({ reason });
    this.log.warn('continuity lost; the image is stale until a baseline arrives', { vm: r.vm, reason, detail });
    if (r.asm) {
      // The mark deleted the assembly record; its staged keys are garbage now.
      await this.store.dropAssembly(r.vm, r.asm);
      r.asm = null;
    }
    r.meta = await this.store.readMeta(r.vm);
    r.stale = true;
    r.lastResyncAtMs = 0;
    await this.maybeResync(r, `${reason}: ${detail}`);
  }

  /**
   * Looks for pages Redis lost from the VM's live image (evicted under a maxmemory policy, deleted by
   * hand, a partial restore). Nothing else notices them: a delta's digest is computed from the page
   * hashes, not the pages, so epochs keep applying, the image says ok and fresh, and only a restore
   * (the failover, when the primary is gone and no baseline can heal it) finds them. Pages still
   * missing when asked once more mark the image stale and ask for a baseline (breakContinuity(): a
   * compare-and-set against the cached state), at once for an idle VM, at the next delta's begin while
   * records flow. Returns how many pages were missing (0 when nothing is to be marked).
   */
  async scrub(vm: string, afterStep?: (checked: number) => Promise<void>): Promise<{ missing: number }> {
    const meta = await this.store.readMeta(vm);
    if (!meta || meta.state !== 'ok') return { missing: 0 };
    const found = await this.store.missingPages(vm, meta.generation, afterStep);
    if (!found || found.missing === 0) return { missing: 0 };
    // An epoch applied during the scan may have written a missing page again: ask once more.
    const still = await this.store.stillMissing(vm, meta.generation, found.fields);
    if (!still.length) return { missing: 0 };
    const detail = `${found.missing} page(s) of the image are missing from Redis (evicted or deleted), e.g. ${still.slice(0, 4).join(', ')}`;
    this.log.error('pages of a standby image are missing from Redis: it is marked stale and a baseline asked for', { vm, generation: meta.generation, epoch: meta.epoch, missing: found.missing, pages: still });
    const r = await this.replica(vm);
    if (this.flowing(r)) {
      // Marked in the records' own order (onBegin), not beside a batch in flight.
      r.pagesLost = { generation: meta.generation, detail };
      return { missing: found.missing };
    }
    // A baseline committed meanwhile replaced every page: nothing of the old generation matters.
    if (r.meta?.generation !== meta.generation) return { missing: 0 };
    try {
      await this.breakContinuity(r, 'pages-lost', detail);
    } catch (err) {
      if (!(err instanceof StaleCache)) throw err;
      this.replicas.delete(vm); // another member moved it on: the next scrub judges again
    }
    return { missing: found.missing };
  }

  /**
   * A VM whose image this instance applied or read is gone from Redis, and `standby forget` left no
   * tombstone: Redis lost it (restarted without persistence, flushed). Unlike a forgotten VM it stays
   * reported: its standby age keeps growing, so the RPO alert fires (a dead primary's guest has nothing
   * to fail over to), and it counts as stale until a baseline arrives; a live harvester is asked for
   * one. False for a VM this instance never knew an image of (junk ids, records never applied): those
   * are dropped as before, and so is a lost image's VM on an instance that took it over after the loss
   * (a restart, a rebalance: Redis's index of VMs was lost too). With records flowing, the apply path
   * handles it (no-image).
   */
  async imageLost(vm: string): Promise<boolean> {
    if (!this.knownImages.has(vm)) return false;
    const cached = this.replicas.get(vm);
    if (cached && this.flowing(cached)) return true;
    // Redis's view, not the cache's (which may still hold the lost image's meta).
    const r = await this.reload(vm);
    if (r.meta) return false; // it is back (imagesExist() read before it was)
    if (!this.lostImages.has(vm)) {
      this.lostImages.add(vm);
      this.metrics.gaps.inc({ reason: 'image-lost' });
      this.log.error('the standby image of this VM vanished from Redis, and nobody forgot it (standby forget): Redis lost data (restarted without persistence, or flushed); it stays reported, stale, until a baseline arrives', { vm });
    }
    r.asm = null;
    r.stale = true;
    await this.maybeResync(r, 'image-lost: the standby image vanished from Redis');
    this.updateGauges(r);
    return true;
  }

  /**
   * Applies held back by a fence: logged once it has held them fenceQuietMs (longer than a restore
   * usually takes) and every fenceLogEveryMs while it lasts, with its holder and time to live, so an
   * operator sees why a standby stopped moving (a fence left by a killed restorer held it silently).
   */
  private async noteFenced(r: VmReplica): Promise<void> {
    const now = Date.now();
    r.fenced ??= { sinceMs: now, loggedMs: 0 };
    const held = now - r.fenced.sinceMs;
    if (held < (this.opts.fenceQuietMs ?? FENCE_QUIET_MS) || now - r.fenced.loggedMs < (this.opts.fenceLogEveryMs ?? FENCE_LOG_EVERY_MS)) return;
    r.fenced.loggedMs = now;
    const h = await this.store.fenceHolder(r.vm);
    this.log.warn('applies of this VM wait on a restorer\'s fence', {
      vm: r.vm, heldMs: held, holder: h.holder, ttlMs: h.ttlMs,
      hint: `a restore is reading the image; one that died leaves its fence until it expires; npm run standby -- unfence --vm ${r.vm} removes it`,
    });
  }

  /**
   * The begin of an epoch of a generation older than the image's: parked. A few epochs of the
   * generation before a restart are stragglers; an older generation whose epochs keep coming is a live
   * harvester that started below the image's generation (its clock went back: generations start at
   * its wall-clock millisecond) and would be parked for good while the standby ages. After
   * BEHIND_EPOCHS such epochs in a row it is asked for a baseline; the request carries the image's
   * generation, above which the harvester starts its next one.
   */
  private async olderGeneration(r: VmReplica, g: number, e: number, detail: string): Promise<void> {
    await this.hooks.deadLetter(r.vm, 'old-generation', detail);
    const b = r.behind;
    r.behind = b && b.generation === g && e > b.epoch ? { generation: g, epoch: e, count: b.count + 1 } : { generation: g, epoch: e, count: 1 };
    if (r.behind.count < BEHIND_EPOCHS) return;
    this.log.warn('a harvester publishes a generation older than the image\'s: asking it for a baseline above the image\'s generation (did its clock go back?)', { vm: r.vm, generation: g, epoch: e, imageGeneration: r.meta?.generation });
    await this.maybeResync(r, `generation ${g} is older than the image's (${r.meta?.generation ?? 0}); start the next one above it`);
  }

  private async maybeResync(r: VmReplica, reason: string): Promise<void> {
    // A baseline being assembled is the answer already on its way.
    if (r.asm?.baseline) return;
    const now = Date.now();
    if (now - r.lastResyncAtMs < this.opts.resyncRetryMs) return;
    r.lastResyncAtMs = now;
    this.metrics.resyncRequests.inc();
    await this.hooks.requestResync(r.vm, reason, r.meta?.generation ?? 0, r.meta?.epoch ?? -1);
  }

  private updateGauges(r: VmReplica): void {
    if (r.meta) {
      this.knownImages.add(r.vm);
      this.lostImages.delete(r.vm);
    }
    this.metrics.noteVm(r.vm);
    this.metrics.vmStale.set({ vm: r.vm }, r.stale ? 1 : 0);
    let stale = 0;
    for (const x of this.replicas.values()) if (x.stale) stale++;
    this.metrics.staleVms.set(stale);
    const applied = r.meta && r.meta.generation === r.seen.generation ? r.meta.epoch : -1;
    this.metrics.lagEpochs.set({ vm: r.vm }, Math.max(0, r.seen.epoch - applied));
  }
}

/** Zero marks a batch may ask the replicator to clear page by page (1 GiB of 4 KiB pages), and an epoch (4 GiB). */
export const MAX_BATCH_ZERO_MARKS = 1 << 18;
export const MAX_EPOCH_ZERO_MARKS = 1 << 20;

/**
 * Bounds the page-by-page work a delta's zero marks ask for (zeroMarkWork): 153 bytes of records
 * marking 2^32 pages zero ran the replicator out of memory. A harvester's epochs stay far below the
 * bounds unless a guest zeroes gigabytes within one epoch; such an epoch is refused like any unusable
 * batch, and the baseline that follows carries the guest as it is.
 */
export function checkZeroMarks(b: PageBatch, a: Assembly): void {
  const work = zeroMarkWork(a, b);
  if (work > MAX_BATCH_ZERO_MARKS) {
    throw new Error(`batch ${b.seq} marks ${work} pages zero that would be cleared one by one (at most ${MAX_BATCH_ZERO_MARKS} per batch)`);
  }
  const total = (a.zeroMarks ?? 0) + work;
  if (total > MAX_EPOCH_ZERO_MARKS) {
    throw new Error(`batch ${b.seq} brings epoch ${a.generation}/${a.epoch}'s zero marks to ${total} pages cleared one by one (at most ${MAX_EPOCH_ZERO_MARKS} per epoch)`);
  }
}

/** Ranges inside the layout, in order, and page bytes that match them. Throws a plain Error. */
export function checkBatchAgainstLayout(b: PageBatch, begin: EpochBegin, bytes: number): void {
  const slots = new Map(begin.slots.map((s) => [s.id, s.pages]));
  let dataPages = 0;
  for (let i = 0; i < b.slots.length; i++) {
    const pages = slots.get(b.slots[i]!);
    if (pages === undefined) throw new Error(`batch ${b.seq}: range ${i} names slot ${b.slots[i]}, which the epoch's layout does not have`);
    if (b.firsts[i]! + b.counts[i]! > pages) throw new Error(`batch ${b.seq}: range ${i} (pages ${b.firsts[i]}..${b.firsts[i]! + b.counts[i]! - 1}) is outside slot ${b.slots[i]} (${pages} pages)`);
    if (b.zero[i] !== 1) dataPages += b.counts[i]!;
  }
  if (dataPages * begin.pageSize !== bytes) throw new Error(`batch ${b.seq}: ${dataPages} data pages need ${dataPages * begin.pageSize} bytes, it carries ${bytes}`);
}
