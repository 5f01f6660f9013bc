/**
 * `npm run standby -- list [--json]` lists the VMs that have a standby image in Redis: committed epoch,
 * state and age. `npm run standby -- forget --vm ID` deletes one VM's standby (retiring the VM: the
 * replicators otherwise keep reporting its growing age). `npm run standby -- unfence --vm ID` removes a
 * fence whose holder is gone (a restorer killed with kill -9). Redis settings as for the other commands
 * (--redis-url or REDIS_URL, AUTH and TLS files, --redis-prefix). Exit 0 on success, 1 when the command
 * cannot be done, 2 on bad options. With --json the last line is one JSON object, a failure's too
 * ({failed: true, code, message, retriable}: CKPT_ERR_REDIS_UNREACHABLE, CKPT_ERR_STANDBY_FENCED, ...).
 */
import { Redis } from 'ioredis';
import { CkptError, commandConfig, commandRedisOptions, connectWithCause, redisConnectError, errorMessage, isConnectionLoss, jsonFailureLine, REDIS_SCHEMA, redactUrl, vmIdProblem, type Schema } from '@ckpt/common';
import { StandbyStore } from './standby-store.ts';

const SCHEMA = {
  vm: { type: 'string', default: '', help: 'forget, unfence: the VM' },
  ...REDIS_SCHEMA,
  json: { type: 'bool', default: false, help: 'print one JSON object as the last line' },
  redisTimeoutMs: { type: 'int', default: 15_000, min: 100, max: 600_000, help: 'a Redis that does not answer within this time fails the command (retriable) instead of hanging it' },
} as const satisfies Schema;

const USAGE = `usage: npm run standby -- list [--json] [--redis-url URL]
       npm run standby -- forget --vm ID [--json] [--redis-url URL]
       npm run standby -- unfence --vm ID [--json] [--redis-url URL]

list: the VMs with a standby image in Redis, with their committed epoch, state (and why a stale one
is stale: the gap's reason and detail) and age, and the restorer that runs a restored copy of the
guest, if one does (its run claim).
forget: deletes one VM's standby image and everything staged for it (exit 0 also when there is
none). Do it once the VM is retired and its harvester stopped: a running harvester's next epoch
would find no image and ask for a baseline.
The replicator reporting the VM drops its series within REPLICATOR_DELETED_CHECK_MS (30 s): forget
leaves a tombstone for a day that tells it the image was deleted on purpose (an image that vanishes
without one was lost by Redis, and its VM stays reported, stale). Forget a VM whose image Redis lost
the same way, to stop it being reported.
unfence: removes the VM's fence, naming its holder and how long it had left. While a fence is held
the replicator applies nothing to that VM; a restorer that dies (kill -9) stops refreshing its fence,
which then expires by itself within its TTL (10 s by default, at most 120 s). Remove it only when its
holder is certainly gone: a live restore would then read an image the replicator may change under it
(its digest check would refuse the torn image).
REDIS_URL is read when --redis-url is not given. A Redis that does not answer within --redis-timeout-ms
(15 s) fails the command, retriable (CKPT_ERR_REDIS_UNREACHABLE or CKPT_ERR_REDIS_LOST).`;

