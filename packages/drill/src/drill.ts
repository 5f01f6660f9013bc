/**
 * The failover rehearsal. Per scenario: a primary guest and its harvester in their own process, the
 * broker, a replicator and Redis; an injury (none, a replicator kill -9, a Redis restart, a broker
 * outage); then kill -9 of the primary (the host dies), failover: wait for the standby to hold the last
 * committed epoch, restore it (fenced, digest-verified), resume the guest on a fresh KVM VM, compare
 * every byte with an independent witness of the committed epochs, and measure RPO and RTO.
 */
import type { ChildProcess } from 'node:child_process';
import type { Redis } from 'ioredis';
import { silentLogger, type Logger, type SparseImage } from '@ckpt/common';
import { kvmAvailability } from '@ckpt/kvm-native';
import { connectRedis, ReplicatorPool, spawnHarvester, startServers, stopChild, type Servers } from '@ckpt/pipeline';
import { KvmTarget, restoreImage, SparseTarget, type ImageLayout, type RestoredImage, type RestoreTarget } from '@ckpt/restorer';
import { StandbyStore } from '@ckpt/standby';
import { Witness } from './witness.ts';

export const SCENARIOS = ['primary-crash', 'replicator-crash', 'redis-restart', 'redis-data-loss', 'broker-outage'] as const;
export type ScenarioName = (typeof SCENARIOS)[number];

export interface DrillOptions {
  scenarios: ScenarioName[];
  source: 'auto' | 'kvm' | 'sim';
  memMib: number;
  vcpus: number;
  rate: number;
  intervalMs: number;
  /** The primary runs between runS/2 and runS after its baseline before it is killed. */
  runS: number;
  seed: number;
  log?: Logger;
  onPhase?: (scenario: string, phase: string) => void;
}

export interface ScenarioResult {
  name: ScenarioName;
  verified: boolean;
  resumed: boolean;
  /** null where the scenario did not get that far (for example, no epoch was committed). */
  rpoEpochs: number | null;
  rpoMs: number | null;
  rtoMs: number | null;
  /**
   * After an injury: from its end (the broker back, Redis restarted, the replicator started again) to
   * the standby holding an epoch the harvester paused after that end: how long the standby protected
   * nothing newer. null for primary-crash, or when it never recovered.
   */
  recoveryMs: number | null;
  restoreMBps: number | null;
  /** The epoch restored (generation/epoch) and the witness's last committed one. */
  restoredEpoch: string;
  lastCommittedEpoch: string;
  epochsCommitted: number;
  pagesCompared: number;
  injury: string;
  resumeDetail: string;
  problems: string[];
}

export interface DrillReport {
  source: 'kvm' | 'sim';
  sourceNote?: string;
  scenarios: ScenarioResult[];
  verified: boolean;
}

const VM = 'drill-vm';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, timeoutMs: number, ok: () => boolean | Promise<boolean>, everyMs = 20): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** Cleanups of the scenario running now (the CLI runs them on Ctrl-C). */
export const running = new Set<() => Promise<void>>();

export async function runDrill(o: DrillOptions): Promise<DrillReport> {
  let source: 'kvm' | 'sim' = o.source === 'kvm' ? 'kvm' : 'sim';
  let sourceNote: string | undefined;
  if (o.source === 'auto') {
    const k = kvmAvailability();
    source = k.usable ? 'kvm' : 'sim';
    if (!k.usable) sourceNote = `KVM is not usable here (${k.reason}): the simulator stands in, and no guest is resumed`;
  }
  const scenarios: ScenarioResult[] = [];
  let seed = o.seed >>> 0 || 1;
  const rnd = (): number => {
    seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0;
    return seed / 2 ** 32;
  };
  for (const name of o.scenarios) scenarios.push(await runScenario(name, source, o, rnd));
  return { source, sourceNote, scenarios, verified: scenarios.every((s) => s.verified) };
}

