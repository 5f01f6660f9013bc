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
