import assert from 'node:assert/strict';
import { test } from 'node:test';
import { addPagesToDigest, Digest64, ImageDigest, isZeroPage, pageHash, SparseImage } from './index.ts';

const PS = 4096;
const PW = PS / 4;

function randomPage(seed: number): Uint32Array {
  const w = new Uint32Array(PW);
  let x = seed || 1;
  for (let i = 0; i < PW; i++) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    w[i] = x >>> 0;
  }
  return w;
}

test('a zero page hashes to 0 wherever it is', () => {
  const out = new Uint32Array(2);
  for (const [slot, gfn] of [[0, 0], [3, 12345], [0, 0xfffff]] as const) {
    pageHash(new Uint32Array(PW), 0, PW, slot, gfn, out);
    assert.deepEqual([...out], [0, 0]);
  }
});

test('any single changed word, and a move to another frame, change the page hash', () => {
  const base = randomPage(7);
  const h0 = new Uint32Array(2);
  const h1 = new Uint32Array(2);
  pageHash(base, 0, PW, 0, 100, h0);
  for (let i = 0; i < PW; i += 37) {
    const w = base.slice();
    w[i] = (w[i]! ^ 1) >>> 0;
    pageHash(w, 0, PW, 0, 100, h1);
    assert.notDeepEqual([...h1], [...h0], `word ${i}`);
  }
  pageHash(base, 0, PW, 0, 101, h1);
  assert.notDeepEqual([...h1], [...h0]);
  pageHash(base, 0, PW, 1, 100, h1);
  assert.notDeepEqual([...h1], [...h0]);
});

test('Digest64 adds and subtracts mod 2^64 with carries', () => {
  const d = new Digest64();
  d.add(0, 0xffffffff);
  d.add(0, 1);
  assert.equal(d.toHex(), '0000000100000000');
  d.sub(0, 1);
  assert.equal(d.toHex(), '00000000ffffffff');
  d.sub(0, 0xffffffff);
  d.sub(0, 1);
  assert.equal(d.toHex(), 'ffffffffffffffff');
  assert.ok(Digest64.fromHex('ffffffffffffffff').equals(d));
  assert.throws(() => Digest64.fromHex('xyz'), TypeError);
});

test('incremental digest equals a fresh computation over the final image', () => {
  const inc = new ImageDigest();
  const image = new SparseImage(PS, [512, 256]);
  let x = 99;
  for (let step = 0; step < 400; step++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const slot = x % 2;
    const gfn = (x >>> 8) % (slot === 0 ? 512 : 256);
    const zero = (x >>> 4) % 5 === 0;
    const page = zero ? new Uint32Array(PW) : randomPage(x);
    if (zero) inc.zeroRange(slot, gfn, 1);
    else inc.updatePage(page, 0, PW, slot, gfn);
    image.writePages(slot, gfn, 1, new Uint8Array(page.buffer), 0);
  }
  assert.equal(inc.toHex(), image.digest().toHex());
  const fresh = new Digest64();
  for (const slot of [0, 1]) {
    const pages = slot === 0 ? 512 : 256;
    const buf = new Uint8Array(pages * PS);
    image.readRange(slot, 0, pages, buf, 0);
    addPagesToDigest(fresh, buf, PS, slot, 0);
  }
  assert.equal(fresh.toHex(), inc.toHex());
  assert.notEqual(inc.toHex(), '0000000000000000');
});

test('isZeroPage', () => {
  const w = new Uint32Array(PW * 2);
  assert.ok(isZeroPage(w, PW, PW));
  w[PW + PW - 1] = 1;
  assert.ok(!isZeroPage(w, PW, PW));
  assert.ok(isZeroPage(w, 0, PW));
});