async function runScenario(name: ScenarioName, source: 'kvm' | 'sim', o: DrillOptions, rnd: () => number): Promise<ScenarioResult> {
  const log = o.log ?? silentLogger;
  const phase = (p: string): void => o.onPhase?.(name, p);
  const res: ScenarioResult = {
    name, verified: false, resumed: false, rpoEpochs: null, rpoMs: null, rtoMs: null, recoveryMs: null, restoreMBps: null, restoredEpoch: '', lastCommittedEpoch: '',
    epochsCommitted: 0, pagesCompared: 0, injury: 'none', resumeDetail: '', problems: [],
  };
  let servers: Servers | null = null;
  let pool: ReplicatorPool | null = null;
  let harvester: ChildProcess | null = null;
  let witness: Witness | null = null;
  let redis: Redis | null = null;
  let target: KvmTarget | null = null;
  const harvesterLog: string[] = [];
  let stopTicker = false;
  let ticker: Promise<void> | null = null;
  const cleanup = async (): Promise<void> => {
    stopTicker = true;
    await ticker;
    target?.vm?.destroy();
    if (harvester) await stopChild(harvester, 'SIGKILL');
    await witness?.stop();
    await pool?.stop();
    redis?.disconnect();
    await servers?.stop();
  };
  running.add(cleanup);
  try {
    phase('starting the broker, Redis and a replicator');
    servers = await startServers({ partitions: 4 });
    phase(`using ${servers.description}`);
    redis = await connectRedis(servers);
    pool = new ReplicatorPool(servers, 1, (line) => log.debug('replicator', { line }));
    const store = new StandbyStore(redis, servers.redisPrefix);
    witness = new Witness(Witness.client(servers.brokers), servers.topics.pages, VM, (e) => phase(e));
    await witness.start();
    phase(`starting the primary (${source} guest, ${o.memMib} MiB, ${o.vcpus} vCPU) and its harvester`);
    harvester = spawnHarvester(servers, {
      HARVESTER_SOURCE: source, HARVESTER_VM_ID: VM, HARVESTER_MEM_MIB: String(o.memMib), HARVESTER_VCPUS: String(o.vcpus), HARVESTER_RATE: String(o.rate),
      HARVESTER_INTERVAL_MS: String(o.intervalMs), HARVESTER_WORKLOAD: 'random', HARVESTER_SEED: String(Math.floor(rnd() * 1e6)),
      // The embedded broker keeps 5 MiB per partition: stay inside it.
      ...(servers.embeddedKafka ? { HARVESTER_WINDOW_BYTES: String(3 << 20) } : {}),
    }, (line) => { harvesterLog.push(line); if (harvesterLog.length > 20) harvesterLog.shift(); });
    const h = harvester;
    const alive = (): boolean => {
      if (h.exitCode !== null || h.signalCode !== null) throw new Error(`the harvester exited (${h.exitCode ?? h.signalCode}): ${harvesterLog.slice(-5).join(' | ')}`);
      if (witness!.lost) throw new Error(`the drill's witness cannot check this run byte for byte: ${witness!.lost}`);
      return true;
    };
    // Progress once a second while the primary runs: epochs committed and how far the standby trails.
    ticker = (async () => {
      while (!stopTicker) {
        await sleep(1000);
        if (stopTicker) break;
        const p = await store.readPosition(VM).catch(() => null);
        const w = witness.last;
        // The witness is the drill's own reader of the topic: 'committed' counts what it has read.
        const lag = !p ? 'no image yet'
          : !w ? 'the witness has read no commit yet'
            : p.generation !== w.generation ? `standby on generation ${p.generation}, the newest commit read is of ${w.generation}`
              : `${Math.max(0, w.epoch - p.epoch)} epoch(s) behind`;
        const note = witness.lastRejection ? `; witness: ${witness.records} records, ${witness.restarts} consumer restarts, last rejected ${witness.lastRejection}` : '';
        phase(`  epochs committed ${witness.committed}, standby at ${p ? `${p.generation}/${p.epoch}` : '-'} (${lag})${note}`);
      }
    })();
    await until('the standby to hold the baseline and two epochs', 90_000, async () => alive() && witness!.committed >= 3 && (await store.readPosition(VM)) !== null);
    if (name !== 'primary-crash') {
      await sleep(rnd() * o.runS * 250);
      const generationBefore = (await store.readPosition(VM))?.generation;
      res.injury = await injure(name, servers, pool);
      const healedAtMs = Date.now();
      phase(`injury: ${res.injury}; waiting for the standby to move on`);
      const at = witness.committed;
      await until('the standby to apply epochs again after the injury', 90_000, async () => {
        alive();
        const p = await store.readMeta(VM);
        // The harvester's clock is this host's: an epoch paused after the injury's end is new state.
        if (res.recoveryMs === null && p && p.pausedAtMs >= healedAtMs) res.recoveryMs = Date.now() - healedAtMs;
        return res.recoveryMs !== null && witness!.committed >= at + 3 && p !== null && witness!.last !== null && p.generation === witness!.last.generation && p.epoch >= witness!.last.epoch - 2;
      }, 50);
      phase(`the standby holds an epoch paused ${res.recoveryMs} ms after the injury ended`);
      // Nothing survived in Redis: only a new generation's baseline can have rebuilt the standby.
      const after = await store.readPosition(VM);
      if (name === 'redis-data-loss' && after?.generation === generationBefore) res.problems.push(`the standby was not rebuilt from a new baseline after Redis lost its data: still generation ${generationBefore}`);
    }
    const runMs = (0.5 + 0.5 * rnd()) * o.runS * 1000;
    phase(`the primary runs ${(runMs / 1000).toFixed(1)} s more, then is killed (-9)`);
    await sleep(runMs);
    alive();
    stopTicker = true;
    await ticker;
    const killedAt = Date.now();
    const t0 = performance.now();
    await stopChild(h, 'SIGKILL');
    phase('primary killed; failing over: waiting for the standby to hold the last committed epoch');
    await until('the witness to read the whole topic', 30_000, () => witness!.caughtUp(), 100);
    const last = witness.last!;
    res.epochsCommitted = witness.committed;
    res.lastCommittedEpoch = `${last.generation}/${last.epoch}`;
    // The guest time lost: from the pause that captured the last committed epoch (its commit can come
    // much later, after a wait for the replication window) to the kill.
    res.rpoMs = Math.max(0, killedAt - last.pausedAtMs);
    res.rpoEpochs = Number((res.rpoMs / o.intervalMs).toFixed(2));
    await until(`the standby to reach epoch ${res.lastCommittedEpoch}`, 60_000, async () => {
      const p = await store.readPosition(VM);
      return p !== null && p.generation === last.generation && p.epoch === last.epoch;
    }, 5);
    phase('restoring the standby image (fenced, digest-verified)');
    const copy = new SparseTarget();
    target = source === 'kvm' ? new KvmTarget() : null;
    const img = await restoreImage(store, VM, target ? tee(target, copy) : copy);
    res.restoredEpoch = `${img.generation}/${img.epoch}`;
    res.restoreMBps = img.mbps;
    if (target) {
      const r = await target.resume(200, () => {
        res.rtoMs = Math.round(performance.now() - t0);
        phase('guest resumed on a fresh KVM VM; checking that it runs');
      });
      res.resumed = r.running;
      res.resumeDetail = r.detail;
      if (!res.resumed) res.problems.push(`the resumed guest did not make progress: ${res.resumeDetail}`);
    } else {
      res.rtoMs = Math.round(performance.now() - t0);
      res.resumeDetail = 'the simulator has no vCPUs to resume (RTO is to the verified image)';
    }
    phase('comparing every page with the witness of the committed epochs');
    compare(img, copy.image!, witness.image!, last, res);
    res.problems.push(...witness.problems);
    res.verified = res.problems.length === 0 && (source === 'sim' || res.resumed);
  } catch (err) {
    res.problems.push((err as Error).message);
  } finally {
    await cleanup().catch((err: unknown) => res.problems.push(`cleanup: ${(err as Error).message}`));
    running.delete(cleanup);
  }
  return res;
}

