/**
 * Does the standby image in Redis equal what the harvester committed? Compares meta (generation,
 * epoch, digest, state), recomputes the digest from the standby's bytes, and compares every page with
 * a reference image (the harvester's shadow of its committed epochs).
 */
import { isZeroPage, type SparseImage } from '@ckpt/common';
import { CHUNK_PAGES, ChunkDigest, type StandbyStore } from '@ckpt/standby';

export interface StandbyCheck {
  vm: string;
  matches: boolean;
  problems: string[];
  generation: number;
  epoch: number;
  digest: string;
  recomputedDigest: string;
  pagesCompared: number;
}

export async function verifyStandby(store: StandbyStore, vm: string, expect: { generation: number; epoch: number; digest: string }, reference: SparseImage): Promise<StandbyCheck> {
  const problems: string[] = [];
  const meta = await store.readMeta(vm);
  const out: StandbyCheck = { vm, matches: false, problems, generation: meta?.generation ?? 0, epoch: meta?.epoch ?? -1, digest: meta?.digest ?? '', recomputedDigest: '', pagesCompared: 0 };
  if (!meta) {
    problems.push('no standby image');
    return out;
  }
  if (meta.state !== 'ok') problems.push(`image is stale: ${meta.staleReason}`);
  if (meta.generation !== expect.generation || meta.epoch !== expect.epoch) problems.push(`image is at ${meta.generation}/${meta.epoch}, the harvester's last committed epoch is ${expect.generation}/${expect.epoch}`);
  if (meta.digest !== expect.digest) problems.push(`image digest ${meta.digest} differs from the committed ${expect.digest}`);
  const ps = meta.pageSize;
  const pw = ps >>> 2;
  const seen = new Set<number>();
  let bad = 0;
  const note = (s: string): void => {
    if (bad++ < 5) problems.push(s);
  };
  const zero = new Uint8Array(ps);
  // One pass over the standby: every page is compared and hashed into the recomputed digest.
  const digest = new ChunkDigest(vm, ps);
  await store.forEachChunk(vm, meta.generation, meta.slots, ps, (slot, chunk, bytes) => {
    const n = digest.add(slot, chunk, bytes);
    for (let p = 0; p < n; p++) {
      const gfn = chunk * CHUNK_PAGES + p;
      seen.add(slot * 2 ** 32 + gfn);
      const ref = reference.page(slot, gfn) ?? zero;
      out.pagesCompared++;
      if (Buffer.compare(ref, bytes.subarray(p * ps, (p + 1) * ps)) !== 0) note(`page ${slot}:${gfn} differs from the committed epoch`);
    }
  });
  for (const s of meta.slots) {
    for (const gfn of reference.populated(s.id)) {
      if (seen.has(s.id * 2 ** 32 + gfn)) continue;
      const ref = reference.page(s.id, gfn)!;
      out.pagesCompared++;
      if (!isZeroPage(new Uint32Array(ref.buffer, ref.byteOffset, pw), 0, pw)) note(`page ${s.id}:${gfn} is missing from the standby`);
    }
  }
  if (bad > 5) problems.push(`... ${bad} pages differ in all`);
  out.recomputedDigest = digest.digest.toHex();
  if (out.recomputedDigest !== meta.digest) problems.push(`the standby's bytes hash to ${out.recomputedDigest}, its meta says ${meta.digest}`);
  out.matches = problems.length === 0;
  return out;
}
