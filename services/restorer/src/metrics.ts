import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { withZeroSeries } from '@ckpt/common';

/** The values of `outcome` on ckpt_restorer_restores_total. */
export const RESTORE_OUTCOMES = ['ok', 'ok-stale', 'refused-stale', 'refused-digest', 'error'] as const;
export type RestoreOutcome = typeof RESTORE_OUTCOMES[number];

/** Every metric the restorer exports (`ckpt_restorer_*`). */
export interface RestorerMetrics {
  registry: Registry;
  durationSeconds: Histogram;
  bytes: Counter;
  restores: Counter<'outcome'>;
  throughput: Gauge;
  lastSuccess: Gauge;
  /** When the last restore of each outcome ended: a failover pod restores once, usually before its first scrape. */
  lastEnd: Gauge<'outcome'>;
  lastDurationSeconds: Gauge;
  /** Checks of a restored guest resumed on KVM (--resume-ms): did every vCPU make progress. */
  resumeChecks: Counter<'result'>;
  /** 1 when the last resumed guest ran, 0 when it did not, -1 before any check. */
  lastResumeRunning: Gauge;
  /** 1 while this restorer holds the run claim of the guest it keeps running (--keep-running), else 0. */
  runClaimHeld: Gauge;
}

export function createRestorerMetrics(options: { defaultMetrics?: boolean } = {}): RestorerMetrics {
  const registry = new Registry();
  if (options.defaultMetrics) collectDefaultMetrics({ register: registry });
  const registers = [registry];
  return {
    registry,
    durationSeconds: new Histogram({ name: 'ckpt_restorer_duration_seconds', help: 'Time to read, verify and hand over one image (fence to release)', buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120], registers }),
    bytes: new Counter({ name: 'ckpt_restorer_bytes_total', help: 'Guest memory bytes restored and verified', registers }),
    // Every outcome exists at 0 from the start, so a restore that ends after the first scrape counts in increase().
    restores: withZeroSeries(new Counter({ name: 'ckpt_restorer_restores_total', help: 'Restores by outcome: ok, ok-stale, refused-stale, refused-digest, error', labelNames: ['outcome'], registers }), 'outcome', RESTORE_OUTCOMES),
    // The counter and the histogram miss a restore that ends before the first scrape (increase() and
    // rate() need a sample before it), which is the usual failover: these gauges keep it.
    lastEnd: withZeroSeries(new Gauge({ name: 'ckpt_restorer_last_restore_end_timestamp_seconds', help: 'Unix time the last restore with this outcome ended (0: none yet)', labelNames: ['outcome'], registers }), 'outcome', RESTORE_OUTCOMES),
    lastDurationSeconds: new Gauge({ name: 'ckpt_restorer_last_restore_duration_seconds', help: 'Duration of the last restore, any outcome (fence to release; 0: none yet)', registers }),
    throughput: new Gauge({ name: 'ckpt_restorer_throughput_bytes_per_second', help: 'Guest memory bytes per second of the last successful restore (read, verify, hand over)', registers }),
    resumeChecks: withZeroSeries(new Counter({ name: 'ckpt_restorer_resume_checks_total', help: 'Restored guests resumed on KVM for --resume-ms, by result: running (every vCPU made progress) or not-running (a restore can verify and its guest still fail)', labelNames: ['result'], registers }), 'result', ['running', 'not-running']),
    lastResumeRunning: (() => {
      const g = new Gauge({ name: 'ckpt_restorer_last_resume_running', help: '1 when the last restored guest resumed on KVM ran, 0 when it did not, -1 before any check', registers });
      g.set(-1);
      return g;
    })(),
    runClaimHeld: new Gauge({ name: 'ckpt_restorer_run_claim_held', help: '1 while this restorer holds (and renews) the run claim of the guest it keeps running; 0 before, after, or when it could not renew it within its TTL (Redis out of reach) or another restorer took it', registers }),
    lastSuccess: new Gauge({ name: 'ckpt_restorer_last_success_timestamp_seconds', help: 'Unix time the last successful restore finished', registers }),
  };
}
