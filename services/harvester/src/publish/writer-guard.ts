/**
 * One writer per VM id. Each harvester process announces on the control topic, every `periodMs`, that
 * it publishes as its VM (a WriterHeartbeat: a random writer id, host, pid, start time), and hears the
 * others' through its ControlListener. Two harvesters given the same id (a copied manifest, a forgotten
 * setting) used to interleave their generations on one standby, which resynced for good and stayed
 * stale, with nothing said. Now the one that started later stops with CKPT_ERR_VM_ID_IN_USE; the other
 * logs the intruder and shows it in `ckpt_harvester_duplicate_writers` until it is gone.
 *
 * A harvester restarted with the same id does not trip it: the new process reads the control topic from
 * where it ended at its start, and the old one sends nothing once stopped. The later one stops only
 * after two heartbeats of the other within three periods, so one stray record is not enough; the earlier
 * one reports the other from its first heartbeat (the later one may stop before it sends a second).
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { CkptError, type Logger } from '@ckpt/common';
import type { WriterHeartbeat } from '@ckpt/proto';

export interface WriterGuardOptions {
  vm: string;
  /** Sends one heartbeat record of this VM to the control topic. */
  send: (hb: WriterHeartbeat) => Promise<void>;
  /** The generation being published (reported in heartbeats, for the operator). */
  generation: () => number;
  /** Called once when this process is the intruder (`intruder` says why): it must stop. */
  onIntruder: () => void;
  /** Number of other writers present (a gauge), 0 when none. */
  onOthers?: (n: number) => void;
  log: Logger;
  periodMs?: number;
}

interface Seen { hb: WriterHeartbeat; beats: number[] }

export class WriterGuard {
  readonly writerId = randomUUID();
  readonly startedAtMs = Date.now();
  private readonly periodMs: number;
  private readonly others = new Map<string, Seen>();
  private timer: NodeJS.Timeout | null = null;
  private lastWarnMs = 0;
  private stopped = false;
  /** Set when this process turned out to be the later of two writers of its VM id. */
  intruder: CkptError | null = null;

  constructor(private readonly o: WriterGuardOptions) {
    this.periodMs = o.periodMs ?? 5000;
  }

  start(): void {
    const beat = (): void => {
      if (this.stopped) return;
      const hb: WriterHeartbeat = { writerId: this.writerId, host: hostname(), pid: process.pid, startedAtMs: this.startedAtMs, generation: this.o.generation(), atMs: Date.now() };
      this.o.send(hb).catch((err: unknown) => this.o.log.debug('cannot send the writer heartbeat', { vm: this.o.vm, err }));
      this.prune();
    };
    beat();
    this.timer = setInterval(beat, this.periodMs);
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** A heartbeat of this VM read from the control topic (this process's own are ignored). */
  heard(hb: WriterHeartbeat): void {
    if (this.stopped || hb.writerId === this.writerId) return;
    const now = Date.now();
    const seen = this.others.get(hb.writerId) ?? { hb, beats: [] };
    seen.hb = hb;
    seen.beats = [...seen.beats.filter((t) => now - t < 3 * this.periodMs), now];
    this.others.set(hb.writerId, seen);
    this.prune();
    const who = `${hb.host} pid ${hb.pid} (writer ${hb.writerId}, started ${new Date(hb.startedAtMs).toISOString()}, generation ${hb.generation})`;
    const iAmLater = this.startedAtMs > hb.startedAtMs || (this.startedAtMs === hb.startedAtMs && this.writerId > hb.writerId);
    if (iAmLater) {
      // Stopping takes two heartbeats: one stray record (a process on its way out) is not a writer.
      if (seen.beats.length < 2) return;
      this.stop();
      this.intruder = new CkptError('CKPT_ERR_VM_ID_IN_USE', `another harvester publishes as VM ${this.o.vm}: ${who}, running since before this one. `
        + 'Two writers of one VM id interleave their records and keep its standby stale: this one stops. Give each guest its own HARVESTER_VM_ID (docs/deploy.md)',
      { context: { vm: this.o.vm, other: hb } });
      this.o.onIntruder();
      return;
    }
    if (now - this.lastWarnMs > 30_000) {
      this.lastWarnMs = now;
      this.o.log.error('another harvester started as this VM; it should stop by itself (CKPT_ERR_VM_ID_IN_USE): give each guest its own HARVESTER_VM_ID', { vm: this.o.vm, other: who });
    }
  }

  /** Forgets writers not heard for three periods; reports how many remain. */
  private prune(): void {
    const now = Date.now();
    for (const [id, s] of this.others) if (now - s.beats.at(-1)! > 3 * this.periodMs) this.others.delete(id);
    this.o.onOthers?.(this.others.size);
  }
}
