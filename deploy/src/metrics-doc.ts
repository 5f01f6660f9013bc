import { readFileSync } from 'node:fs';
import type { CheckResult } from './check-result.ts';
import { knownMetrics, type KnownMetric } from './known-metrics.ts';

/** Reads the metric tables of docs/metrics.md: `| \`name\` | type | \`label\`, ... | meaning |`. */
export interface DocumentedMetric {
  type: string;
  labels: string[];
  meaning: string;
}

const ROW = /^\|\s*`(\w+)`\s*\|\s*(\w+)\s*\|([^|]*)\|(.*)\|\s*$/;

export function parseMetricsDoc(markdown: string): Map<string, DocumentedMetric> {
  const out = new Map<string, DocumentedMetric>();
  for (const line of markdown.split('\n')) {
    const m = ROW.exec(line);
    if (!m) continue;
    const labels = [...m[3]!.matchAll(/`(\w+)`/g)].map((x) => x[1]!);
    out.set(m[1]!, { type: m[2]!, labels, meaning: m[4]!.trim() });
  }
  return out;
}

/** Where docs/metrics.md and the services' metric factories disagree, one line per difference. */
export function compareMetricsDoc(markdown: string, own: readonly KnownMetric[]): string[] {
  const documented = parseMetricsDoc(markdown);
  const problems: string[] = [];
  for (const m of own) {
    const d = documented.get(m.name);
    if (!d) problems.push(`docs/metrics.md: ${m.name} (${m.service}) is not listed`);
    else {
      if (d.type !== m.type) problems.push(`docs/metrics.md: ${m.name} is a ${m.type}, the doc says ${d.type}`);
      if ([...d.labels].sort().join(',') !== [...m.labels].sort().join(',')) problems.push(`docs/metrics.md: ${m.name} has labels [${m.labels.join(', ')}], the doc says [${d.labels.join(', ')}]`);
      if (d.meaning.length < 10) problems.push(`docs/metrics.md: ${m.name} has no meaning`);
    }
  }
  for (const name of documented.keys()) if (!own.some((m) => m.name === name)) problems.push(`docs/metrics.md: ${name} is listed but no service defines it`);
  return problems;
}

/** The committed docs/metrics.md against the code. */
export function validateMetricsDoc(path = new URL('../../docs/metrics.md', import.meta.url)): CheckResult {
  const own = knownMetrics().filter((m) => !m.builtin);
  return { count: own.length, invalid: compareMetricsDoc(readFileSync(path, 'utf8'), own), unknownMetricRefs: [] };
}
