/**
 * The run claim of a restored guest kept running (`--keep-running`, the failover Deployment): one key
 * per VM in Redis (`<p>:{vm}:running`) naming the restorer that runs it, with a TTL it renews. The
 * fence covers only the read; this covers the run. Kubernetes' `replicas: 1` and `Recreate` do not stop
 * a second copy when a node stops answering: its pod is replaced while the old one may still run, cut
 * off. With the claim the replacement waits until the old claim expires (the old pod is gone) and
 * refuses to run the guest while it is still renewed (the old pod is alive); and a restorer that finds
 * its claim taken stops its guest.
 *
 * What it cannot do: a restorer cut off from Redis keeps its guest running (Redis out of reach is far
 * likelier than a partition, and stopping the only copy then would turn a Redis outage into a guest
 * outage). If another restorer takes the claim meanwhile, both run until the first reaches Redis again
 * and stops its guest: at most the length of the partition.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { CkptError, silentLogger, type Logger } from '@ckpt/common';
import type { StandbyStore } from '@ckpt/standby';
import type { RestorerMetrics } from './metrics.ts';
import { interruptible, interruptibleTake } from './restore-image.ts';

export interface RunClaimOptions {
  /** The claim's lifetime; renewed every third of it. */
  ttlMs: number;
  log?: Logger;
  metrics?: RestorerMetrics;
  /** Ends a wait for another holder's claim (SIGINT, SIGTERM). */
  signal?: AbortSignal;
  /** How often to ask while waiting for another holder's claim to expire. Default 250 ms. */
  pollMs?: number;
}

export class RunClaim {
  /** Who holds it now, when it was taken from this restorer; undefined while it is ours. */
  lostTo: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lastHeldAt = performance.now();
  private unreachableSaid = false;
  private readonly lost = new AbortController();
  /** Set by release(): a renewal still in flight then changes nothing (the gauge stays 0). */
  private released = false;

  private constructor(private readonly store: StandbyStore, readonly vm: string, readonly token: string, private readonly opts: RunClaimOptions) {}

  /** Aborted when another restorer holds the claim: its guest must stop. */
  get lostSignal(): AbortSignal {
    return this.lost.signal;
  }

  /**
   * Takes `vm`'s run claim and starts renewing it. A claim someone else holds is waited for as long
   * as it could last without being renewed (its remaining TTL, at least this restorer's TTL, plus 2 s):
   * a holder that died leaves it to expire. Still held then, its holder is alive:
   * CKPT_ERR_RESTORE_ALREADY_RUNNING. A signal ends the wait with CKPT_ERR_RESTORE_INTERRUPTED.
   */
  static async take(store: StandbyStore, vm: string, opts: RunClaimOptions): Promise<RunClaim> {
    const log = opts.log ?? silentLogger;
    const claim = new RunClaim(store, vm, `run-${hostname()}-${process.pid}-${randomBytes(6).toString('hex')}`, opts);
    const start = performance.now();
    let limitMs = 0;
    let holder: string | null = null;
    // A Redis that does not answer must not hold a signal up (see interruptible()).
    const stopped = (): CkptError => new CkptError('CKPT_ERR_RESTORE_INTERRUPTED', `the restore of ${vm} was interrupted (${String(opts.signal?.reason ?? 'aborted')}) while it waited for ${holder ?? 'another restorer'}'s run claim: nothing was read`, { retriable: true });
    const acquire = (): Promise<boolean> => interruptibleTake(store.acquireRunClaim(vm, claim.token, opts.ttlMs), opts.signal, stopped, () => store.releaseRunClaim(vm, claim.token));
    while (!(await acquire())) {
      const h = await interruptible(store.runClaimHolder(vm), opts.signal, stopped);
      holder = h.holder;
      const ttlMs = h.ttlMs;
      const waited = performance.now() - start;
      if (limitMs === 0) {
        limitMs = Math.max(opts.ttlMs, ttlMs ?? 0) + 2000;
        log.warn(`${vm}'s guest is claimed by ${holder ?? 'another restorer'}${ttlMs === null ? '' : ` for ${(ttlMs / 1000).toFixed(1)} s more unless it is renewed`}: waiting up to ${(limitMs / 1000).toFixed(1)} s for that claim to expire before running the guest here`,
          { vm, holder, holderTtlMs: ttlMs });
      } else if (waited > limitMs) {
        throw new CkptError('CKPT_ERR_RESTORE_ALREADY_RUNNING', `cannot run ${vm}'s guest here: ${holder ?? 'another restorer'} runs it and renewed its claim (${store.keys(vm).runClaim}) throughout the ${(waited / 1000).toFixed(1)} s this restorer waited; `
          + 'two copies of one guest must never run. Stop that restorer first (scale its Deployment to 0, or end the process); a holder that is gone stops renewing and its claim expires by itself',
        { context: { vm, holder } });
      }
      try {
        await sleep(opts.pollMs ?? 250, undefined, { signal: opts.signal });
      } catch {
        throw stopped();
      }
    }
    opts.metrics?.runClaimHeld.set(1);
    log.info('run claim taken', { vm, token: claim.token, ttlMs: opts.ttlMs });
    // Unref'd: the guest (or the restore) keeps the process alive, not the claim.
    claim.timer = setInterval(() => void claim.renew(), Math.max(100, Math.floor(opts.ttlMs / 3))).unref();
    return claim;
  }

