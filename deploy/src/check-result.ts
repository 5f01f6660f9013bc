/** What each deploy validator reports; `npm run validate:deploy` adds them up. */
export interface CheckResult {
  /** Things checked (manifests, dashboards, alert rules). */
  count: number;
  /** One line per problem: which file or object, and what is wrong. */
  invalid: string[];
  /** Metric names a query uses that no service defines, as `where: name`. */
  unknownMetricRefs: string[];
}
