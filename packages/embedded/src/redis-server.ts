import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CkptError } from '@ckpt/common';
import { onExitSync, track } from './child-registry.ts';

/** A free TCP port on 127.0.0.1 (bound then released; a tiny race with other processes remains). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export interface RedisServerOptions {
  /** AOF on (default) with this fsync policy; `always` makes every acknowledged write durable. */
  appendfsync?: 'always' | 'everysec' | 'no';
  appendonly?: boolean;
  /**
   * LZF-compress values in the AOF rewrite's RDB preamble (default off). Each rewrite writes the whole
   * dataset, and on pages that do not compress LZF only costs CPU: on this 2-core machine, where the
   * rewrite's fork shares the cores with the pipeline, off raised throughput by about 10%
   * (docs/replication.md, "Redis's AOF rewrite"). A dedicated Redis host can afford it: deploy's
   * redis.conf keeps it on.
   */
  rdbCompression?: boolean;
  /**
   * Rewrite the AOF when it has grown by this many percent since the last rewrite (default 400; Redis's
   * own default is 100). A standby image is rewritten in place epoch after epoch, so its AOF grows at
   * the ingest rate and every rewrite serializes the whole image again: less often costs disk (up to
   * about 5x the dataset) and saves CPU.
   */
  aofRewritePercentage?: number;
  /** Data directory; a fresh temp dir (removed on stop) by default. */
  dir?: string;
  port?: number;
}

/**
 * A real redis-server (Debian's package) on a free port of 127.0.0.1, in the foreground as our child,
 * with AOF. `crash()` kills it with SIGKILL and `restart()` starts it again on the same port and data
 * directory, so tests can prove what survives.
 */
export class RedisServer {
  private child: ChildProcess | null = null;
  private log = '';

  /** Removes the temp directory if this process ends (Ctrl-C included) before stop() does. */
  private readonly forgetDir: () => void;

  private constructor(readonly port: number, readonly dir: string, private readonly ownDir: boolean, private readonly opts: RedisServerOptions) {
    this.forgetDir = ownDir ? onExitSync(() => rmSync(dir, { recursive: true, force: true })) : () => undefined;
  }

  static async start(opts: RedisServerOptions = {}): Promise<RedisServer> {
    const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'ckpt-redis-'));
    const s = new RedisServer(opts.port ?? (await freePort()), dir, opts.dir === undefined, opts);
    await s.launch();
    return s;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  private async launch(): Promise<void> {
    const args = [
      '--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--dir', this.dir,
      '--appendonly', this.opts.appendonly === false ? 'no' : 'yes', '--appendfsync', this.opts.appendfsync ?? 'always',
      '--protected-mode', 'no', '--daemonize', 'no', '--loglevel', 'warning',
      '--rdbcompression', this.opts.rdbCompression ? 'yes' : 'no', '--auto-aof-rewrite-percentage', String(this.opts.aofRewritePercentage ?? 400),
      // Batches are up to a few MiB; leave room.
      '--proto-max-bulk-len', '536870912', '--client-query-buffer-limit', '1gb',
    ];
    const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    track(child);
    this.child = child;
    this.log = '';
    const keep = (d: Buffer): void => { this.log = (this.log + d.toString()).slice(-4000); };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    const spawnError = new Promise<never>((_, reject) => child.once('error', (e) => reject(new CkptError('CKPT_ERR_EMBEDDED_START',
      `cannot run redis-server (${e.message}): install it (npm run setup does, as root)`))));
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (child.exitCode !== null) throw new CkptError('CKPT_ERR_EMBEDDED_START', `redis-server exited (${child.exitCode}): ${this.log.trim()}`);
      if (await Promise.race([pingOnce(this.port), spawnError])) return;
      if (Date.now() > deadline) throw new CkptError('CKPT_ERR_EMBEDDED_START', `redis-server did not answer PING on port ${this.port} within 15 s: ${this.log.trim()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** SIGKILL: no shutdown save; what survives is what the AOF holds. */
  async crash(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill('SIGKILL');
    await exited;
  }

  /**
   * crash(), then start again on the same port and directory. `loseData` empties the directory first
   * (its AOF and RDB): a Redis restarted without persistence, or replaced by an empty one.
   */
  async restart(opts: { loseData?: boolean } = {}): Promise<void> {
    await this.crash();
    if (opts.loseData) for (const f of readdirSync(this.dir)) rmSync(join(this.dir, f), { recursive: true, force: true });
    await this.launch();
  }

  async stop(): Promise<void> {
    await this.crash();
    this.child = null;
    if (this.ownDir) rmSync(this.dir, { recursive: true, force: true });
    this.forgetDir();
  }
}

/** True when something on the port answers PING with PONG (loading AOF answers an error: not ready). */
function pingOnce(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection({ host: '127.0.0.1', port });
    let buf = '';
    const done = (ok: boolean): void => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(1000, () => done(false));
    sock.once('error', () => done(false));
    sock.on('data', (d) => {
      buf += d.toString();
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG'));
    });
    sock.once('connect', () => sock.write('PING\r\n'));
  });
}