  /** One renewal. Never throws: Redis out of reach leaves the guest running (see the file's comment). */
  private async renew(): Promise<void> {
    if (this.lostTo !== undefined) return;
    const log = this.opts.log ?? silentLogger;
    let r: 'held' | 'retaken' | 'lost';
    try {
      r = await this.store.refreshRunClaim(this.vm, this.token, this.opts.ttlMs);
    } catch (err) {
      // Past its TTL without a renewal, the claim may have expired: say so once per outage.
      if (performance.now() - this.lastHeldAt > this.opts.ttlMs) {
        this.opts.metrics?.runClaimHeld.set(0);
        if (!this.unreachableSaid) {
          this.unreachableSaid = true;
          log.warn(`cannot renew ${this.vm}'s run claim (${(err as Error).message}): it may have expired, so another restorer could start the guest; this one keeps it running and stops it if it finds the claim taken once Redis answers`, { vm: this.vm });
        }
      }
      return;
    }
    if (this.released) return;
    if (r === 'lost') {
      const { holder } = await this.store.runClaimHolder(this.vm).catch(() => ({ holder: null }));
      this.lostTo = holder ?? 'another restorer';
      this.opts.metrics?.runClaimHeld.set(0);
      this.stopRenewing();
      this.lost.abort(new Error(`run claim taken by ${this.lostTo}`));
      return;
    }
    if (r === 'retaken' || this.unreachableSaid) log.warn(`${this.vm}'s run claim is renewed again${r === 'retaken' ? ' (it had expired or been removed; nobody else took it)' : ''}`, { vm: this.vm });
    this.unreachableSaid = false;
    this.lastHeldAt = performance.now();
    this.opts.metrics?.runClaimHeld.set(1);
  }

  private stopRenewing(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /**
   * Stops renewing and drops the claim if it is still ours (best effort: otherwise it expires).
   * `waitMs` bounds the wait for Redis (after a signal: a Redis that does not answer must not hold the exit up).
   */
  async release(waitMs = Infinity): Promise<void> {
    this.released = true;
    this.stopRenewing();
    this.opts.metrics?.runClaimHeld.set(0);
    if (this.lostTo !== undefined) return;
    const releasing = this.store.releaseRunClaim(this.vm, this.token).then(() => undefined, (err: unknown) =>
      (this.opts.log ?? silentLogger).warn(`cannot release ${this.vm}'s run claim; it expires by itself within ${this.opts.ttlMs / 1000} s`, { vm: this.vm, err }));
    await (Number.isFinite(waitMs) ? Promise.race([releasing, sleep(waitMs)]) : releasing);
  }
}
