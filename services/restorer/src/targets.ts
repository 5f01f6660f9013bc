/**
 * Where a restored image goes: a SparseImage in memory (tests, the drill's byte comparison, guests far
 * larger than RAM), raw files per slot plus the vCPU state as JSON, or a fresh KVM VM with that memory
 * and vCPU state, ready to resume.
 */
import { closeSync, existsSync, ftruncateSync, mkdirSync, openSync, readdirSync, renameSync, rmdirSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { setInterval as every, setTimeout as delay } from 'node:timers/promises';
import { CkptError, isZeroPage, SparseImage } from '@ckpt/common';
import { KVM_VM_DEFAULTS, KvmVm, probeKvm, vcpuStateBytes } from '@ckpt/kvm-native';
import type { ImageLayout, RestoredImage, RestoreTarget } from './restore-image.ts';

/**
 * Calls `f(firstPage, pages)` for each run of non-zero pages in `bytes`: targets that start out zero
 * (fresh files and VM memory) write only those, so sparse images stay sparse.
 */
export function forEachNonZeroRun(bytes: Uint8Array, pageSize: number, f: (firstPage: number, pages: number) => void): void {
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
  const pw = pageSize >>> 2;
  const n = Math.floor(bytes.byteLength / pageSize);
  let start = -1;
  for (let p = 0; p <= n; p++) {
    const data = p < n && !isZeroPage(words, p * pw, pw);
    if (data && start < 0) start = p;
    else if (!data && start >= 0) {
      f(start, p - start);
      start = -1;
    }
  }
}

/** Into a SparseImage: only non-zero pages take memory. */
export class SparseTarget implements RestoreTarget {
  image: SparseImage | null = null;
  restored: RestoredImage | null = null;

  open(l: ImageLayout): void {
    this.image = new SparseImage(l.pageSize, l.slots.map((s) => s.pages));
  }

  write(slotIndex: number, firstPage: number, bytes: Uint8Array): void {
    const img = this.image!;
    forEachNonZeroRun(bytes, img.pageSize, (p, n) => img.writePages(slotIndex, firstPage + p, n, bytes, p * img.pageSize));
  }

  finish(image: RestoredImage): void { this.restored = image; }
  abort(): void { this.image = null; }
}

/** What the restorer writes next to the raw slot images. */
export interface VcpuStateFile {
  vm: string;
  generation: number;
  epoch: number;
  digest: string;
  state: 'ok' | 'stale';
  pageSize: number;
  slots: { id: number; pages: number; file: string }[];
  committedAtMs: number;
  guestCounters: number[];
  /** Register state per vCPU, base64 (the native helper's layout: docs/guest-program.md). */
  vcpuStates: string[];
}

/**
 * mkdir -p without Node's recursive mkdirSync, which loops for good under /proc (mkdirSync('/proc/x',
 * { recursive: true }) never returns on Linux): creates the missing directories from the nearest
 * existing one down, so a path that cannot be made fails with that mkdir's error.
 */
function makeDirs(dir: string): string[] {
  const missing: string[] = [];
  for (let d = resolve(dir); !existsSync(d); d = dirname(d)) {
    missing.push(d);
    if (dirname(d) === d) break;
  }
  missing.reverse();
  for (const d of missing) mkdirSync(d);
  return missing;
}

/**
 * Raw, sparse memory images `<vm>.slot<id>.raw` and `<vm>.vcpus.json` in `dir`. Written under
 * `.partial` names and renamed into place only once the image verified.
 */
export class FileTarget implements RestoreTarget {
  private fds: number[] = [];
  private names: string[] = [];
  private pageSize = 0;
  /** Directories open() created, removed again by abort() when they are empty. */
  private created: string[] = [];
  /** The vCPU state file while finish() writes it (abort() removes its .partial). */
  private stateFile: string | null = null;

  constructor(readonly dir: string) {}

  open(l: ImageLayout): void {
    try {
      this.openFiles(l);
    } catch (err) {
      this.abort(); // a file already opened must not stay behind
      throw err;
    }
  }

  private openFiles(l: ImageLayout): void {
    this.pageSize = l.pageSize;
    try {
      this.created = makeDirs(this.dir);
    } catch (err) {
      throw new CkptError('CKPT_ERR_RESTORE_OUTPUT', `cannot create the output directory ${this.dir}: ${(err as Error).message}`, { cause: err });
    }
    // What a restore of this VM killed with kill -9 left (under the fence, no other restore of it runs):
    // a slot the image no longer has would otherwise keep its .partial file for good. Best effort: one
    // that cannot go (a directory of that name, say) fails the write that needs its name, by name.
    for (const f of readdirSync(this.dir)) {
      if (!f.startsWith(`${l.vm}.`) || !/^\.(slot\d+\.raw|vcpus\.json)\.partial$/.test(f.slice(l.vm.length))) continue;
      try {
        unlinkSync(join(this.dir, f));
      } catch {
        // left as it is
      }
    }
    for (const s of l.slots) {
      const name = join(this.dir, `${l.vm}.slot${s.id}.raw`);
      let fd: number;
      try {
        fd = openSync(`${name}.partial`, 'w');
      } catch (err) {
        throw new CkptError('CKPT_ERR_RESTORE_OUTPUT', `cannot write the restored image to ${this.dir}: ${(err as Error).message}`, { cause: err });
      }
      this.fds.push(fd);
      this.names.push(name);
      try {
        ftruncateSync(fd, s.pages * l.pageSize);
      } catch (err) {
        throw new CkptError('CKPT_ERR_RESTORE_OUTPUT', `cannot size ${name}.partial to slot ${s.id}'s ${s.pages} pages: ${(err as Error).message}`, { cause: err });
      }
    }
  }

  write(slotIndex: number, firstPage: number, bytes: Uint8Array): void {
    const ps = this.pageSize;
    const base = firstPage * ps; // file position of bytes[0]
    try {
      forEachNonZeroRun(bytes, ps, (p, n) => {
        let off = p * ps;
        const end = off + n * ps;
        while (off < end) off += writeSync(this.fds[slotIndex]!, bytes, off, end - off, base + off);
      });
    } catch (err) {
      // ENOSPC, EIO, a quota: named, and abort() then removes every partial file.
      throw new CkptError('CKPT_ERR_RESTORE_OUTPUT', `cannot write ${this.names[slotIndex]}.partial: ${(err as Error).message}`, { cause: err });
    }
  }

  /**
   * Everything is written under a .partial name first, the vCPU state file too, and renamed only then,
   * the state file last: a disk that fills up while the state is written leaves no final-named raw file
   * (it left the raw files renamed and an empty vcpus.json).
   */
  finish(img: RestoredImage): void {
    for (const fd of this.fds) closeSync(fd);
    this.fds = [];
    const state: VcpuStateFile = {
      vm: img.vm, generation: img.generation, epoch: img.epoch, digest: img.digest, state: img.state, pageSize: img.pageSize,
      slots: img.slots.map((s, i) => ({ id: s.id, pages: s.pages, file: this.names[i]! })), committedAtMs: img.committedAtMs,
      guestCounters: img.guestCounters, vcpuStates: img.vcpuStates.map((b) => b.toString('base64')),
    };
    const stateFile = join(this.dir, `${img.vm}.vcpus.json`);
    this.stateFile = stateFile;
    try {
      writeFileSync(`${stateFile}.partial`, JSON.stringify(state, null, 2) + '\n');
      for (const n of [...this.names, stateFile]) renameSync(`${n}.partial`, n);
    } catch (err) {
      throw new CkptError('CKPT_ERR_RESTORE_OUTPUT', `cannot finish the restored files in ${this.dir}: ${(err as Error).message}`, { cause: err });
    }
    this.stateFile = null;
  }

  abort(): void {
    for (const fd of this.fds) closeSync(fd);
    this.fds = [];
    for (const n of this.stateFile ? [...this.names, this.stateFile] : this.names) {
      try { unlinkSync(`${n}.partial`); } catch { /* already gone */ }
    }
    for (const d of [...this.created].reverse()) {
      try { rmdirSync(d); } catch { /* not empty, or gone: keep it */ }
    }
    this.created = [];
  }

}

/**
 * A fresh KVM VM (no guest program loaded: the image holds it) with the image's memory; finish() sets
 * every vCPU's registers. resume() (or `vm.start()`) resumes the guest where the epoch left it.
 */
export class KvmTarget implements RestoreTarget {
  vm: KvmVm | null = null;
  restored: RestoredImage | null = null;

  constructor(private readonly o: { devPath?: string; ringEntries?: number } = {}) {}

  open(l: ImageLayout): void {
    // Checked before the VM is made and a page is read: a guest this host cannot run is refused at once
    // (after the device: a host without KVM says so first).
    probeKvm(this.o.devPath ?? KVM_VM_DEFAULTS.devPath);
    if (l.vcpus > 0 && l.vcpuStateBytes !== vcpuStateBytes()) {
      throw new CkptError('CKPT_ERR_RESTORE_LAYOUT', `the image's vCPU state is ${l.vcpuStateBytes} bytes per vCPU, and this host's KVM helper saves and loads ${vcpuStateBytes()}: `
        + 'the image comes from a simulated guest or a harvester with another vCPU state layout, and cannot be resumed here; --out DIR writes its memory to files instead');
    }
    this.vm = KvmVm.create({
      devPath: this.o.devPath, slotBytes: l.slots.map((s) => s.pages * l.pageSize), vcpus: l.vcpus, loadGuest: false,
      ringEntries: this.o.ringEntries ?? 4096,
    });
    if (this.vm.pageSize !== l.pageSize) {
      this.abort();
      throw new CkptError('CKPT_ERR_RESTORE_LAYOUT', `the image has ${l.pageSize}-byte pages, this host ${this.vm.pageSize}`);
    }
  }

  write(slotIndex: number, firstPage: number, bytes: Uint8Array): void {
    const vm = this.vm!;
    const ps = vm.pageSize; // checked equal to the image's in open()
    forEachNonZeroRun(bytes, ps, (p, n) => vm.writeRange(slotIndex, firstPage + p, bytes.subarray(p * ps, (p + n) * ps)));
  }

  /**
   * Starts the restored guest (`onRunning` right after), lets it run `ms`, pauses it, and says whether
   * every vCPU's pages-written counter moved past the epoch's. `signal` ends the wait early (a SIGTERM
   * during a long check: the pod's grace period is shorter than --resume-ms may be).
   */
  async resume(ms: number, onRunning?: () => void, signal?: AbortSignal): Promise<{ running: boolean; detail: string }> {
    const vm = this.vm!;
    const at = this.restored!.guestCounters.filter((_, i) => i % 2 === 1);
    vm.start();
    onRunning?.();
    await delay(ms, undefined, { signal }).catch(ignoreAbort);
    vm.pause();
    const err = vm.lastError();
    const now = [...vm.guestCounters()].filter((_, i) => i % 2 === 1);
    return {
      running: !err && now.every((v, i) => v > at[i]!),
      detail: err ? `vCPU error: ${err}` : `pages written per vCPU ${at.join(',')} at the epoch -> ${now.join(',')} ${ms} ms after resuming`,
    };
  }

  finish(img: RestoredImage): void {
    img.vcpuStates.forEach((s, i) => this.vm!.setVcpuState(i, s));
    this.restored = img;
  }

  abort(): void {
    this.vm?.destroy();
    this.vm = null;
  }
}

/**
 * Until `signal` aborts, polls `lastError` (a running guest's vCPU error) every `periodMs`: resolves
 * with the error as soon as there is one, or with null once stopped. The failover Deployment's guest
 * was checked only before it was kept running, so one that failed later left a ready pod running nothing.
 */
export async function watchRunning(lastError: () => string | null, signal: AbortSignal, periodMs = 1000): Promise<string | null> {
  try {
    for await (const _ of every(periodMs, undefined, { signal })) {
      const err = lastError();
      if (err) return err;
    }
  } catch (err) {
    ignoreAbort(err);
  }
  return null;
}

/** A rejection of node:timers/promises waits: an abort (the signal) is the expected end, anything else is rethrown. */
function ignoreAbort(err: unknown): void {
  if ((err as { name?: string } | null)?.name !== 'AbortError') throw err;
}
