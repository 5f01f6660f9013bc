/**
 * Values of a stream that never ends (one per epoch, for days), in bounded memory: all of them up to
 * `capacity`, then a uniform random sample of that size (reservoir sampling), with the exact count and
 * maximum. Percentiles are exact up to `capacity` values and a sample's beyond. (The harvester kept
 * every epoch's pause time: about 1 MB an hour, and `Math.max(...pauses)` over 125 000 of them threw
 * at stop, after about 1 h 45 min at 20 epochs/s.)
 */
export class ValueSample {
  private readonly values: number[] = [];
  private n = 0;
  private top = 0;

  constructor(private readonly capacity = 65_536, private readonly random: () => number = Math.random) {}

  add(v: number): void {
    this.n++;
    if (this.n === 1 || v > this.top) this.top = v;
    if (this.values.length < this.capacity) this.values.push(v);
    else {
      const k = Math.floor(this.random() * this.n);
      if (k < this.capacity) this.values[k] = v;
    }
  }

  /** Values added so far. */
  get count(): number {
    return this.n;
  }

  /** The largest value added (0 when none). */
  get max(): number {
    return this.top;
  }

  /** Nearest-rank percentile (p in 0..100) of the values kept; 0 when none. */
  percentile(p: number): number {
    return percentile(this.values, p);
  }
}

/** Nearest-rank percentile (p in 0..100) of `values`; 0 for an empty list. Does not modify `values`. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}
