/**
 * The userspace side of KVM's dirty ring, for rings held in an ArrayBuffer (the simulator). The C
 * helper runs the same rules on the kernel's rings (`packages/kvm-native/src`), and a test feeds both
 * the same hostile ring images.
 *
 * Entry layout (`struct kvm_dirty_gfn`, 16 bytes, little-endian): u32 flags, u32 slot, u64 offset.
 */

export const DIRTY_GFN_BYTES = 16;
export const F_DIRTY = 1;
export const F_RESET = 2;
/** Entries the kernel keeps in reserve: the soft limit is size minus these (KVM_DIRTY_RING_RSVD_ENTRIES base). */
export const RING_RESERVED_ENTRIES = 64;

export interface ParseResult {
  valid: number;
  invalid: number;
  nextFetch: number;
}

/**
 * Consumes DIRTY entries from `fetch` onwards (at most `entries` of them, and at most as many valid
 * ones as `outSlots` can hold), marks each one RESET, and writes the valid ones to the output arrays
 * starting at `outStart`. Entries are untrusted: an address space other than 0, a slot id outside
 * `slotPages`, an offset beyond the slot, or flag bits other than DIRTY/RESET make an entry invalid; it
 * is still marked RESET (so the kernel's indexes stay in step) but dropped and counted. An entry
 * without DIRTY ends the harvest: the kernel has not published it yet.
 */
export function parseRing(
  ring: Uint32Array, entries: number, fetch: number, slotPages: ArrayLike<number>,
  outSlots: Uint32Array, outOffsets: Uint32Array, outStart: number, result: ParseResult,
): void {
  const mask = entries - 1;
  const cap = Math.min(outSlots.length, outOffsets.length);
  let out = outStart;
  let invalid = 0;
  let consumed = 0;
  while (consumed < entries && out < cap) {
    const w = ((fetch + consumed) & mask) * 4;
    const flags = ring[w]!;
    if ((flags & F_DIRTY) === 0) break;
    const slot = ring[w + 1]!;
    const offLo = ring[w + 2]!;
    const offHi = ring[w + 3]!;
    ring[w] = F_RESET;
    consumed++;
    const slotId = slot & 0xffff;
    const pages = slotPages[slotId];
    if ((flags & ~(F_DIRTY | F_RESET)) !== 0 || slot >>> 16 !== 0 || pages === undefined || slotId >= slotPages.length
        || offHi !== 0 || offLo >= pages) {
      invalid++;
      continue;
    }
    outSlots[out] = slotId;
    outOffsets[out] = offLo;
    out++;
  }
  result.valid = out - outStart;
  result.invalid = invalid;
  result.nextFetch = fetch + consumed;
}
