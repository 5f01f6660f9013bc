/**
 * The guest workloads of docs/guest-program.md, in TypeScript: the simulator runs them and tests (of the
 * harvester and of the native helper) use
 * them to predict which pages the real guest writes. Keep in step with packages/kvm-native/guest.
 */

export type WorkloadName = 'idle' | 'sequential' | 'random' | 'hotset';
export const WORKLOADS: readonly WorkloadName[] = ['idle', 'sequential', 'random', 'hotset'];
/** Numeric ids shared with the native guest. */
export const WORKLOAD_ID: Readonly<Record<WorkloadName, number>> = { idle: 0, sequential: 1, random: 2, hotset: 3 };

export interface WorkloadParams {
  workload: WorkloadName;
  regionPages: number;
  vcpus: number;
  seed: number;
  hotPages: number;
  hotPercent: number;
}

export function xorshift32(x: number): number {
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  return x >>> 0;
}

export function initialRngState(seed: number, vcpu: number): number {
  const s = (seed ^ Math.imul(vcpu + 1, 0x9e3779b9)) >>> 0;
  return s === 0 ? 0x6b8b4567 : s;
}

/** One vCPU's position in its workload: the RNG state and the sequential cursor. */
export class WorkloadCursor {
  rng: number;
  cursor: number;

  constructor(readonly params: WorkloadParams, readonly vcpu: number) {
    this.rng = initialRngState(params.seed, vcpu);
    this.cursor = vcpu * Math.floor(params.regionPages / params.vcpus);
  }

  private next32(): number {
    this.rng = xorshift32(this.rng);
    return this.rng;
  }

  /** Region page index of the next write (not meaningful for idle). */
  nextPage(): number {
    const p = this.params;
    switch (p.workload) {
      case 'sequential': {
        const i = this.cursor;
        this.cursor = i + 1 === p.regionPages ? 0 : i + 1;
        return i;
      }
      case 'random':
        return this.next32() % p.regionPages;
      case 'hotset': {
        const r = this.next32();
        if (r % 100 < p.hotPercent) return this.next32() % p.hotPages;
        return this.next32() % p.regionPages;
      }
      case 'idle':
        return 0;
    }
  }
}

/**
 * The stamp is the first 64-bit word of a written page, stored at once: bits 0-15 STAMP_MAGIC ("CK"),
 * bits 16-23 the vCPU, bits 24-63 the vCPU's sequence number (1, 2, ...; 40 bits).
 */
export const STAMP_MAGIC = 0x4b43;
const SEQ_LOW_BITS = 8;

/** Writes the guest's stamp (and fill words) into a page, exactly as the real guest does. */
export function writeStamp(words: Uint32Array, firstWord: number, pageWords: number, vcpu: number, seq: number, fill: boolean): void {
  words[firstWord] = (STAMP_MAGIC | (vcpu & 0xff) << 16 | (seq & 0xff) << 24) >>> 0;
  words[firstWord + 1] = Math.floor(seq / (1 << SEQ_LOW_BITS)) >>> 0;
  if (!fill) return;
  let x = (Math.imul(seq >>> 0, 0x9e3779b1) ^ (vcpu + 1)) >>> 0;
  if (x === 0) x = 1;
  // xorshift32() inlined, on int32 values (the store into a Uint32Array makes them unsigned): the
  // simulated guest runs on the harvester's thread, and this loop was a tenth of its CPU in bench:pipeline.
  x |= 0;
  const end = firstWord + pageWords;
  for (let k = firstWord + 4; k < end; k++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[k] = x;
  }
}

/** The vCPU that stamped the page at `words[firstWord]`, or -1 when the page holds no stamp. */
export function stampVcpu(words: Uint32Array, firstWord: number): number {
  const w = words[firstWord]!;
  return (w & 0xffff) === STAMP_MAGIC ? (w >>> 16) & 0xff : -1;
}

/** The sequence number of the stamp at `words[firstWord]` (check stampVcpu() first). */
export function stampSeq(words: Uint32Array, firstWord: number): number {
  return (words[firstWord]! >>> 24) + words[firstWord + 1]! * (1 << SEQ_LOW_BITS);
}
