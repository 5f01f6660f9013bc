import { CkptError, silentLogger, ValueSample, type Logger } from '@ckpt/common';
import { generationTooFarAhead } from '@ckpt/proto';
import { CheckpointCycle, type CycleOptions } from './epoch/checkpoint-cycle.ts';
import type { EpochCommit, EpochHeader, EpochSink } from './epoch/epoch-types.ts';
import type { HarvesterMetrics } from './metrics.ts';
import type { DirtySource, SourceStats } from './sources/dirty-source.ts';
import { checkFailures, ShadowVerifier, type EpochCheck } from './verify/shadow-verifier.ts';

export interface HarvestRunOptions {
  /** Epochs after the baseline; 0 = until `signal` aborts. */
  epochs: number;
  intervalMs: number;
  sinks?: EpochSink[];
  verify?: boolean;
  cycle?: Partial<CycleOptions>;
  metrics?: HarvesterMetrics;
  logger?: Logger;
  signal?: AbortSignal;
  /** Called before each epoch is cut (tests and the CLI inject hostile entries here). */
  beforeEpoch?: (epoch: number) => void;
  onEpoch?: (commit: EpochCommit, check: EpochCheck | undefined) => void;
  /**
   * How often to look for vCPUs stalled on a full ring, between epochs and while an epoch waits on its
   * sinks (a slow broker, the replication window).
   */
  reliefCheckMs?: number;
  /**
   * Polled before each epoch: a non-null reason (a replicator asked for a resync) starts a new
   * generation with a baseline.
   */
  takeResyncRequest?: () => string | null;
  /** A new generation is above this one too (the image generation a resync request named). */
  generationFloor?: () => number;
}

/**
 * The generation after `current`, above `floor` too (the image generation a resync request named: a
 * harvester whose clock went back starts below it). A floor far ahead of this clock is not a real
 * image's generation (see generationTooFarAhead): it is ignored, and said so.
 */
export function nextGeneration(current: number, floor: number, log: Logger = silentLogger): number {
  const usable = !generationTooFarAhead(floor);
  if (!usable) log.warn('ignoring a generation floor far ahead of this clock', { floor });
  return Math.max(current, usable ? floor : 0) + 1;
}

/** Errors after which the current generation cannot go on, but a new one (with a baseline) can. */
const NEW_GENERATION_CODES = new Set(['CKPT_ERR_HARVEST_CONTINUITY_LOST', 'CKPT_ERR_PUBLISH_FAILED']);