async function injure(name: ScenarioName, servers: Servers, pool: ReplicatorPool): Promise<string> {
  switch (name) {
    case 'replicator-crash':
      await pool.kill(0);
      return 'kill -9 of the replicator (started again)';
    case 'redis-restart':
      if (!servers.redis) throw new Error('redis-restart needs the embedded redis-server (unset REDIS_URL)');
      await servers.redis.restart();
      return 'kill -9 of redis-server, restarted on its AOF';
    case 'redis-data-loss':
      if (!servers.redis) throw new Error('redis-data-loss needs the embedded redis-server (unset REDIS_URL)');
      await servers.redis.restart({ loseData: true });
      return 'kill -9 of redis-server, restarted with its data gone (no AOF left): the standby is rebuilt from a new baseline';
    case 'broker-outage':
      if (!servers.kafka) throw new Error('broker-outage needs the embedded broker (unset KAFKA_BROKERS)');
      await servers.kafka.brokerDown(-1);
      await sleep(2000);
      await servers.kafka.brokerUp(-1);
      return 'the broker refused connections for 2 s';
    default:
      return 'none';
  }
}

function tee(a: RestoreTarget, b: RestoreTarget): RestoreTarget {
  return {
    open: async (l: ImageLayout) => { await a.open(l); await b.open(l); },
    write: (s, p, bytes) => { a.write(s, p, bytes); b.write(s, p, bytes); },
    finish: async (img) => { await a.finish(img); await b.finish(img); },
    abort: async () => { await a.abort(); await b.abort(); },
  };
}

export function compare(img: RestoredImage, got: SparseImage, want: SparseImage, last: { generation: number; epoch: number; digest: string }, res: ScenarioResult): void {
  if (img.generation !== last.generation || img.epoch !== last.epoch) res.problems.push(`restored epoch ${res.restoredEpoch}, the last committed one is ${res.lastCommittedEpoch}`);
  if (img.digest !== last.digest) res.problems.push(`restored digest ${img.digest}, committed ${last.digest}`);
  const zero = new Uint8Array(img.pageSize);
  let bad = 0;
  img.slots.forEach((_, slot) => {
    const gfns = new Set([...got.populated(slot), ...want.populated(slot)]);
    for (const g of gfns) {
      res.pagesCompared++;
      if (Buffer.compare(got.page(slot, g) ?? zero, want.page(slot, g) ?? zero) !== 0 && bad++ < 3) res.problems.push(`page ${slot}:${g} differs from the committed epoch`);
    }
  });
  if (bad > 3) res.problems.push(`${bad} pages differ in all`);
  if (got.digest().toHex() !== last.digest) res.problems.push(`the restored bytes hash to ${got.digest().toHex()}, the committed digest is ${last.digest}`);
}
