/** Kubernetes label selectors, as NetworkPolicies, PodMonitors, Services and PodDisruptionBudgets use them. */
import { asArray, asObjects, isObject } from './json-shape.ts';

/** A Kubernetes label selector (matchLabels and matchExpressions) against labels. */
export function selectorMatches(sel: unknown, labels: Record<string, string>): boolean {
  if (!isObject(sel)) return false;
  const ml = isObject(sel.matchLabels) ? sel.matchLabels : {};
  for (const [k, v] of Object.entries(ml)) if (labels[k] !== v) return false;
  for (const e of asObjects(sel.matchExpressions)) {
    const key = typeof e.key === 'string' ? e.key : '';
    const values = asArray(e.values).map(String);
    const has = key in labels;
    switch (e.operator) {
      case 'In': if (!has || !values.includes(labels[key]!)) return false; break;
      case 'NotIn': if (has && values.includes(labels[key]!)) return false; break;
      case 'Exists': if (!has) return false; break;
      case 'DoesNotExist': if (has) return false; break;
      default: return false;
    }
  }
  return true;
}
