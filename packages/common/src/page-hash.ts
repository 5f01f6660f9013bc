/**
 * The image digest of DESIGN.md: the sum mod 2^64 of a 64-bit hash of (slot, gfn, page bytes)
 * over every page of the image. It can be updated from dirty pages alone (subtract the page's old
 * hash, add its new one) and recomputed from a full image.
 *
 * The page hash is `mix(content, slot, gfn) - mix(zeroContent, slot, gfn)`, so an all-zero page
 * hashes to 0 wherever it is. Zero pages are hashed like any page; the offset only makes the digest
 * of a sparse image cheap to compute (untouched pages add nothing) and the digest of an all-zero
 * image 0. Any single changed 32-bit word changes the hash (each lane step is a bijection), and the
 * (slot, gfn) mix makes a page moved to another frame change it too.
 *
 * Words are read little-endian through a Uint32Array, so buffers must be 4-byte aligned at page
 * boundaries (every buffer in this product holds whole pages from offset 0).
 *
 * Results are returned through `out` (a 2-element Uint32Array: [hi, lo]) to keep hot loops free of
 * allocations.
 */

const K1 = 0x9e3779b1;
const K2 = 0x85ebca77;
const K3 = 0xc2b2ae3d;
const K4 = 0x27d4eb2f;

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

// Lane state after hashing a page; module-level scratch, never escapes.
let la = 0;
let lb = 0;
let lc = 0;
let ld = 0;

function hashLanes(words: Uint32Array, first: number, count: number): void {
  let a = K1;
  let b = K2;
  let c = K3;
  let d = K4;
  const end = first + count;
  for (let i = first; i < end; i += 4) {
    a = Math.imul(a ^ words[i]!, K2);
    a = (a << 13) | (a >>> 19);
    b = Math.imul(b ^ words[i + 1]!, K3);
    b = (b << 15) | (b >>> 17);
    c = Math.imul(c ^ words[i + 2]!, K4);
    c = (c << 11) | (c >>> 21);
    d = Math.imul(d ^ words[i + 3]!, K1);
    d = (d << 17) | (d >>> 15);
  }
  la = a;
  lb = b;
  lc = c;
  ld = d;
}

function mixHi(slot: number, gfn: number): number {
  return fmix32(la ^ ((lc << 7) | (lc >>> 25)) ^ Math.imul(gfn, K1) ^ Math.imul(slot + 1, K3));
}

function mixLo(slot: number, gfn: number): number {
  return fmix32(lb ^ ((ld << 11) | (ld >>> 21)) ^ Math.imul(gfn ^ 0x5bd1e995, K2) ^ Math.imul(slot + 7, K4));
}

/** Hashes of the all-zero page's lanes, per page size. */
const zeroLanes = new Map<number, [number, number, number, number]>();

function zeroLanesFor(pageWords: number): [number, number, number, number] {
  let z = zeroLanes.get(pageWords);
  if (!z) {
    hashLanes(new Uint32Array(pageWords), 0, pageWords);
    z = [la, lb, lc, ld];
    zeroLanes.set(pageWords, z);
  }
  return z;
}

/**
 * Hash of one page: `words` holds the page at word index `firstWord` (pageSize / 4 words).
 * Writes [hi, lo] into `out`.
 */
export function pageHash(words: Uint32Array, firstWord: number, pageWords: number, slot: number, gfn: number, out: Uint32Array): void {
  const z = zeroLanesFor(pageWords);
  hashLanes(words, firstWord, pageWords);
  const hi = mixHi(slot, gfn);
  const lo = mixLo(slot, gfn);
  la = z[0];
  lb = z[1];
  lc = z[2];
  ld = z[3];
  const zhi = mixHi(slot, gfn);
  const zlo = mixLo(slot, gfn);
  // (hi:lo) - (zhi:zlo) mod 2^64
  const dlo = lo - zlo;
  out[1] = dlo >>> 0;
  out[0] = (hi - zhi - (dlo < 0 ? 1 : 0)) >>> 0;
}

/** True when the page at `firstWord` is all zero. */
export function isZeroPage(words: Uint32Array, firstWord: number, pageWords: number): boolean {
  const end = firstWord + pageWords;
  for (let i = firstWord; i < end; i++) {
    if (words[i] !== 0) return false;
  }
  return true;
}

/** A 64-bit sum kept as two 32-bit halves, mutated in place. */
export class Digest64 {
  hi = 0;
  lo = 0;

  add(hi: number, lo: number): void {
    const s = this.lo + lo;
    this.lo = s >>> 0;
    this.hi = (this.hi + hi + (s > 0xffffffff ? 1 : 0)) >>> 0;
  }

  sub(hi: number, lo: number): void {
    const s = this.lo - lo;
    this.lo = s >>> 0;
    this.hi = (this.hi - hi - (s < 0 ? 1 : 0)) >>> 0;
  }

  set(other: Digest64): void {
    this.hi = other.hi;
    this.lo = other.lo;
  }

  equals(other: Digest64): boolean {
    return this.hi === other.hi && this.lo === other.lo;
  }

  /** 16 lowercase hex digits. */
  toHex(): string {
    return this.hi.toString(16).padStart(8, '0') + this.lo.toString(16).padStart(8, '0');
  }

  static fromHex(hex: string): Digest64 {
    if (!/^[0-9a-f]{16}$/.test(hex)) throw new TypeError(`digest must be 16 lowercase hex digits, got "${hex}"`);
    const d = new Digest64();
    d.hi = parseInt(hex.slice(0, 8), 16) >>> 0;
    d.lo = parseInt(hex.slice(8), 16) >>> 0;
    return d;
  }
}
