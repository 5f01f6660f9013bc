import { Digest64, isZeroPage, pageHash } from './page-hash.ts';

/** Pages per lazily allocated chunk of the hash table (2 x u32 per page = 32 KiB a chunk). */
const CHUNK_SHIFT = 12;
const CHUNK_PAGES = 1 << CHUNK_SHIFT;
const CHUNK_MASK = CHUNK_PAGES - 1;

/**
 * The running image digest plus the hash of every page it covers, so that a page's old hash can be
 * subtracted when its new contents arrive. Chunks are allocated only where a non-zero page was seen:
 * an untouched chunk means "all pages zero" (hash 0), so a sparse multi-TiB image costs memory only
 * for what was written.
 */
export class ImageDigest {
  readonly digest = new Digest64();
  private readonly slots = new Map<number, Map<number, Uint32Array>>();
  private readonly scratch = new Uint32Array(2);

  /** Records that page (slot, gfn) now hashes to (hi, lo). */
  setPageHash(slot: number, gfn: number, hi: number, lo: number): void {
    let chunks = this.slots.get(slot);
    const key = gfn >>> CHUNK_SHIFT;
    let chunk = chunks?.get(key);
    if (!chunk) {
      if (hi === 0 && lo === 0) return; // zero over zero: nothing changes
      if (!chunks) {
        chunks = new Map();
        this.slots.set(slot, chunks);
      }
      chunk = new Uint32Array(CHUNK_PAGES * 2);
      chunks.set(key, chunk);
    }
    const i = (gfn & CHUNK_MASK) * 2;
    this.digest.sub(chunk[i]!, chunk[i + 1]!);
    this.digest.add(hi, lo);
    chunk[i] = hi;
    chunk[i + 1] = lo;
  }

  /** Hashes the page at `firstWord` of `words` and records it for (slot, gfn). */
  updatePage(words: Uint32Array, firstWord: number, pageWords: number, slot: number, gfn: number): void {
    pageHash(words, firstWord, pageWords, slot, gfn, this.scratch);
    this.setPageHash(slot, gfn, this.scratch[0]!, this.scratch[1]!);
  }

  /** Records `count` zero pages from (slot, first). Costs nothing where no chunk exists. */
  zeroRange(slot: number, first: number, count: number): void {
    const chunks = this.slots.get(slot);
    if (!chunks) return;
    const end = first + count;
    let gfn = first;
    while (gfn < end) {
      const key = gfn >>> CHUNK_SHIFT;
      const chunkEnd = Math.min(end, (key + 1) * CHUNK_PAGES);
      const chunk = chunks.get(key);
      if (chunk) {
        for (let g = gfn; g < chunkEnd; g++) {
          const i = (g & CHUNK_MASK) * 2;
          this.digest.sub(chunk[i]!, chunk[i + 1]!);
          chunk[i] = 0;
          chunk[i + 1] = 0;
        }
      }
      gfn = chunkEnd;
    }
  }

  toHex(): string {
    return this.digest.toHex();
  }
}

/**
 * Digest of whole pages held back to back in `bytes` (a fresh computation, no history):
 * page k of the buffer is (slot, firstGfn + k).
 */
export function addPagesToDigest(
  digest: Digest64, bytes: Uint8Array, pageSize: number, slot: number, firstGfn: number, scratch = new Uint32Array(2),
): void {
  if (bytes.byteOffset % 4 !== 0) throw new RangeError('page buffer must be 4-byte aligned');
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
  const pageWords = pageSize >>> 2;
  const pages = Math.floor(bytes.byteLength / pageSize);
  for (let k = 0; k < pages; k++) {
    const w = k * pageWords;
    if (isZeroPage(words, w, pageWords)) continue;
    pageHash(words, w, pageWords, slot, firstGfn + k, scratch);
    digest.add(scratch[0]!, scratch[1]!);
  }
}
