/** `ckpt-vm`: everything about one guest's checkpoints, from its dirty rings to its standby image. */
import { VariableSort, type Dashboard } from '@grafana/grafana-foundation-sdk/dashboard';
import { NEUTRAL, UNIT, below, ckptDashboard, finish, labelValuesVariable, row, stat, timeseries, valueText } from './panels.ts';
import { mean, perMinute, quantile, rate } from './queries.ts';
import { FRESH_STANDBY_SECONDS, VM_VARIABLE_QUERY, lagEpochs, standbyAge, vmStale } from './standby-queries.ts';

export const VM_UID = 'ckpt-vm';

/** Every query of this dashboard carries this matcher (the test checks it). */
export const VM = 'vm="$vm"';

export function vmDashboard(): Dashboard {
  return finish(ckptDashboard({
    uid: VM_UID,
    title: 'Checkpointing / VM',
    description: 'One guest: how fresh its standby image is, how far replication is behind, what each checkpoint costs the guest, and whether its harvester is held back or resyncing.',
  })
    .withVariable(labelValuesVariable({
      name: 'vm', label: 'VM', description: 'Guests with a harvester or a standby image in the selected time range (the harvester\'s HARVESTER_VM_ID): a guest whose host was lost is still listed by its standby',
      query: VM_VARIABLE_QUERY, sort: VariableSort.AlphabeticalAsc,
    }))

    .withRow(row('Standby image'))
    .withPanel(stat({
      title: 'Standby age (RPO now)',
      description: `Time since the harvester paused the guest for the epoch this VM's standby holds: the guest time a failover now would lose. Orange from 1 s, red from ${FRESH_STANDBY_SECONDS} s.`,
      queries: [{ expr: standbyAge(VM) }],
      unit: UNIT.seconds, steps: below(1, FRESH_STANDBY_SECONDS), noValue: 'no standby',
    }))
    .withPanel(stat({
      title: 'Standby image',
      description: 'STALE: the image lost continuity and waits for a baseline; a restore refuses it unless forced. It should turn fresh again within a baseline; if not, see the resync panel below.',
      queries: [{ expr: vmStale(VM) }],
      unit: UNIT.none, steps: NEUTRAL, mappings: valueText({ 0: ['fresh', 'green'], 1: ['STALE', 'red'] }), noValue: 'no standby',
    }))
    .withPanel(stat({
      title: 'Epochs behind',
      description: 'Epochs of this VM on the topic that the standby has not applied yet. More than a few: the replicator cannot keep up with this VM. Yellow from 3 and red from 20 are early warnings for this screen; the alert CkptReplicationLagHigh pages at 200 (docs/alerts.md).',
      queries: [{ expr: lagEpochs(VM) }],
      unit: UNIT.count, steps: below(3, 20), decimals: 0,
    }))
    .withPanel(stat({
      title: 'Last epoch cut',
      description: 'Number of the last epoch the harvester cut. It should increase every refresh while the guest runs.',
      queries: [{ expr: `max(ckpt_harvester_last_epoch{${VM}})` }],
      unit: UNIT.none, steps: NEUTRAL, decimals: 0, noValue: 'no harvester',
    }))
    .withPanel(stat({
      title: 'Last epoch applied',
      description: 'Number of the epoch the standby holds. Close behind "Last epoch cut" is healthy.',
      queries: [{ expr: `max by (vm) (ckpt_replicator_last_applied_epoch{${VM}})` }],
      unit: UNIT.none, steps: NEUTRAL, decimals: 0, noValue: 'no standby',
    }))
    .withPanel(stat({
      title: 'Harvester',
      description: 'Whether Prometheus scrapes this VM\'s harvester (found by its series of the last 10 minutes). DOWN: the guest is not checkpointed and its standby ages; check the harvester pod.',
      queries: [{ expr: `max(up{job="ckpt-harvester"} and on (instance) last_over_time(ckpt_harvester_last_epoch{${VM}}[10m]))` }],
      unit: UNIT.none, steps: NEUTRAL, mappings: valueText({ 0: ['DOWN', 'red'], 1: ['up', 'green'] }), noValue: 'no harvester',
    }))

    .withRow(row('Replication'))
    .withPanel(timeseries({
      title: 'Standby age and apply lag',
      description: `Standby age (the live RPO: a sawtooth a few epochs high is healthy, a steady climb means epochs stop reaching the standby) and the commit-to-apply lag of the last applied epoch. Dashed: the ${FRESH_STANDBY_SECONDS} s freshness limit.`,
      queries: [
        { expr: standbyAge(VM), legend: 'standby age' },
        { expr: `min by (vm) (ckpt_replicator_lag_seconds{${VM}})`, legend: 'commit → apply (last epoch)' },
      ],
      unit: UNIT.seconds, min: 0, line: FRESH_STANDBY_SECONDS,
    }))
    .withPanel(timeseries({
      title: 'Epochs cut vs applied',
      description: 'The harvester\'s last epoch number and the standby\'s. The vertical distance is the replication lag in epochs; lines that stop together mean the harvester stopped, a flat applied line under a rising cut line means replication stopped.',
      queries: [
        { expr: `max(ckpt_harvester_last_epoch{${VM}})`, legend: 'cut' },
        { expr: `max by (vm) (ckpt_replicator_last_applied_epoch{${VM}})`, legend: 'applied' },
      ],
      unit: UNIT.none,
    }))
    .withPanel(timeseries({
      title: 'Epochs behind and stale',
      description: 'Epochs not yet applied, and 1 while the image is stale. Stale periods should end with a baseline within seconds.',
      queries: [
        { expr: lagEpochs(VM), legend: 'epochs behind' },
        { expr: vmStale(VM), legend: 'stale' },
      ],
      unit: UNIT.count, min: 0,
    }))
    .withPanel(timeseries({
      title: 'Resyncs and continuity',
      description: 'Resyncs the replicators asked of this harvester (each is a gap or digest mismatch they saw on this VM), new generations it started (each ships a full baseline), replication windows cleared after a stalled replicator, and produce errors. A steady rate means continuity keeps breaking for this VM.',
      queries: [
        { expr: perMinute('ckpt_harvester_resync_requests_total', VM), legend: 'resync requested (gap seen by a replicator)' },
        { expr: perMinute('ckpt_harvester_resyncs_total', VM), legend: 'new generation' },
        { expr: perMinute('ckpt_harvester_window_stalls_total', VM), legend: 'window stall' },
        { expr: perMinute('ckpt_harvester_produce_errors_total', VM), legend: 'produce error' },
      ],
      unit: UNIT.perMinute('events'), min: 0,
    }))

    .withRow(row('Checkpoint cost'))
    .withPanel(timeseries({
      title: 'Guest pause and ring drain',
      description: 'How long each checkpoint pauses the guest, and the part spent draining its dirty rings, p50 and p99. A pause dominated by the drain means the guest dirties many pages per epoch: a shorter epoch interval makes each pause shorter.',
      queries: [
        { expr: quantile(0.5, 'ckpt_harvester_pause_seconds', VM), legend: 'pause p50' },
        { expr: quantile(0.99, 'ckpt_harvester_pause_seconds', VM), legend: 'pause p99' },
        { expr: quantile(0.5, 'ckpt_harvester_drain_seconds', VM), legend: 'drain p50' },
        { expr: quantile(0.99, 'ckpt_harvester_drain_seconds', VM), legend: 'drain p99' },
      ],
      unit: UNIT.seconds, min: 0,
    }))
    .withPanel(timeseries({
      title: 'Epoch size',
      description: 'Page data per epoch (zero pages excluded): mean, p50 and p99 (bucket resolution). Large epochs take longer to publish and apply, so the standby lags more.',
      queries: [
        { expr: mean('ckpt_harvester_epoch_bytes', VM), legend: 'mean' },
        { expr: quantile(0.5, 'ckpt_harvester_epoch_bytes', VM), legend: 'p50' },
        { expr: quantile(0.99, 'ckpt_harvester_epoch_bytes', VM), legend: 'p99' },
      ],
      unit: UNIT.bytes, min: 0,
    }))
    .withPanel(timeseries({
      title: 'Dirty rate',
      description: 'The guest\'s write load: pages copied into epochs per second (baselines included, so a baseline shows as a spike) and valid dirty-ring entries (or bitmap bits) drained per second, which set the drain time. On a host that logs every store (kvm-pvm) a page is logged once per write, so entries can exceed pages many times over.',
      queries: [
        { expr: rate('ckpt_harvester_pages_harvested_total', VM), legend: 'pages copied' },
        { expr: rate('ckpt_harvester_ring_entries_harvested_total', VM), legend: 'ring entries' },
      ],
      unit: UNIT.perSecond('events'), min: 0,
    }))
    .withPanel(timeseries({
      title: 'Bytes harvested and published',
      description: 'Page bytes copied out of the guest and record bytes Kafka acknowledged (after compression). Published well under harvested with compression off: records wait (see backpressure).',
      queries: [
        { expr: rate('ckpt_harvester_harvested_bytes_total', VM), legend: 'harvested' },
        { expr: rate('ckpt_harvester_published_bytes_total', VM), legend: 'published' },
      ],
      unit: UNIT.bytesPerSecond, min: 0,
    }))
    .withPanel(timeseries({
      title: 'Dirty rings under pressure',
      description: 'vCPU exits on a full ring (the vCPU stalls until a drain), live drains between epochs to relieve them, and entries lost to ring overrun or invalid. Frequent full exits: bigger rings or shorter epochs; any lost entry forces a resync.',
      queries: [
        { expr: rate('ckpt_harvester_ring_full_exits_total', VM), legend: 'ring-full exits' },
        { expr: rate('ckpt_harvester_ring_reliefs_total', VM), legend: 'reliefs' },
        { expr: rate('ckpt_harvester_ring_entries_lost_total', VM), legend: 'entries lost' },
        { expr: rate('ckpt_harvester_invalid_entries_total', VM), legend: 'entries invalid' },
      ],
      unit: UNIT.perSecond('events'), min: 0,
    }))
    .withPanel(timeseries({
      title: 'Held back',
      description: 'Share of time the harvester waited before producing, by cause (in-flight: Kafka acknowledges too slowly; replication-window: the replicator is too far behind), and the share by which epoch intervals overran. Any sustained value stretches the RPO.',
      queries: [
        { expr: rate('ckpt_harvester_backpressure_seconds_total', VM, ['cause']), legend: 'waiting: {{cause}}' },
        { expr: rate('ckpt_harvester_interval_stretch_seconds_total', VM), legend: 'interval stretch' },
      ],
      unit: UNIT.ratio, min: 0,
    }))

    .withRow(row('Kafka and process'))
    .withPanel(timeseries({
      title: 'Produce latency',
      description: 'Send to acks=all acknowledgement per record, p50 and p99. High latency fills the in-flight budget and then holds the harvester back.',
      queries: [
        { expr: quantile(0.5, 'ckpt_harvester_produce_seconds', VM), legend: 'p50' },
        { expr: quantile(0.99, 'ckpt_harvester_produce_seconds', VM), legend: 'p99' },
      ],
      unit: UNIT.seconds, min: 0,
    }))
    .withPanel(timeseries({
      title: 'In flight to Kafka',
      description: 'Bytes sent and not yet acknowledged. At the HARVESTER_MAX_IN_FLIGHT_BYTES cap the harvester waits ("in-flight" backpressure).',
      queries: [{ expr: `max(ckpt_harvester_in_flight_bytes{${VM}})`, legend: 'in flight' }],
      unit: UNIT.bytes, min: 0,
    }))
    .withPanel(timeseries({
      title: 'Harvester CPU',
      description: 'CPU of this VM\'s harvester process (100% = one core), the guest\'s vCPU threads included since the guest runs in it. A jump without more dirty pages points at the harvester rather than the guest.',
      queries: [{ expr: rate('process_cpu_seconds_total', `job="ckpt-harvester", ${VM}`), legend: 'cpu' }],
      unit: UNIT.ratio, min: 0,
    }))
    .withPanel(timeseries({
      title: 'Harvester memory',
      description: 'Resident memory of this VM\'s harvester process. It includes the guest RAM the process has touched (the guest runs in it, on a shared memfd), so expect about the guest\'s size plus the harvester\'s own; growth beyond that is a leak.',
      queries: [{ expr: `max(process_resident_memory_bytes{job="ckpt-harvester", ${VM}})`, legend: 'resident' }],
      unit: UNIT.bytes, min: 0,
    })));
}
