/**
 * Redis key layout of one VM's standby image. Every key carries the hash tag `{vm}`, so a VM's keys
 * share one Redis Cluster slot and a Lua script may touch all of them.
 *
 *   <p>:{vm}:meta                   HASH    the committed epoch: generation, epoch, digest, state, layout, vCPU state
 *   <p>:{vm}:asm                    HASH    the epoch being assembled: generation, epoch, baseline, begin, nextSeq
 *   <p>:{vm}:fence                  STRING  while present, no epoch is applied (the restorer's consistent read)
 *   <p>:{vm}:running                STRING  the run claim: who runs the restored guest (a --keep-running restorer)
 *   <p>:{vm}:forgotten              STRING  tombstone of `standby forget` (a day, or until a baseline): deleted on purpose, not lost
 *   <p>:{vm}:g<G>:p:<slot>:<gfn>    STRING  one page of the image (absent = a zero page)
 *   <p>:{vm}:g<G>:h                 HASH    page hash of every non-zero page (field "slot:gfn", value 8 bytes BE)
 *   <p>:{vm}:g<G>:s:<E>:<slot>:<gfn> STRING a staged page of incremental epoch <E>
 *   <p>:{vm}:g<G>:sh:<E>            HASH    staged page hashes of incremental epoch <E> ('' = zero page)
 *   <p>:{vm}:g<G>:sb:<E>            HASH    the batches of epoch <E> staged so far (field = batch seq)
 *   <p>:vms                         SET     VMs with an applied epoch (an index for listing; not in a VM's slot)
 *
 * Every page byte is written to Redis once: an incremental epoch's pages are staged under their own
 * keys and its apply RENAMEs them into place. Generation G's keys (g<G>) are the image once meta says
 * generation G. A baseline for a new generation is written straight into its own g<G> keys, invisible
 * until its commit flips meta.
 */
import { validVmId, VM_ID_RULE } from '@ckpt/common';

export { validVmId };

/** The image is read back in chunks of this many consecutive pages (one MGET each). */
export const CHUNK_PAGES = 256;
export const DEFAULT_PREFIX = 'ckpt';

export class VmKeys {
  readonly base: string;
  constructor(readonly vm: string, readonly prefix = DEFAULT_PREFIX) {
    if (!validVmId(vm)) throw new RangeError(`bad VM id ${JSON.stringify(vm)}: use ${VM_ID_RULE}`);
    this.base = `${prefix}:{${vm}}`;
  }
  get meta(): string { return `${this.base}:meta`; }
  get asm(): string { return `${this.base}:asm`; }
  get fence(): string { return `${this.base}:fence`; }
  get runClaim(): string { return `${this.base}:running`; }
  get forgotten(): string { return `${this.base}:forgotten`; }
  gen(g: number): string { return `${this.base}:g${g}`; }
  /** Prefix of the image's page keys: the page key is the prefix plus pageField(). */
  pagePrefix(g: number): string { return `${this.gen(g)}:p:`; }
  page(g: number, slot: number, gfn: number): string { return this.pagePrefix(g) + pageField(slot, gfn); }
  hashes(g: number): string { return `${this.gen(g)}:h`; }
  /** Prefix of epoch `e`'s staged page keys: the key is the prefix plus pageField(). */
  stagePrefix(g: number, e: number): string { return `${this.gen(g)}:s:${e}:`; }
  stagedHashes(g: number, e: number): string { return `${this.gen(g)}:sh:${e}`; }
  stagedBatches(g: number, e: number): string { return `${this.gen(g)}:sb:${e}`; }
}

/** Field of a page in the hash tables. */
export function pageField(slot: number, gfn: number): string {
  return `${slot}:${gfn}`;
}

export function hashValue(hi: number, lo: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeUInt32BE(hi, 0);
  b.writeUInt32BE(lo, 4);
  return b;
}
