/**
 * PromQL shapes the dashboards repeat: rates of counters and quantiles of histograms over Grafana's
 * `$__rate_interval` (at least four scrape intervals, so a rate never sees fewer than two samples).
 */

/** `{a="b", c=~"d"}` from matchers, or nothing when there are none. */
const selector = (matchers: string): string => (matchers ? `{${matchers}}` : '');

/** `sum by (a, b) ` or plain `sum`, to put before the aggregated expression's parenthesis. */
const sum = (labels: readonly string[]): string => (labels.length ? `sum by (${labels.join(', ')}) ` : 'sum');

/** Per-second rate of a counter, summed (by `labels`). */
export function rate(counter: string, matchers = '', labels: readonly string[] = []): string {
  return `${sum(labels)}(rate(${counter}${selector(matchers)}[$__rate_interval]))`;
}

/** Events per minute of a counter, summed (by `labels`): rare events read better per minute than per second. */
export function perMinute(counter: string, matchers = '', labels: readonly string[] = []): string {
  return `${rate(counter, matchers, labels)} * 60`;
}

/** How many times a counter went up over the dashboard's time range, 0 when it has no series yet. */
export function increaseInRange(counter: string, matchers = ''): string {
  return `sum(increase(${counter}${selector(matchers)}[$__range])) or vector(0)`;
}

/** The `q` quantile (0.99 for p99) of a histogram, its buckets summed (by `labels`) across series. */
export function quantile(q: number, histogram: string, matchers = '', labels: readonly string[] = []): string {
  return `histogram_quantile(${q}, sum by (${[...labels, 'le'].join(', ')}) (rate(${histogram}_bucket${selector(matchers)}[$__rate_interval])))`;
}

/** Mean of a histogram's observations over the rate interval (by `labels`). */
export function mean(histogram: string, matchers = '', labels: readonly string[] = []): string {
  return `${rate(`${histogram}_sum`, matchers, labels)} / ${rate(`${histogram}_count`, matchers, labels)}`;
}

/** A histogram's buckets as a heatmap wants them: per-second counts by `le`. */
export function buckets(histogram: string, matchers = ''): string {
  return rate(`${histogram}_bucket`, matchers, ['le']);
}