async function main(argv: string[]): Promise<number> {
  const sub = argv[0] && !argv[0].startsWith('-') ? argv[0] : '';
  const cfg = commandConfig('standby', SCHEMA, USAGE, sub ? argv.slice(1) : argv, (c) => {
    const problems: string[] = [];
    if (sub !== 'list' && sub !== 'forget' && sub !== 'unfence') problems.push(sub ? `unknown command "${sub}": use list, forget or unfence` : 'say what to do: list, forget or unfence');
    if ((sub === 'forget' || sub === 'unfence') && !c.vm) problems.push(`${sub} needs --vm ID`);
    const bad = c.vm ? vmIdProblem('--vm', c.vm) : null;
    if (bad) problems.push(bad);
    if (sub === 'list' && c.vm) problems.push('list takes no --vm');
    if (!c.redisUrl && !process.env.REDIS_URL) problems.push('--redis-url (or REDIS_URL) is required');
    return problems;
  });
  if (typeof cfg === 'number') return cfg;
  const redisOpts = commandRedisOptions('standby', cfg, cfg.redisUrl || process.env.REDIS_URL!);
  if (typeof redisOpts === 'number') return redisOpts;
  const redis = new Redis(redisOpts.url, { ...redisOpts.options, maxRetriesPerRequest: 3, lazyConnect: true, commandTimeout: cfg.redisTimeoutMs });
  redis.on('error', () => undefined);
  const say = (s: string): void => void process.stderr.write(s + '\n');
  try {
    try {
      await connectWithCause(redis, cfg.redisTimeoutMs);
    } catch (err) {
      throw redisConnectError(err, redisOpts.url);
    }
    const store = new StandbyStore(redis, cfg.redisPrefix);
    if (sub === 'list') {
      const now = Date.now();
      const images = await store.listImages();
      // Who runs a restored copy of each guest (a --keep-running restorer's run claim), if anyone.
      const runners = await Promise.all(images.map(({ vm }) => store.runClaimHolder(vm)));
      const vms = images.flatMap(({ vm, meta: m }, i) => (m ? [
        { vm, generation: m.generation, epoch: m.epoch, state: m.state, staleReason: m.state === 'ok' ? null : m.staleReason, ageS: Math.max(0, (now - m.pausedAtMs) / 1000), pausedAt: new Date(m.pausedAtMs).toISOString(), committedAt: new Date(m.committedAtMs).toISOString(), restoredRunningUnder: runners[i]!.holder }] : []));
      const unusable = images.flatMap(({ vm, problem }) => (problem ? [{ vm, problem }] : []));
      // The list is the answer: on stdout, so it can be piped, unless --json puts its JSON there.
      const out = cfg.json ? say : (s: string): void => void process.stdout.write(s + '\n');
      say(`standby: ${vms.length} standby image${vms.length === 1 ? '' : 's'} under the key prefix "${cfg.redisPrefix}:" in ${redactUrl(redisOpts.url)}${unusable.length ? `, and ${unusable.length} unusable` : ''}`);
      for (const v of vms) out(`  ${v.vm}  epoch ${v.generation}/${v.epoch}  ${v.state === 'ok' ? 'ok' : `STALE (${v.staleReason})`}  ${v.ageS.toFixed(1)} s old (guest paused ${v.pausedAt}, committed ${v.committedAt})${v.restoredRunningUnder ? `  restored, running under ${v.restoredRunningUnder}` : ''}`);
      for (const u of unusable) out(`  ${u.vm}  UNUSABLE: ${u.problem}`);
      if (cfg.json) process.stdout.write(JSON.stringify({ vms: vms.map((v) => ({ ...v, ageS: Number(v.ageS.toFixed(3)) })), unusable }) + '\n');
      // Every usable image is listed; an unusable one makes the answer a failure (exit 1).
      return unusable.length ? 1 : 0;
    }
    if (sub === 'unfence') {
      const { holder, ttlMs } = await store.fenceHolder(cfg.vm);
      // Released as its holder would: only if that holder still has it (not a fence taken meanwhile).
      const removed = holder !== null && await store.releaseFence(cfg.vm, holder);
      say(removed ? `standby: removed ${cfg.vm}'s fence, held by ${holder}${ttlMs === null ? '' : ` for ${(ttlMs / 1000).toFixed(1)} s more`}`
        : `standby: ${cfg.vm} has no fence (nothing removed)`);
      if (cfg.json) process.stdout.write(JSON.stringify({ vm: cfg.vm, removed, holder, ttlMs: removed ? ttlMs : null }) + '\n');
      return 0;
    }
    // Under the VM's own fence: no restore reads, and no replicator applies, while the keys go.
    const token = `forget-${process.pid}-${Date.now()}`;
    if (!await store.acquireFence(cfg.vm, token, 60_000)) {
      const { holder, ttlMs } = await store.fenceHolder(cfg.vm);
      throw new CkptError('CKPT_ERR_STANDBY_FENCED', `${cfg.vm} is fenced by ${holder ?? 'another holder'}${ttlMs === null ? '' : ` for ${(ttlMs / 1000).toFixed(1)} s more`} (a restore is reading its image): not deleted; try again when it is done `
        + `(a holder that died stops refreshing the fence, which then expires; \`npm run standby -- unfence --vm ${cfg.vm}\` removes it now)`, { retriable: true });
    }
    let meta;
    let deleted;
    try {
      // An unusable record is what forget is for: delete it all the same.
      meta = await store.readMeta(cfg.vm).catch((err: unknown) => {
        if (err instanceof CkptError && err.code === 'CKPT_ERR_STANDBY_CORRUPT') return null;
        throw err;
      });
      deleted = await store.deleteVm(cfg.vm);
    } finally {
      await store.releaseFence(cfg.vm, token);
    }
    // Nothing to delete is still done: the tombstone is written, so replicators that report a VM whose
    // image Redis lost (the runbook's way to retire it) stop. A mistyped id says so here.
    say(deleted === 0
      ? `standby: no standby image of ${cfg.vm} under the key prefix "${cfg.redisPrefix}:" (nothing deleted); it is marked forgotten, so replicators that still report it (its image lost by Redis) stop within REPLICATOR_DELETED_CHECK_MS`
      : `standby: deleted ${cfg.vm}'s standby${meta ? ` (epoch ${meta.generation}/${meta.epoch})` : ''}: ${deleted} keys`);
    if (cfg.json) process.stdout.write(JSON.stringify({ vm: cfg.vm, deletedKeys: deleted, epoch: meta ? `${meta.generation}/${meta.epoch}` : null }) + '\n');
    return 0;
  } catch (caught) {
    // A Redis that stopped answering (or went away) after the connection: worth trying again.
    const err = !(caught instanceof CkptError) && isConnectionLoss(caught)
      ? new CkptError('CKPT_ERR_REDIS_LOST', `Redis at ${redactUrl(redisOpts.url)} stopped answering: ${errorMessage(caught)}`, { retriable: true, cause: caught })
      : caught;
    say(`standby: ${errorMessage(err)}`);
    // --json promises a JSON last line: a failure is one too ({failed, code, message, retriable}).
    if (cfg.json) process.stdout.write(jsonFailureLine(err, 'CKPT_ERR_STANDBY_FAILED'));
    return 1;
  } finally {
    redis.disconnect();
  }
}

process.exitCode = await main(process.argv.slice(2));
