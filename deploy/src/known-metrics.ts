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
