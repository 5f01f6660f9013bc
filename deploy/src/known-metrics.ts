/**
 * What the services export, read from their own metric factories (never a hand-kept list): the
 * dashboards, alert rules and docs/metrics.md are checked against it.
 */
import type { Registry } from 'prom-client';
import { createHarvesterMetrics } from '@ckpt/harvester';
import { createReplicatorMetrics } from '@ckpt/replicator';
import { createRestorerMetrics } from '@ckpt/restorer';

export type MetricType = 'counter' | 'gauge' | 'histogram' | 'summary';

export interface KnownMetric {
  name: string;
  type: MetricType;
  help: string;
  labels: string[];
  service: 'harvester' | 'replicator' | 'restorer';
  /** prom-client's default process/Node.js metrics, present on every service. */
  builtin: boolean;
}

/** Series Prometheus itself adds to every target. */
export const SCRAPE_SERIES = ['up', 'scrape_duration_seconds', 'scrape_samples_scraped', 'scrape_series_added'] as const;

function fromRegistry(registry: Registry, service: KnownMetric['service'], own: string, defaultLabels: string[] = []): KnownMetric[] {
  return registry.getMetricsAsArray().map((m) => {
    const metric = m as unknown as { name: string; help: string; type: MetricType; labelNames?: string[] };
    return { name: metric.name, type: metric.type, help: metric.help, labels: [...(metric.labelNames ?? []), ...defaultLabels], service, builtin: !metric.name.startsWith(own) };
  });
}

let known: readonly KnownMetric[] | null = null;

/** Every metric family each service registers, default process metrics included (read once per process). */
export function knownMetrics(): readonly KnownMetric[] {
  known ??= [
    // The harvester service labels every series with its guest's id (one guest per process).
    ...fromRegistry(createHarvesterMetrics({ defaultMetrics: true, vm: 'probe' }).registry, 'harvester', 'ckpt_harvester_', ['vm']),
    ...fromRegistry(createReplicatorMetrics({ defaultMetrics: true }).registry, 'replicator', 'ckpt_replicator_'),
    ...fromRegistry(createRestorerMetrics({ defaultMetrics: true }).registry, 'restorer', 'ckpt_restorer_'),
  ];
  return known;
}

/**
 * Every series name a query may use: each family, plus `_bucket`, `_sum` and `_count` for histograms
 * (`_sum`, `_count` for summaries), plus what Prometheus adds per target (`up`, ...).
 */
export function knownSeriesNames(): Set<string> {
  const names = new Set<string>(SCRAPE_SERIES);
  for (const m of knownMetrics()) {
    names.add(m.name);
    if (m.type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(m.name + s);
    if (m.type === 'summary') for (const s of ['_sum', '_count']) names.add(m.name + s);
  }
  return names;
}

/** Labels Prometheus (and the Prometheus Operator's PodMonitors) put on every series of a target. */
export const TARGET_LABELS = ['job', 'instance', 'namespace', 'pod', 'container', 'endpoint', 'service'] as const;

/**
 * Label names a selector may match on for a series name: its family's labels, the target's, and `le`
 * on histogram buckets (`quantile` on summaries). Null for a name that is not a known series.
 */
export function seriesLabels(series: string): Set<string> | null {
  if ((SCRAPE_SERIES as readonly string[]).includes(series)) return new Set(TARGET_LABELS);
  for (const m of knownMetrics()) {
    const suffix = series === m.name ? '' : series.startsWith(m.name) ? series.slice(m.name.length) : null;
    if (suffix === null) continue;
    const ok = suffix === '' || (m.type === 'histogram' && ['_bucket', '_sum', '_count'].includes(suffix)) || (m.type === 'summary' && ['_sum', '_count'].includes(suffix));
    if (!ok) continue;
    const labels = new Set<string>([...m.labels, ...TARGET_LABELS]);
    if (suffix === '_bucket') labels.add('le');
    if (m.type === 'summary' && suffix === '') labels.add('quantile');
    return labels;
  }
  return null;
}

/** "<metric> has no label <x>" for each selector label the metric does not carry (unknown metrics are reported elsewhere). */
export function selectorLabelProblems(selectors: { metric: string | null; labels: string[] }[]): string[] {
  const out: string[] = [];
  for (const s of selectors) {
    if (!s.metric) continue;
    const allowed = seriesLabels(s.metric);
    if (!allowed) continue;
    for (const l of s.labels) if (!allowed.has(l)) out.push(`${s.metric} has no label ${l} (it has ${[...allowed].sort().join(', ')})`);
  }
  return out;
}
