/**
 * PromQL checks shared by the dashboard and alert-rule validators: a syntax check with Prometheus's
 * own Lezer grammar (after Grafana's template variables are replaced by plain values) and the metric
 * names a query selects.
 */
import { parser } from '@prometheus-io/lezer-promql';

/** Grafana's built-in interval variables, replaced by a duration so the query parses. */
const INTERVALS = /\$(?:__rate_interval|__interval|__range)\b|\$\{(?:__rate_interval|__interval|__range)\}/g;
/** Dashboard variables: $name, ${name}, ${name:format} and the old [[name]]. */
const VARIABLES = /\$\{[A-Za-z_]\w*(?::\w+)?\}|\$[A-Za-z_]\w*|\[\[[A-Za-z_]\w*\]\]/g;

/** The query Grafana would send, with intervals (and variables used as durations) as `5m` and every other variable as `x`. */
export function substituteGrafanaVariables(expr: string): string {
  return expr
    .replace(INTERVALS, '5m')
    .replace(/\$__range_s\b/g, '300')
    // A variable as a range or subquery duration ([$window], [$window:$step]) stands for a duration.
    .replace(/\[\s*(\$[^\]\s:]+)\s*(?::\s*(\$[^\]\s]+)\s*)?\]/g, (_m, _a: string, b?: string) => (b ? '[5m:1m]' : '[5m]'))
    .replace(VARIABLES, 'x');
}

export interface ParsedQuery {
  /** Empty when the query parses; else where it does not. */
  errors: string[];
  /**
   * Metric names the query selects: by name, by a `__name__="..."` matcher, or by a `__name__=~"a|b"`
   * matcher whose alternatives are all plain names (any other regex selects no name this can check).
   */
  metrics: string[];
  /** Each vector selector's metric name (null when it names none this can read) and the labels it matches on. */
  selectors: { metric: string | null; labels: string[] }[];
}

export function parsePromQL(expr: string): ParsedQuery {
  const errors: string[] = [];
  const metrics = new Set<string>();
  if (expr.trim() === '') return { errors: ['empty query'], metrics: [], selectors: [] };
  const selectors: ParsedQuery['selectors'] = [];
  const tree = parser.parse(expr);
  tree.iterate({
    enter: (node) => {
      if (node.name === 'VectorSelector') {
        let metric: string | null = null;
        const labels: string[] = [];
        const id = node.node.getChild('Identifier');
        if (id) metric = expr.slice(id.from, id.to);
        for (const m of node.node.getChild('LabelMatchers')?.getChildren('UnquotedLabelMatcher') ?? []) {
          const nameNode = m.getChild('LabelName');
          if (!nameNode) continue;
          const label = expr.slice(nameNode.from, nameNode.to);
          const byName = /^__name__\s*=\s*"([^"]+)"$/.exec(expr.slice(m.from, m.to));
          if (byName) metric = byName[1]!;
          else if (label !== '__name__') labels.push(label);
        }
        selectors.push({ metric, labels });
      }
      if (node.type.isError) {
        errors.push(`syntax error at ${node.from}: "${expr.slice(Math.max(0, node.from - 20), node.from)}⚠${expr.slice(node.from, node.from + 20)}"`);
        return false;
      }
      if (node.name === 'Identifier' && node.node.parent?.name === 'VectorSelector') metrics.add(expr.slice(node.from, node.to));
      if (node.name === 'UnquotedLabelMatcher') {
        const text = expr.slice(node.from, node.to);
        const m = /^__name__\s*=\s*"([^"]+)"$/.exec(text);
        if (m) metrics.add(m[1]!);
        const alternatives = /^__name__\s*=~\s*"([A-Za-z_:][\w:]*(?:\|[A-Za-z_:][\w:]*)*)"$/.exec(text);
        if (alternatives) for (const name of alternatives[1]!.split('|')) metrics.add(name);
      }
      return undefined;
    },
  });
  return { errors, metrics: [...metrics], selectors };
}
