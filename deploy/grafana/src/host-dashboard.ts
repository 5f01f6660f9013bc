/**
 * `ckpt-host`: the harvester processes of one or more scrape targets side by side (select those of one
 * KVM host to see it; a `node` label is not guaranteed, so targets are picked by `instance`).
 */
import { VariableSort, type Dashboard } from '@grafana/grafana-foundation-sdk/dashboard';
import { NEUTRAL, NONE_IS_BAD, UNIT, ZERO_IS_OK, ckptDashboard, finish, heatmap, labelValuesVariable, row, stat, timeseries } from './panels.ts';
import { buckets, perMinute, quantile, rate } from './queries.ts';

export const HOST_UID = 'ckpt-host';

/** Every query of this dashboard carries this matcher. */
const I = 'instance=~"$instance"';
/** Process metrics are exported by every service: these are the harvesters'. */
const PROCESS = `job="ckpt-harvester", ${I}`;
const EACH = ['instance', 'vm'];
const LEGEND = '{{vm}} ({{instance}})';

export function hostDashboard(): Dashboard {
  return finish(ckptDashboard({
    uid: HOST_UID,
    title: 'Checkpointing / Host',
    description: 'Harvester processes (one per guest) of the selected targets: dirty rings, pause and drain distributions, Kafka produce, CPU and memory.',
  })
    .withVariable(labelValuesVariable({
      name: 'instance', label: 'Harvester', description: 'Harvester scrape targets; select those of one KVM host to see that host',
      query: 'label_values(up{job="ckpt-harvester"}, instance)', sort: VariableSort.NaturalAsc,
    })
      .multi(true)
      .includeAll(true)
      .allValue('.+')
      .current({ selected: true, text: ['All'], value: ['$__all'] }))

    .withRow(row('Targets'))
    .withPanel(stat({
      title: 'Harvesters up',
      description: 'Selected harvester targets Prometheus scrapes successfully.',
      queries: [{ expr: `sum(up{job="ckpt-harvester", ${I}})` }],
      unit: UNIT.count, steps: NONE_IS_BAD, decimals: 0, width: 6, noValue: '0',
    }))
    .withPanel(stat({
      title: 'Harvesters down',
      description: 'Selected harvester targets Prometheus cannot scrape: their guests are not checkpointed. Check those pods.',
      queries: [{ expr: `count(up{job="ckpt-harvester", ${I}} == 0) or vector(0)` }],
      unit: UNIT.count, steps: ZERO_IS_OK, decimals: 0, width: 6,
    }))
    .withPanel(stat({
      title: 'Guests',
      description: 'Guests (vm label) the selected harvesters checkpoint.',
      queries: [{ expr: `count(count by (vm) (ckpt_harvester_last_epoch{${I}}))` }],
      unit: UNIT.count, steps: NEUTRAL, decimals: 0, width: 6, noValue: '0',
    }))
    .withPanel(stat({
      title: 'In flight to Kafka',
      description: 'Bytes the selected harvesters sent to Kafka and wait to have acknowledged. Near their caps, they are held back (see "Held back").',
      queries: [{ expr: `sum(ckpt_harvester_in_flight_bytes{${I}})` }],
      unit: UNIT.bytes, steps: NEUTRAL, width: 6,
    }))

    .withRow(row('Dirty rings'))
    .withPanel(timeseries({
      title: 'Dirty rate',
      description: 'Valid dirty-ring entries (or bitmap bits) each harvester drains per second: each guest\'s write load. The busiest guests have the largest epochs and longest drains. Entries, not pages: a host that logs every store (kvm-pvm) logs a page once per write, so entries can exceed pages many times over; the pages copied are on the VM dashboard.',
      queries: [{ expr: rate('ckpt_harvester_ring_entries_harvested_total', I, EACH), legend: LEGEND }],
      unit: UNIT.perSecond('entries'), min: 0, legendTable: true,
    }))
    .withPanel(timeseries({
      title: 'Ring-full exits and reliefs',
      description: 'vCPU exits on a full dirty ring (the vCPU stalls until a drain) and live drains between epochs that free them. Frequent exits on one guest: give it bigger rings or shorter epochs.',
      queries: [
        { expr: rate('ckpt_harvester_ring_full_exits_total', I, EACH), legend: `${LEGEND} full exits` },
        { expr: rate('ckpt_harvester_ring_reliefs_total', I, EACH), legend: `${LEGEND} reliefs` },
      ],
      unit: UNIT.perSecond('events'), min: 0, legendTable: true,
    }))
    .withPanel(timeseries({
      title: 'Ring entries lost and invalid',
      description: 'Entries the kernel overwrote before they were harvested (ring overrun) and entries with a bad slot, offset or flags. Both should be 0: either forces a resync, and lost entries on a host point at its kernel (see docs/harvester.md).',
      queries: [
        { expr: rate('ckpt_harvester_ring_entries_lost_total', I, EACH), legend: `${LEGEND} lost` },
        { expr: rate('ckpt_harvester_invalid_entries_total', I, EACH), legend: `${LEGEND} invalid` },
      ],
      unit: UNIT.perSecond('entries'), min: 0, legendTable: true,
    }))
    .withPanel(timeseries({
      title: 'Bytes harvested',
      description: 'Page bytes copied out of each guest (zero pages excluded): the host\'s memory bandwidth spent on checkpoints and the load each guest puts on Kafka.',
      queries: [{ expr: rate('ckpt_harvester_harvested_bytes_total', I, EACH), legend: LEGEND }],
      unit: UNIT.bytesPerSecond, min: 0, legendTable: true,
    }))

    .withRow(row('Pauses and drains'))
    .withPanel(heatmap({
      title: 'Guest pause distribution',
      description: 'Checkpoint pauses of the selected harvesters by duration bucket over time. A band moving up, or a second band, means some checkpoints got slower: compare with the drain distribution.',
      expr: buckets('ckpt_harvester_pause_seconds', I),
      unit: UNIT.seconds,
    }))
    .withPanel(timeseries({
      title: 'Guest pause p99',
      description: 'The longest 1% of checkpoint pauses, per guest. The guests on top pay the most for being checkpointed.',
      queries: [{ expr: quantile(0.99, 'ckpt_harvester_pause_seconds', I, EACH), legend: LEGEND }],
      unit: UNIT.seconds, min: 0, legendTable: true,
    }))
    .withPanel(heatmap({
      title: 'Ring drain distribution',
      description: 'Time to drain every dirty ring while paused, by bucket over time. It grows with the dirty rate; when it makes most of the pause, shorter epochs shorten pauses.',
      expr: buckets('ckpt_harvester_drain_seconds', I),
      unit: UNIT.seconds,
    }))
    .withPanel(timeseries({
      title: 'Ring drain p99',
      description: 'The longest 1% of ring drains, per guest.',
      queries: [{ expr: quantile(0.99, 'ckpt_harvester_drain_seconds', I, EACH), legend: LEGEND }],
      unit: UNIT.seconds, min: 0, legendTable: true,
    }))

    .withRow(row('Kafka produce'))
    .withPanel(timeseries({
      title: 'Produce latency',
      description: 'Send to acks=all acknowledgement, p99 per guest and p50 over the selection. All guests slow together: Kafka or the network; one guest: its records are large or its partition leader is slow.',
      queries: [
        { expr: quantile(0.5, 'ckpt_harvester_produce_seconds', I), legend: 'all p50' },
        { expr: quantile(0.99, 'ckpt_harvester_produce_seconds', I, EACH), legend: `${LEGEND} p99` },
      ],
      unit: UNIT.seconds, min: 0, legendTable: true,
    }))
    .withPanel(timeseries({
      title: 'In-flight bytes',
      description: 'Bytes sent to Kafka and not yet acknowledged, per guest. A guest pinned at its cap (HARVESTER_MAX_IN_FLIGHT_BYTES) is held back by Kafka.',
      queries: [{ expr: `max by (instance, vm) (ckpt_harvester_in_flight_bytes{${I}})`, legend: LEGEND }],
      unit: UNIT.bytes, min: 0, legendTable: true,
    }))
    .withPanel(timeseries({
      title: 'Held back',
      description: 'Share of time each harvester waited before producing, by cause (in-flight: Kafka; replication-window: the replicator), and by which its epoch intervals overran. Sustained values stretch the RPO of those guests.',
      queries: [
        { expr: rate('ckpt_harvester_backpressure_seconds_total', I, [...EACH, 'cause']), legend: `${LEGEND} {{cause}}` },
        { expr: rate('ckpt_harvester_interval_stretch_seconds_total', I, EACH), legend: `${LEGEND} interval stretch` },
      ],
      unit: UNIT.ratio, min: 0, legendTable: true,
    }))
    .withPanel(timeseries({
      title: 'Published bytes',
      description: 'Record bytes Kafka acknowledged per guest (after compression): each guest\'s share of the Kafka write load. Compare with "Bytes harvested": published far under harvested with compression off means records wait.',
      queries: [{ expr: rate('ckpt_harvester_published_bytes_total', I, EACH), legend: LEGEND }],
      unit: UNIT.bytesPerSecond, min: 0, legendTable: true,
    }))
    .withPanel(timeseries({
      title: 'Produce errors',
      description: 'Failed produce attempts per guest, per minute. They are retried until the publish timeout; one that never succeeds ends the generation and a resync follows.',
      queries: [{ expr: perMinute('ckpt_harvester_produce_errors_total', I, EACH), legend: LEGEND }],
      unit: UNIT.perMinute('errors'), min: 0, legendTable: true,
    }))

    .withRow(row('Processes'))
    .withPanel(timeseries({
      title: 'CPU',
      description: 'CPU of each harvester process (100% = one core), vCPU threads included since the guest runs in it. Sum them to see the host\'s share spent on guests and checkpoints.',
      queries: [{ expr: rate('process_cpu_seconds_total', PROCESS, EACH), legend: LEGEND }],
      unit: UNIT.ratio, min: 0, legendTable: true,
    }))
    .withPanel(timeseries({
      title: 'Resident memory',
      description: 'Resident memory of each harvester process, including the guest RAM it has touched (the guest runs in it on a shared memfd). Growth beyond the guest\'s size is a leak.',
      queries: [{ expr: `max by (instance, vm) (process_resident_memory_bytes{${PROCESS}})`, legend: LEGEND }],
      unit: UNIT.bytes, min: 0, legendTable: true,
    }))
    .withPanel(timeseries({
      title: 'Event-loop lag p99',
      description: 'Node.js event-loop lag of each harvester (p99 over prom-client\'s sampling window). Lag delays epoch cuts and produce callbacks; tens of milliseconds stretch the epoch interval.',
      queries: [{ expr: `max by (instance, vm) (nodejs_eventloop_lag_p99_seconds{${PROCESS}})`, legend: LEGEND }],
      unit: UNIT.seconds, min: 0, legendTable: true,
    }))
    .withPanel(timeseries({
      title: 'Heap used',
      description: 'V8 heap used by each harvester. Page data lives outside the heap, so steady heap growth is a leak in the harvester itself.',
      queries: [{ expr: `max by (instance, vm) (nodejs_heap_size_used_bytes{${PROCESS}})`, legend: LEGEND }],
      unit: UNIT.bytes, min: 0, legendTable: true,
    })));
}
