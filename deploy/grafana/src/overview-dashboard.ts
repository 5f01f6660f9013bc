/** `ckpt-overview`: is every VM protected now, and if not, which part of the pipeline is at fault. */
import type { Dashboard } from '@grafana/grafana-foundation-sdk/dashboard';
import { NEUTRAL, NONE_IS_BAD, UNIT, ZERO_IS_NORMAL, ZERO_IS_OK, below, ckptDashboard, finish, row, stat, table, timeseries, valueText } from './panels.ts';
import { PAUSE_P99_BUDGET_SECONDS, PAUSE_P99_WATCH_SECONDS } from './alert-thresholds.ts';
import { increaseInRange, perMinute, quantile, rate } from './queries.ts';
import { AT_RISK_VMS, FRESH_STANDBY_SECONDS, PROTECTED_VMS, STALE_VMS, lagEpochs, standbyAge, vmStale } from './standby-queries.ts';

export const OVERVIEW_UID = 'ckpt-overview';

const H = 'job="ckpt-harvester"';
const R = 'job="ckpt-replicator"';
const TOP = 10;
const oldest = `topk(${TOP}, ${standbyAge()})`;
/**
 * Which restores the restore panels see: Prometheus scrapes only the failover Deployment's restorers
 * (deploy/k8s/base/pod-monitors.yaml); the drill Job runs with its metrics off and reports elsewhere.
 */
const RESTORES_SEEN = 'Only the failover restorers (Deployment ckpt-restorer-failover) are scraped, and only while their pod runs; drills never show here: a drill\'s result is its Job\'s status (kubectl -n ckpt get jobs -l app.kubernetes.io/component=drill) and the JSON summary on the last line of its log.';

