/**
 * `npm run restore -- --vm ID --redis-url URL [--out DIR | --resume-ms N] [--allow-stale] [--json]`:
 * restores one VM's committed image from Redis, verified against the epoch's digest, as raw slot files
 * plus vCPU state JSON (--out), or into a fresh KVM VM that is resumed for --resume-ms and checked to
 * make progress (--keep-running then leaves it running until SIGTERM, under a run claim in Redis that
 * keeps a second restorer of the VM from running it too: the failover Deployment; run-claim.ts).
 * Options also come from RESTORER_<KEY> environment variables; --metrics-port serves /metrics,
 * /healthz and /readyz (ready once the guest runs). Exit 0 on success, 1 when the image is refused or
 * the restore fails, 2 on bad options, 130/143 when SIGINT/SIGTERM stopped it (fence released, no files kept).
 */
import { renameSync, writeFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import { CkptError, commandConfig, commandRedisOptions, connectWithCause, redisConnectError, createLogger, isConnectionLoss, KvmError, warnUnknownEnv, startCommandMetricsServer, vmIdProblem, type MetricsServer } from '@ckpt/common';
import { KVM_ERROR_CODES } from '@ckpt/kvm-native';
import { StandbyStore } from '@ckpt/standby';
import { createRestorerMetrics } from './metrics.ts';
import { restoreImage, type RestoredImage } from './restore-image.ts';
import { RESTORER_ENV_PREFIX, RESTORER_SCHEMA } from './restorer-config.ts';
import { RunClaim } from './run-claim.ts';
import { FileTarget, KvmTarget, watchRunning } from './targets.ts';

const USAGE = `usage: npm run restore -- --vm ID [--redis-url URL] (--out DIR | --resume-ms N) [options]

Reads the VM's committed image from Redis under a fence (one committed epoch, named in the output),
recomputes its digest from the bytes and refuses it unless it equals the committed epoch's digest.
With --keep-running it first takes the VM's run claim in Redis: a guest another restorer runs (and
renews its claim for) is not run here (CKPT_ERR_RESTORE_ALREADY_RUNNING), and a claim taken by another
stops the guest here (CKPT_ERR_RESTORE_CLAIM_LOST).
REDIS_URL is read when --redis-url is not given.`;

async function main(): Promise<number> {
  const cfg = commandConfig('restore', RESTORER_SCHEMA, USAGE, process.argv.slice(2), (c) => {
    const problems: string[] = [];
    // Named as set: the failover Deployment sets RESTORER_VM, a person types --vm.
    const vmSetting = process.argv.slice(2).some((a) => a === '--vm' || a.startsWith('--vm=')) || !process.env[`${RESTORER_ENV_PREFIX}VM`] ? '--vm' : `${RESTORER_ENV_PREFIX}VM`;
    if (!c.vm) problems.push('--vm (or RESTORER_VM) is required');
    else {
      const bad = vmIdProblem(vmSetting, c.vm);
      if (bad) problems.push(bad);
    }
    if (!c.redisUrl && !process.env.REDIS_URL) problems.push('--redis-url (or RESTORER_REDIS_URL, or REDIS_URL) is required');
    if (!c.out && c.resumeMs === 0) problems.push('say where the image goes: --out DIR or --resume-ms N');
    if (c.out && c.resumeMs > 0) problems.push('--out and --resume-ms exclude each other');
    if (c.keepRunning && c.resumeMs === 0) problems.push('--keep-running needs --resume-ms N (the check before the guest is left running)');
    return problems;
  }, { prefix: RESTORER_ENV_PREFIX, vars: process.env });
  if (typeof cfg === 'number') return cfg;
  const redisOpts = commandRedisOptions('restore', cfg, cfg.redisUrl || process.env.REDIS_URL!);
  if (typeof redisOpts === 'number') return redisOpts;
  const log = createLogger({ service: 'restorer', vm: cfg.vm }, { defaultLevel: 'warn' });
  warnUnknownEnv(log, RESTORER_SCHEMA, RESTORER_ENV_PREFIX);
  // A Redis that stops answering (SIGSTOP, a network partition) fails the restore after redisTimeoutMs instead of hanging it.
  const redis = new Redis(redisOpts.url, { ...redisOpts.options, maxRetriesPerRequest: 3, lazyConnect: true, commandTimeout: cfg.redisTimeoutMs });
  redis.on('error', () => undefined);
  const say = (s: string): void => void process.stderr.write(s + '\n');
  // The --json line has the same keys whatever the outcome; what is not known is null, never a placeholder.
  const json = (r: Record<string, unknown>): void => {
    if (!cfg.json) return;
    process.stdout.write(JSON.stringify({
      vm: cfg.vm, generation: null, epoch: null, digest: null, state: null, verified: false, imageBytes: null, bytesRead: null, durationMs: null,
      fenceWaitMs: null, restoreMBps: null, resumed: null, vcpuVerified: null, imageAgeMs: null, out: cfg.out || null, code: null, message: null, retriable: null, ...r,
    }) + '\n');
  };
  const report = (img: RestoredImage, resumed: { ok: boolean; detail: string } | null): void => {
    const ageMs = Math.max(0, Date.now() - img.committedAtMs);
    say(`restore: ${cfg.vm} epoch ${img.generation}/${img.epoch}${img.state === 'stale' ? ' (STALE image, taken with --allow-stale)' : ''}, digest ${img.digest} verified${img.vcpuVerified ? '' : ' (its vCPU states are NOT: the image stores no digest of them)'}`);
    // How much guest time a failover to it gives up, if the primary stopped just now.
    say(`  committed ${new Date(img.committedAtMs).toISOString()}, ${(ageMs / 1000).toFixed(1)} s before this restore ended`);
    say(`  ${(img.imageBytes / 2 ** 20).toFixed(0)} MiB of guest memory (${(img.bytesRead / 2 ** 20).toFixed(1)} MiB read) in ${img.durationMs.toFixed(0)} ms: ${img.mbps} MB/s` +
      (img.fenceWaitMs >= 1 ? ` (after ${img.fenceWaitMs.toFixed(0)} ms waiting for the fence)` : ''));
    if (cfg.out) say(`  written to ${cfg.out}: ${cfg.vm}.slot<id>.raw, ${cfg.vm}.vcpus.json`);
    if (resumed) say(`  resumed for ${cfg.resumeMs} ms on a fresh KVM VM: ${resumed.ok ? 'running' : 'NOT RUNNING'} (${resumed.detail})`);
    // The runbook reads the code from a FAILED line, as for every other failure.
    if (resumed && !resumed.ok) say(`restore: FAILED: the restored guest did not make progress: ${resumed.detail} [CKPT_ERR_RESTORE_NOT_RUNNING]`);
    json({
      generation: img.generation, epoch: img.epoch, digest: img.digest, state: img.state, verified: true, vcpuVerified: img.vcpuVerified, imageAgeMs: ageMs, imageBytes: img.imageBytes, bytesRead: img.bytesRead,
      durationMs: Math.round(img.durationMs), fenceWaitMs: Math.round(img.fenceWaitMs), restoreMBps: img.mbps, resumed: resumed?.ok ?? null,
      ...(resumed && !resumed.ok ? { code: 'CKPT_ERR_RESTORE_NOT_RUNNING', message: `the restored guest did not make progress: ${resumed.detail}`, retriable: false } : {}),
    });
  };
  // SIGINT/SIGTERM: the restore stops between reads, releases its fence, drops its partial files and
  // reports (exit 130/143). A Redis call that does not return does not hold it up (restoreImage stops
  // waiting for it); the connection is closed after 5 s, and after 10 s the process exits whatever is left.
  const interrupt = new AbortController();
  // An object: TypeScript would narrow a plain `let` to null for good (it is set in the handler).
  const stopped: { by: NodeJS.Signals | null } = { by: null };
  const onSignal = (sig: NodeJS.Signals): void => {
    if (stopped.by) return;
    stopped.by = sig;
    say(`restore: ${sig}: stopping`);
    interrupt.abort(sig);
    setTimeout(() => redis.disconnect(), 5000).unref();
    setTimeout(() => process.exit(exitCodeOf(sig)), 10_000).unref();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const metrics = createRestorerMetrics({ defaultMetrics: cfg.metricsPort >= 0 });
  let phase = 'restoring';
  let server: MetricsServer | null = null;
  // --keep-running: who runs the guest (run-claim.ts). Lost to another restorer, the guest stops here.
  let claim: RunClaim | null = null;
  const claimLost = (when: string): CkptError => new CkptError('CKPT_ERR_RESTORE_CLAIM_LOST',
    `another restorer (${claim?.lostTo}) took the run claim of ${cfg.vm}'s guest ${when}; two copies of one guest must never run, so this one stops`, { context: { holder: claim?.lostTo } });
  // Written through a temp file and a rename, so the collector never reads half a file.
  // A metrics file that cannot be written is a warning: it must not turn a restore's outcome around.
  const writeMetrics = async (): Promise<void> => {
    if (!cfg.metricsFile) return;
    try {
      writeFileSync(`${cfg.metricsFile}.tmp`, await metrics.registry.metrics());
      renameSync(`${cfg.metricsFile}.tmp`, cfg.metricsFile);
    } catch (err) {
      say(`restore: warning: cannot write the metrics file ${cfg.metricsFile}: ${(err as Error).message}`);
    }
  };
  try {
    if (cfg.metricsPort >= 0) {
      server = await startCommandMetricsServer('CKPT_ERR_RESTORE_METRICS_PORT', metrics.registry, cfg.metricsPort, () => (phase === 'running' ? null : phase));
      say(`restore: /metrics, /healthz and /readyz on port ${server.port}`);
    }
    try {
      await connectWithCause(redis, cfg.redisTimeoutMs);
    } catch (err) {
      throw redisConnectError(err, redisOpts.url);
    }
    const store = new StandbyStore(redis, cfg.redisPrefix);
    const options = { allowStale: cfg.allowStale, fenceTtlMs: cfg.fenceTtlMs, fenceWaitMs: cfg.fenceWaitMs, metrics, log, signal: interrupt.signal };
    let resumed: { ok: boolean; detail: string } | null = null;
    if (cfg.out) {
      report(await restoreImage(store, cfg.vm, new FileTarget(cfg.out), options), null);
    } else {
      const target = new KvmTarget({ devPath: cfg.devPath });
      try {
        if (cfg.keepRunning) {
          phase = 'waiting for the run claim';
          claim = await RunClaim.take(store, cfg.vm, { ttlMs: cfg.runClaimTtlMs, log, metrics, signal: interrupt.signal });
          phase = 'restoring';
        }
        const signal = claim ? AbortSignal.any([interrupt.signal, claim.lostSignal]) : interrupt.signal;
        const img = await restoreImage(store, cfg.vm, target, { ...options, signal });
        const r = await target.resume(cfg.resumeMs, undefined, signal);
        if (stopped.by) throw new CkptError('CKPT_ERR_RESTORE_INTERRUPTED', `the restore of ${cfg.vm} was interrupted (${stopped.by}) while its guest was being checked: the guest was stopped`, { retriable: true });
        if (claim?.lostTo) throw claimLost('while its guest was being checked: the guest was stopped');
        resumed = { ok: r.running, detail: r.detail };
        // The image restored fine either way (ckpt_restorer_restores_total); whether its guest ran is this.
        metrics.resumeChecks.inc({ result: r.running ? 'running' : 'not-running' });
        metrics.lastResumeRunning.set(r.running ? 1 : 0);
        report(img, resumed);
        if (cfg.keepRunning && r.running) {
          phase = 'running';
          say('  keeping the guest running until SIGTERM or SIGINT');
          target.vm!.start();
          // Watched while it runs: a guest whose vCPU fails must not leave a ready pod running nothing.
          const died = await watchRunning(() => target.vm!.lastError(), signal);
          if (died) {
            phase = 'guest stopped';
            metrics.lastResumeRunning.set(0);
            throw new CkptError('CKPT_ERR_RESTORE_NOT_RUNNING', `the restored guest of ${cfg.vm} stopped while kept running: vCPU error: ${died}`);
          }
          target.vm!.pause();
          if (claim?.lostTo && !stopped.by) {
            phase = 'guest stopped';
            throw claimLost('while the guest ran here: it was paused and its VM destroyed');
          }
          say('restore: stopped; the guest was paused and its VM destroyed');
        }
      } finally {
        target.vm?.destroy();
        // Only once the guest is gone: until then it is this restorer's to run. After a signal, a
        // Redis that does not answer gets a second: the claim expires by itself.
        await claim?.release(stopped.by ? 1000 : Infinity);
      }
      phase = 'done';
    }
    await writeMetrics();
    return resumed && !resumed.ok ? 1 : 0;
  } catch (caught) {
    phase = 'failed';
    // Interrupted: whatever failed after the signal failed because of it (a closed connection, say).
    const err = stopped.by && !(caught instanceof CkptError && caught.code === 'CKPT_ERR_RESTORE_INTERRUPTED')
      ? new CkptError('CKPT_ERR_RESTORE_INTERRUPTED', `the restore of ${cfg.vm} was interrupted (${stopped.by}): nothing was kept`, { retriable: true, cause: caught })
      // The claim's loss aborted the restore: say that, not "interrupted".
      : claim?.lostTo && !stopped.by && !(caught instanceof CkptError && caught.code === 'CKPT_ERR_RESTORE_CLAIM_LOST') ? claimLost('while this one restored the image: its guest was not run here')
        : forThisCommand(caught, cfg.devPath);
    await writeMetrics();
    // The code ends the line, as the runbook (docs/alerts.md, CkptRestorerDown) reads it from the log.
    say(`restore: ${stopped.by ? 'INTERRUPTED' : 'FAILED'}: ${err.message} [${err.code}${err.retriable ? ', retriable' : ''}]`);
    // Not one of ours: a bug or a library's own error; the stack helps.
    if (err.code === 'CKPT_ERR_RESTORE_UNEXPECTED' && caught instanceof Error && caught.stack) say(caught.stack);
    const waited = err.context.fenceWaitMs;
    json({ code: err.code, message: err.message, retriable: err.retriable, fenceWaitMs: typeof waited === 'number' ? waited : null });
    return stopped.by ? exitCodeOf(stopped.by) : 1;
  } finally {
    redis.disconnect();
    await server?.close();
  }
}

/**
 * `err` as a CkptError whose message names what this command offers: the KVM layer's hint about a
 * missing device names the harvester's `--source sim`, which restore does not have.
 */
function forThisCommand(err: unknown, devPath: string): CkptError {
  if (err instanceof Error && !(err instanceof CkptError) && isConnectionLoss(err)) {
    return new CkptError('CKPT_ERR_REDIS_LOST', `cannot restore: Redis stopped answering (${err.message}); nothing was kept; try again once Redis answers`, { cause: err, retriable: true });
  }
  if (!(err instanceof CkptError)) {
    return new CkptError('CKPT_ERR_RESTORE_UNEXPECTED', `cannot restore: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  if (err.code === KVM_ERROR_CODES.NO_DEVICE) {
    return new KvmError(err.code, `cannot open ${devPath}: no such device; --resume-ms needs KVM on this host (load kvm_intel/kvm_amd, or name the KVM device with --dev-path), or write the image to files with --out DIR instead`,
      { cause: err, context: err.context, retriable: err.retriable });
  }
  return err;
}

/** The shell's exit code for a process ended by `sig`: 128 + its number. */
function exitCodeOf(sig: NodeJS.Signals): number {
  return sig === 'SIGINT' ? 130 : 143;
}

main().then((code) => {
  process.exitCode = code;
  // Done: a Redis call left pending (Redis stopped, a partition) must not keep the process alive.
  setTimeout(() => process.exit(code), 1000).unref();
}, (err: unknown) => {
  process.stderr.write(`restore: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