export interface HarvestSummary {
  source: string;
  mode: string;
  vcpus: number;
  memBytes: number;
  /** Epochs cut, baseline included. */
  epochs: number;
  pagesHarvested: number;
  zeroPages: number;
  bytesHarvested: number;
  mismatches: number;
  missedWrites: number;
  digestMismatches: number;
  invalidEntries: number;
  ringFullExits: number;
  ringReliefs: number;
  /** Ring entries the kernel overwrote before harvest (each overrun forces a new generation). */
  ringEntriesLost: number;
  /** New generations started after the first: continuity lost, a publish timeout, or a replicator's resync request. */
  resyncs: number;
  generation: number;
  /** Entries marked RESET equals the sum of KVM_RESET_DIRTY_RINGS results. */
  resetCountsMatch: boolean;
  pauseP50Us: number;
  pauseP99Us: number;
  pauseMaxUs: number;
  drainP50Us: number;
  lastDigest: string;
  verified: boolean;
  vcpuError: string | null;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Runs a guest's checkpointing: a baseline, then an epoch every `intervalMs`, relieving full rings in
 * between. With `verify`, every epoch is checked against guest memory while the guest is paused.
 */
export async function runHarvest(source: DirtySource, options: HarvestRunOptions): Promise<HarvestSummary> {
  const log = options.logger ?? silentLogger;
  const verifier = options.verify ? new ShadowVerifier(source) : undefined;
  let lastCheck: EpochCheck | undefined;
  const cycleOptions: Partial<CycleOptions> = { ...options.cycle };
  if (verifier) {
    cycleOptions.whilePaused = (h: EpochHeader, c: EpochCommit) => {
      lastCheck = verifier.check(h, c);
    };
  }
  let cycle = new CheckpointCycle(source, cycleOptions);
  let resyncs = 0;
  const sinks: EpochSink[] = [...(verifier ? [verifier] : []), ...(options.sinks ?? [])];
  const sink: EpochSink = {
    begin: async (h) => { for (const s of sinks) await s.begin(h); },
    segment: async (h, seg) => { for (const s of sinks) await s.segment(h, seg); },
    commit: async (h, c) => { for (const s of sinks) await s.commit(h, c); },
  };
  const m = options.metrics;
  // Bounded: a service cuts epochs for days (see ValueSample).
  const pauses = new ValueSample();
  const drains = new ValueSample();
  let pagesHarvested = 0;
  let zeroPages = 0;
  let bytes = 0;
  let reliefs = 0;
  let lastDigest = '';
  let cut = 0;
  let prev: SourceStats = source.stats();
  const total = options.epochs > 0 ? options.epochs + 1 : Infinity;
  const reliefMs = options.reliefCheckMs ?? 1;

  let reliefError: Error | null = null;
  const relieveIfStalled = (): void => {
    if (reliefError !== null) return;
    try {
      if (cycle.relieveIfStalled()) {
        reliefs++;
        m?.ringReliefs.inc();
      }
    } catch (err) {
      reliefError = err instanceof Error ? err : new CkptError('CKPT_ERR_HARVEST_VCPU_FAILED', 'cannot free full dirty rings');
    }
  };
  const checkVcpus = (): void => {
    if (reliefError !== null) throw reliefError;
    const err = source.lastError();
    if (err) throw new CkptError('CKPT_ERR_HARVEST_VCPU_FAILED', `cannot keep checkpointing: a vCPU stopped: ${err}`);
  };

  source.start();
  // Full rings are freed on a timer, so also while an epoch waits on its sinks: a broker or replicator
  // that is away must stretch the interval between epochs, not stall the guest on its rings.
  const relief = setInterval(relieveIfStalled, reliefMs);
  // Each epoch starts intervalMs after the previous one started, and never sooner than a quarter of the
  // interval after it ended: a slow epoch stretches the interval (the guest always gets run time)
  // rather than causing back-to-back pauses or a burst of catch-up epochs.
  let deadline = performance.now();
  let cutStart = 0;
  // Interval stretch, counted as it passes (every 250 ms while a cut waits on a sink, and at the next
  // cut's start), not only when the late cut starts: a dashboard must show a 50 s wait while it lasts.
  let dueAt = -1; // when the next cut was due; -1 before the first cut
  let stretchTo = 0;
  const countStretch = (now: number): void => {
    if (dueAt < 0) return;
    const from = Math.max(dueAt, stretchTo);
    if (now - from > 1) {
      m?.intervalStretchSeconds.inc((now - from) / 1000);
      stretchTo = now;
    }
  };
  const stretchTimer = setInterval(() => countStretch(performance.now()), 250);
  stretchTimer.unref();
  const newGeneration = (why: string, err?: unknown): void => {
    const generation = nextGeneration(cycle.generation, options.generationFloor?.() ?? 0, log);
    log.warn('starting a new generation', { reason: why, ...(err === undefined ? {} : { err }), generation });
    resyncs++;
    m?.resyncs.inc();
    cycle = new CheckpointCycle(source, { ...cycleOptions, generation });
    deadline = performance.now();
  };
  try {
    while (cut < total && !options.signal?.aborted) {
      while (performance.now() < deadline && !options.signal?.aborted) {
        await sleep(Math.min(10, Math.max(0, deadline - performance.now())));
      }
      if (options.signal?.aborted) break;
      checkVcpus();
      const resync = options.takeResyncRequest?.() ?? null;
      if (resync !== null && cycle.epoch > 0) {
        m?.resyncRequests.inc();
        newGeneration(`a replicator asked for a baseline: ${resync}`);
      }
      options.beforeEpoch?.(cycle.epoch);
      lastCheck = undefined;
      cutStart = performance.now();
      countStretch(cutStart);
      dueAt = cutStart + options.intervalMs;
      stretchTo = dueAt;
      let commit: EpochCommit;
      try {
        commit = await cycle.cut(sink);
      } catch (err) {
        // Stopping while a sink waited (the replicator, the broker): the epoch is abandoned, not failed.
        if (err instanceof CkptError && err.code === 'CKPT_ERR_ABORTED' && options.signal?.aborted) break;
        if (!(err instanceof CkptError) || !NEW_GENERATION_CODES.has(err.code)) throw err;
        // Continuity is broken: the uncommitted epoch is dropped and a new generation starts with a baseline.
        newGeneration(err.code, err);
        continue;
      }
      cut++;
      deadline = Math.max(cutStart + options.intervalMs, performance.now() + options.intervalMs / 4);
      pauses.add(commit.pauseUs);
      drains.add(commit.drainUs);
      pagesHarvested += commit.pages;
      zeroPages += commit.zeroPages;
      bytes += commit.bytes;
      lastDigest = commit.digest;
      const now = source.stats();
      const check = lastCheck as EpochCheck | undefined;
      const failures = check ? checkFailures(check) : 0;
      if (m) {
        m.pagesHarvested.inc(commit.pages);
        m.bytesHarvested.inc(commit.bytes);
        m.zeroPages.inc(commit.zeroPages);
        m.ringEntriesHarvested.inc(now.entriesHarvested - prev.entriesHarvested);
        m.invalidEntries.inc(now.invalidEntries - prev.invalidEntries);
        m.ringFullExits.inc(now.ringFullExits - prev.ringFullExits);
        m.ringEntriesLost.inc(now.ringEntriesLost - prev.ringEntriesLost);
        m.epochs.inc({ kind: commit.baseline ? 'baseline' : 'delta' });
        m.pauseSeconds.observe(commit.pauseUs / 1e6);
        m.drainSeconds.observe(commit.drainUs / 1e6);
        m.epochBytes.observe(commit.bytes);
        m.lastEpoch.set(commit.epoch);
        m.verifyMismatches.inc(failures);
        m.ringProbeFailed.set(now.ringProbeFailed ? 1 : 0);
      }
      if (now.ringProbeFailed && !prev.ringProbeFailed) {
        log.warn('this kernel refused the dirty-ring probe: a ring overrun harvested at a pause will show one epoch late, after that epoch was committed (docs/harvester.md)', { epoch: commit.epoch });
      }
      prev = now;
      if (check && failures > 0) {
        log.error('epoch failed verification', { ...check, epoch: commit.epoch, generation: commit.generation });
      }
      options.onEpoch?.(commit, check);
    }
  } finally {
    clearInterval(relief);
    clearInterval(stretchTimer);
    source.pause();
  }
  const st = source.stats();
  return {
    source: source.kind,
    mode: source.mode,
    vcpus: source.vcpuCount,
    memBytes: source.slots.reduce((n, s) => n + s.pages * source.pageSize, 0),
    epochs: cut,
    pagesHarvested,
    zeroPages,
    bytesHarvested: bytes,
    mismatches: verifier?.mismatches ?? 0,
    missedWrites: verifier?.totals.missedWrites ?? 0,
    digestMismatches: verifier?.totals.digestMismatches ?? 0,
    invalidEntries: st.invalidEntries,
    ringFullExits: st.ringFullExits,
    ringReliefs: reliefs,
    ringEntriesLost: st.ringEntriesLost,
    resyncs,
    generation: cycle.generation,
    resetCountsMatch: source.mode !== 'ring' || st.entriesMarkedReset === st.resetReturnedTotal,
    pauseP50Us: pauses.percentile(50),
    pauseP99Us: pauses.percentile(99),
    pauseMaxUs: pauses.max,
    drainP50Us: drains.percentile(50),
    lastDigest,
    verified: verifier !== undefined,
    vcpuError: source.lastError(),
  };
}