export function overviewDashboard(): Dashboard {
  return finish(ckptDashboard({
    uid: OVERVIEW_UID,
    title: 'Checkpointing / Fleet overview',
    description: 'Whether every guest has a fresh standby image (the live RPO), and which stage (harvester, Kafka, replicator, restorer) is behind or failing.',
  })
    .withRow(row('Protection now'))
    .withPanel(stat({
      title: 'VMs protected',
      description: `VMs whose standby image is fresh (younger than ${FRESH_STANDBY_SECONDS} s) and not stale: a failover now restores them losing at most that age. It should equal the number of guests; see "VMs at risk" for the others.`,
      queries: [{ expr: `count(${PROTECTED_VMS}) or vector(0)` }],
      unit: UNIT.count, steps: NEUTRAL, decimals: 0,
    }))
    .withPanel(stat({
      title: 'VMs at risk',
      description: `VMs with a harvester or a standby whose standby is missing, older than ${FRESH_STANDBY_SECONDS} s or stale: a failover now would lose more than the RPO, or fail. A VM whose host was lost counts here by its ageing standby. Above 0, open "Checkpointing / VM" for those VMs.`,
      queries: [{ expr: `count(${AT_RISK_VMS}) or vector(0)` }],
      unit: UNIT.count, steps: ZERO_IS_OK, decimals: 0,
    }))
    .withPanel(stat({
      title: 'Stale standby images',
      description: 'VMs whose standby image lost continuity (gap, digest mismatch, new generation) and waits for a baseline. A restore of a stale image is refused unless forced. It should fall back to 0 within a baseline; if not, check the harvester of that VM and the resync panels below.',
      queries: [{ expr: `count(${STALE_VMS}) or vector(0)` }],
      unit: UNIT.count, steps: ZERO_IS_OK, decimals: 0,
    }))
    .withPanel(stat({
      title: 'RPO now (oldest standby)',
      description: `The oldest standby image: what a failover of the worst-protected VM would lose now. Orange from 1 s, red from ${FRESH_STANDBY_SECONDS} s; the table below names the VMs.`,
      queries: [{ expr: `max(${standbyAge()})` }],
      unit: UNIT.seconds, steps: below(1, FRESH_STANDBY_SECONDS), noValue: 'no standby',
    }))
    .withPanel(stat({
      title: 'Replication lag p99',
      description: 'From a harvester committing an epoch to a replicator applying it, 99th percentile over all VMs. Rising with steady throughput: the replicators or Redis are too slow (see apply time and consumer lag).',
      queries: [{ expr: quantile(0.99, 'ckpt_replicator_replication_lag_seconds') }],
      unit: UNIT.seconds, steps: below(0.25, 1),
    }))
    .withPanel(stat({
      title: 'Guest pause p99',
      description: `How long a checkpoint pauses a guest: the 99th percentile of the worst VM, the cost guests pay. Orange from ${PAUSE_P99_WATCH_SECONDS * 1000} ms; red from the ${PAUSE_P99_BUDGET_SECONDS * 1000} ms budget, where CkptPauseP99OverBudget fires once it lasts 10 minutes. Then look at the drain time and the dirty rate in "Checkpointing / Host".`,
      queries: [{ expr: `max(${quantile(0.99, 'ckpt_harvester_pause_seconds', '', ['vm'])})` }],
      unit: UNIT.seconds, steps: below(PAUSE_P99_WATCH_SECONDS, PAUSE_P99_BUDGET_SECONDS),
    }))

    .withRow(row('Services'))
    .withPanel(stat({
      title: 'Harvesters up',
      description: 'Harvester processes Prometheus scrapes successfully (one per guest). A guest without a running harvester is not checkpointed at all.',
      queries: [{ expr: `sum(up{${H}})` }],
      unit: UNIT.count, steps: NONE_IS_BAD, decimals: 0, noValue: '0',
    }))
    .withPanel(stat({
      title: 'Harvesters down',
      description: 'Harvester targets Prometheus cannot scrape: the process is gone or hung, and its guest\'s standby is ageing. Above 0, find them in "Checkpointing / Host".',
      queries: [{ expr: `count(up{${H}} == 0) or vector(0)` }],
      unit: UNIT.count, steps: ZERO_IS_OK, decimals: 0,
    }))
    .withPanel(stat({
      title: 'Replicators up',
      description: 'Replicator instances Prometheus scrapes successfully. With none, no standby image moves forward.',
      queries: [{ expr: `sum(up{${R}})` }],
      unit: UNIT.count, steps: NONE_IS_BAD, decimals: 0, noValue: '0',
    }))
    .withPanel(stat({
      title: 'Replicators down',
      description: 'Replicator targets Prometheus cannot scrape. Their partitions move to the other instances after the session timeout; until then their VMs\' standbys age.',
      queries: [{ expr: `count(up{${R}} == 0) or vector(0)` }],
      unit: UNIT.count, steps: ZERO_IS_OK, decimals: 0,
    }))
    .withPanel(stat({
      title: 'Consumer lag',
      description: 'Records on the pages topic not yet handled by the replicators, summed over partitions. Growing: the replicators cannot keep up with the harvesters (scale them out, or look at apply time and Redis).',
      queries: [{ expr: `sum(max by (partition) (ckpt_replicator_consumer_lag_records))` }],
      unit: UNIT.count, steps: below(1000, 10000),
    }))
    .withPanel(stat({
      title: 'Fenced applies (range)',
      description: 'Applies the replicators deferred in the selected range because a restorer held the VM\'s fence, i.e. restores were reading images. Expected during a failover or drill, otherwise a restorer may be stuck holding a fence.',
      queries: [{ expr: increaseInRange('ckpt_replicator_fenced_waits_total'), instant: true }],
      unit: UNIT.count, steps: ZERO_IS_NORMAL, decimals: 0,
    }))

    .withRow(row('RPO per VM'))
    .withPanel(table({
      title: `${TOP} oldest standby images`,
      description: `The VMs that would lose the most in a failover now, with how many epochs they are behind and whether their image is stale. Ages above ${FRESH_STANDBY_SECONDS} s or a stale image need action: click a VM to open its dashboard.`,
      queries: [
        { expr: oldest },
        { expr: `${lagEpochs()} and on (vm) ${oldest}` },
        { expr: `${vmStale()} and on (vm) ${oldest}` },
      ],
      columns: [
        { field: 'vm', title: 'VM', link: { title: 'Open the VM dashboard', url: '/d/ckpt-vm/ckpt-vm?var-vm=${__value.raw}&${datasource:queryparam}&${__url_time_range}' } },
        { field: 'Value #A', title: 'Standby age', unit: UNIT.seconds, steps: below(1, FRESH_STANDBY_SECONDS) },
        { field: 'Value #B', title: 'Epochs behind', unit: UNIT.count },
        { field: 'Value #C', title: 'Image', mappings: valueText({ 0: ['fresh', 'green'], 1: ['STALE', 'red'] }), steps: ZERO_IS_OK },
      ],
    }))
    .withPanel(timeseries({
      title: `Standby age, ${TOP} oldest`,
      description: `Standby age per VM (the live RPO): a sawtooth bounded by a few epoch intervals is healthy. A line climbing steadily is a VM whose epochs no longer reach its standby. Dashed: the ${FRESH_STANDBY_SECONDS} s freshness limit.`,
      queries: [{ expr: oldest, legend: '{{vm}}' }],
      unit: UNIT.seconds, min: 0, line: FRESH_STANDBY_SECONDS, height: 9,
    }))
    .withPanel(timeseries({
      title: 'Protection over time',
      description: 'VMs protected, at risk and stale over the range. At-risk or stale VMs that do not return to 0 within a baseline need action.',
      queries: [
        { expr: `count(${PROTECTED_VMS}) or vector(0)`, legend: 'protected' },
        { expr: `count(${AT_RISK_VMS}) or vector(0)`, legend: 'at risk' },
        { expr: `count(${STALE_VMS}) or vector(0)`, legend: 'stale' },
      ],
      unit: UNIT.count, min: 0, width: 24, height: 7,
    }))

    .withRow(row('Throughput and lag'))
    .withPanel(timeseries({
      title: 'Bytes harvested, published, applied',
      description: 'Page bytes copied out of the guests, bytes Kafka acknowledged (after compression) and page bytes applied to the standbys. Applied should follow harvested; a growing gap means the replicators fall behind.',
      queries: [
        { expr: rate('ckpt_harvester_harvested_bytes_total'), legend: 'harvested' },
        { expr: rate('ckpt_harvester_published_bytes_total'), legend: 'published to Kafka' },
        { expr: rate('ckpt_replicator_bytes_applied_total'), legend: 'applied' },
      ],
      unit: UNIT.bytesPerSecond, min: 0,
    }))
    .withPanel(timeseries({
      title: 'Epochs cut vs applied',
      description: 'Epochs the harvesters cut and the replicators apply, by kind. They should match; baselines appear at start and after each resync.',
      queries: [
        { expr: rate('ckpt_harvester_epochs_total', '', ['kind']), legend: 'cut {{kind}}' },
        { expr: rate('ckpt_replicator_epochs_applied_total', '', ['kind']), legend: 'applied {{kind}}' },
      ],
      unit: UNIT.perSecond('epochs'), min: 0,
    }))
    .withPanel(timeseries({
      title: 'Replication lag and apply time',
      description: 'Commit-to-apply lag and the time to verify and apply one epoch, p50 and p99. Lag much larger than apply time means records wait in Kafka (consumer lag); both large means Redis or the replicators are slow.',
      queries: [
        { expr: quantile(0.5, 'ckpt_replicator_replication_lag_seconds'), legend: 'lag p50' },
        { expr: quantile(0.99, 'ckpt_replicator_replication_lag_seconds'), legend: 'lag p99' },
        { expr: quantile(0.5, 'ckpt_replicator_apply_seconds'), legend: 'apply p50' },
        { expr: quantile(0.99, 'ckpt_replicator_apply_seconds'), legend: 'apply p99' },
      ],
      unit: UNIT.seconds, min: 0,
    }))
    .withPanel(timeseries({
      title: 'Consumer lag by partition',
      description: 'Records on each pages-topic partition after the last one handled. One partition growing alone: a hot VM or a stuck replicator; all growing: too few replicators.',
      queries: [{ expr: 'max by (partition) (ckpt_replicator_consumer_lag_records)', legend: 'partition {{partition}}' }],
      unit: UNIT.count, min: 0,
    }))
    .withPanel(timeseries({
      title: 'Guest pause',
      description: 'Checkpoint pause over all VMs (p50, p99) and the 5 VMs with the longest p99. One VM far above the rest dirties memory faster than its rings drain: see its dashboard.',
      queries: [
        { expr: quantile(0.5, 'ckpt_harvester_pause_seconds'), legend: 'all p50' },
        { expr: quantile(0.99, 'ckpt_harvester_pause_seconds'), legend: 'all p99' },
        { expr: `topk(5, ${quantile(0.99, 'ckpt_harvester_pause_seconds', '', ['vm'])})`, legend: '{{vm}} p99' },
      ],
      unit: UNIT.seconds, min: 0,
    }))
    .withPanel(timeseries({
      title: 'Harvesters held back (worst VM)',
      description: 'Share of time the most held-back harvester waited before producing, by cause (in-flight: Kafka acknowledges too slowly; replication-window: the replicator is too far behind), and the share by which epoch intervals overran. Sustained above a few percent, the RPO grows: fix Kafka or the replicators.',
      queries: [
        { expr: 'max by (cause) (rate(ckpt_harvester_backpressure_seconds_total[$__rate_interval]))', legend: 'waiting: {{cause}}' },
        { expr: 'max(rate(ckpt_harvester_interval_stretch_seconds_total[$__rate_interval]))', legend: 'interval stretch' },
      ],
      unit: UNIT.ratio, min: 0,
    }))

    .withRow(row('Errors (selected range)'))
    .withPanel(stat({
      title: 'Digest mismatches',
      description: 'Epochs the replicators refused because the standby would not match the harvester\'s digest. Any is a bug or corruption: the VM goes stale until a baseline; report it.',
      queries: [{ expr: increaseInRange('ckpt_replicator_digest_mismatches_total'), instant: true }],
      unit: UNIT.count, steps: ZERO_IS_OK, decimals: 0,
    }))
    .withPanel(stat({
      title: 'Continuity gaps',
      description: 'Breaks the replicators detected (missing epoch or batch, new generation, no image). A new generation after a harvester restart is expected; others mean lost records. Each gap makes a VM stale until its baseline.',
      queries: [{ expr: increaseInRange('ckpt_replicator_gaps_total'), instant: true }],
      unit: UNIT.count, steps: ZERO_IS_NORMAL, decimals: 0,
    }))
    .withPanel(stat({
      title: 'Dead letters',
      description: 'Records parked on the dead-letter topic (malformed, oversize, out of order, ...). Any is unexpected: inspect the dead-letter topic; the reasons are in the panel below.',
      queries: [{ expr: increaseInRange('ckpt_replicator_dead_letters_total'), instant: true }],
      unit: UNIT.count, steps: ZERO_IS_OK, decimals: 0,
    }))
    .withPanel(stat({
      title: 'Produce errors',
      description: 'Failed Kafka produce attempts by the harvesters. They are retried until the publish timeout; a burst means Kafka trouble, and a record that never makes it ends its generation (a resync follows).',
      queries: [{ expr: increaseInRange('ckpt_harvester_produce_errors_total'), instant: true }],
      unit: UNIT.count, steps: ZERO_IS_NORMAL, decimals: 0,
    }))
    .withPanel(stat({
      title: 'Dirty-ring entries lost / invalid',
      description: 'Dirty-ring entries the kernel overwrote before harvest (lost) or that had a bad slot or offset (invalid). Either means a dirty page may be missing from an epoch: the harvester resyncs; if it recurs, the rings are too small for the dirty rate.',
      queries: [
        { expr: increaseInRange('ckpt_harvester_ring_entries_lost_total'), legend: 'lost', instant: true },
        { expr: increaseInRange('ckpt_harvester_invalid_entries_total'), legend: 'invalid', instant: true },
      ],
      unit: UNIT.count, steps: ZERO_IS_OK, decimals: 0,
    }))
    .withPanel(stat({
      title: 'Verify mismatches',
      description: 'Pages a harvester running with --verify found wrong. Any is a harvesting bug: keep the logs and report it.',
      queries: [{ expr: increaseInRange('ckpt_harvester_verify_mismatches_total'), instant: true }],
      unit: UNIT.count, steps: ZERO_IS_OK, decimals: 0,
    }))
    .withPanel(timeseries({
      title: 'Errors per minute',
      description: 'The errors above over time, with their reasons, and replicator consumer restarts (each one rebalances the group). Use it to match an error burst with a deploy, a Kafka incident or one VM.',
      queries: [
        { expr: perMinute('ckpt_replicator_digest_mismatches_total'), legend: 'digest mismatch' },
        { expr: perMinute('ckpt_replicator_gaps_total', '', ['reason']), legend: 'gap: {{reason}}' },
        { expr: perMinute('ckpt_replicator_dead_letters_total', '', ['reason']), legend: 'dead letter: {{reason}}' },
        { expr: perMinute('ckpt_harvester_produce_errors_total'), legend: 'produce error' },
        { expr: perMinute('ckpt_harvester_ring_entries_lost_total'), legend: 'ring entry lost' },
        { expr: perMinute('ckpt_harvester_invalid_entries_total'), legend: 'invalid ring entry' },
        { expr: perMinute('ckpt_replicator_consumer_restarts_total'), legend: 'replicator consumer restart' },
      ],
      unit: UNIT.perMinute('events'), min: 0,
    }))
    .withPanel(timeseries({
      title: 'Resyncs per minute',
      description: 'Baselines asked for by the replicators, new generations started by the harvesters, and replication windows cleared after a stalled replicator. Each resync ships a full baseline: a steady rate means continuity keeps breaking.',
      queries: [
        { expr: perMinute('ckpt_replicator_resync_requests_total'), legend: 'requested by replicators' },
        { expr: perMinute('ckpt_harvester_resyncs_total'), legend: 'new generations (harvesters)' },
        { expr: perMinute('ckpt_harvester_window_stalls_total'), legend: 'window stalls' },
      ],
      unit: UNIT.perMinute('resyncs'), min: 0,
    }))

    .withRow(row('Restores'))
    .withPanel(stat({
      title: 'Restores by outcome (range)',
      description: `Failover restores that ended in the selected range, by outcome: refused-stale and refused-digest protected a guest from a bad image; error needs the restorer logs. Counted from each restorer's end-of-restore time, so a restore that ended before the pod's first scrape counts too; a pod restarted after an error counts once. ${RESTORES_SEEN}`,
      queries: [{ expr: 'count by (outcome) (max_over_time(ckpt_restorer_last_restore_end_timestamp_seconds[$__range]) >= time() - $__range_s)', legend: '{{outcome}}', instant: true }],
      unit: UNIT.count, steps: NEUTRAL, decimals: 0, noValue: 'none', width: 6,
    }))
    .withPanel(stat({
      title: 'Last successful restore',
      description: `Time since a failover restorer scraped in the selected range last restored successfully (a restorer reports 0 until its restore succeeds, shown as none). ${RESTORES_SEEN} Restores that are never exercised may not work when needed: run a drill regularly and read its result there.`,
      queries: [{ expr: 'time() - max(max_over_time(ckpt_restorer_last_success_timestamp_seconds[$__range]) > 0)', instant: true }],
      unit: UNIT.seconds, steps: NEUTRAL, noValue: 'none in range', width: 6,
    }))
    .withPanel(stat({
      title: 'Slowest restore (range)',
      description: `Time to read, verify and hand over an image (fence to release) of the slowest failover restore that ended in the selected range: the restore part of the RTO. Taken from each restorer's last-restore gauges, so a restore that ended before the pod's first scrape shows too. ${RESTORES_SEEN}`,
      queries: [{ expr: 'max(max_over_time(ckpt_restorer_last_restore_duration_seconds[$__range]) and max without (outcome) (max_over_time(ckpt_restorer_last_restore_end_timestamp_seconds[$__range])) >= time() - $__range_s)', instant: true }],
      unit: UNIT.seconds, steps: NEUTRAL, noValue: 'no restores', width: 6,
    }))
    .withPanel(stat({
      title: 'Last restore throughput',
      description: `Guest memory per second of the last successful failover restore in the selected range (0 before a success is shown as none). Divide a guest's memory size by it to estimate its restore time. ${RESTORES_SEEN}`,
      queries: [{ expr: 'max(last_over_time(ckpt_restorer_throughput_bytes_per_second[$__range]) > 0)', instant: true }],
      unit: UNIT.bytesPerSecond, steps: NEUTRAL, noValue: 'no restores', width: 6,
    })));
}
