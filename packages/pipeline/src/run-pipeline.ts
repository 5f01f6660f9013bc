/**
 * One pipeline run: harvester(s) publishing to Kafka, replicator process(es) applying to Redis, then
 * the guests stop, the replicators drain, and every VM's standby is checked against the harvester's
 * last committed epoch (a shadow image built only from committed epochs).
 */
// The harvester first: kafkajs must find its native CRC-32C and chunked encoder when it loads (harvester kafka-crc32c.ts, kafka-encoder.ts).
import {
  ControlListener, createHarvesterMetrics, DEFAULT_MAX_REQUEST_BYTES, KafkaPublisher, kafkaCrc32c, kafkaEncoder, LogStartOffsets, nextGeneration, reportKafkajsSpeedups, openSource, runHarvest, ShadowVerifier, SimSource, stoppedGuest,
  type DirtySource, type EpochCommit, type EpochSink, type HarvestSummary, type KafkajsSpeedups,
} from '@ckpt/harvester';
import type { Redis } from 'ioredis';
import { Kafka, logLevel, type Producer } from 'kafkajs';
import { errorMessage, percentile, silentLogger, type Logger } from '@ckpt/common';
import { threadCpuMs } from '@ckpt/kvm-native';
import type { Compression } from '@ckpt/proto';
import { partitionOfVm } from '@ckpt/replicator';
import { StandbyStore } from '@ckpt/standby';
import { cpuBetween, sampleCpu, type PipelineCpu, type RunOwnCpu } from './cpu-meter.ts';
import { connectRedis, ReplicatorPool, startServers, type Servers } from './servers.ts';
import { verifyStandby, type StandbyCheck } from './verify-standby.ts';

export interface PipelineOptions {
  source: 'kvm' | 'sim' | 'auto';
  vms: number;
  durationS: number;
  memMib: number;
  vcpus: number;
  workload: 'idle' | 'sequential' | 'random' | 'hotset';
  rate: number;
  fill: boolean;
  intervalMs: number;
  compression: Compression;
  maxRecordBytes: number;
  /**
   * Record bytes per produce request (default 1 000 000). Against the embedded broker keep it at most
   * about 1 MiB: a larger record batch can push out of its 5 MiB partition log everything before it
   * and itself with it (see packages/embedded/kafka-mock/kafka-mock.c).
   */
  maxRequestBytes?: number;
  /** Un-applied bytes per VM (0 = off); against the embedded broker defaults to its 5 MiB per partition less the largest record batch, split between the partition's VMs. */
  windowBytes?: number;
  /** See PublisherOptions.windowStallMs (default 10 s). */
  windowStallMs?: number;
  /**
   * With false, a stalled window is cleared after windowStallMs without asking the broker whether the
   * records it waits for are still there (PublisherOptions.logStartOffset): the path a broker that
   * cannot say takes, and the way a test makes the harvester outrun retention. Default true.
   */
  windowRetentionCheck?: boolean;
  replicators: number;
  /** How long to wait for the replicators to apply the last epochs. */
  drainTimeoutS: number;
  /** Injuries during the run, at random moments (crash tests). Broker and Redis ones need the embedded servers. */
  chaos?: Chaos;
  log?: Logger;
  /** Called with each phase, for a progress display. */
  onPhase?: (phase: string) => void;
}

export interface Chaos {
  /** kill -9 of a replicator process (it is started again at once). */
  replicatorKills?: number;
  /** kill -9 of redis-server, started again on the same AOF. */
  redisRestarts?: number;
  /** The broker refuses connections for this long, once. */
  brokerOutageMs?: number;
  /** Every replicator is killed (-9) and started again only after this long, once. */
  replicatorOutageMs?: number;
  /** Replicators that join the consumer group mid-run (partitions rebalance between live members). */
  replicatorJoins?: number;
  /** A replicator stops in good order (SIGTERM: it leaves the group) and a new one takes its place. */
  replicatorRestarts?: number;
  /** Earliest moment of an injury, as a fraction of the run (default 0.15). */
  from?: number;
  seed?: number;
}

export interface PipelineResult {
  source: string;
  sourceNote?: string;
  /** Which CRC-32C kafkajs checksummed the harvesters' record batches with: "native" or "kafkajs" (slower). */
  kafkaCrc32c: KafkajsSpeedups['kafkaCrc32c'];
  /** Which encoder kafkajs built the harvesters' requests with: "chunked" (large buffers by reference) or "kafkajs" (slower). */
  kafkaEncoder: KafkajsSpeedups['kafkaEncoder'];
  vms: number;
  epochsCommitted: number;
  epochsApplied: number;
  standbyMatches: boolean;
  pagesShipped: number;
  bytesHarvested: number;
  bytesOnWire: number;
  throughputMBps: number;
  /** Page bytes of delta epochs per second, from the first delta epoch on (the baselines excluded). */
  steadyThroughputMBps: number;
  /** Delta epochs per second per VM, from the first delta epoch on (mean over the VMs): the cadence once the baseline is through. */
  steadyEpochsPerS: number;
  /** CPU time of the pipeline's processes over the harvest phase, and per MB harvested (cpu-meter.ts). */
  cpu: PipelineCpu;
  lagP50Ms: number;
  lagP99Ms: number;
  /** Epochs whose lag was measured (seen applied while the guest ran); 0 makes the lag figures meaningless. */
  lagSamples: number;
  resyncs: number;
  durationS: number;
  /** What was done to the system during the run, with times (ms from the start). */
  injuries: string[];
  /** Replicators that exited on their own (a consumer that could not recover) and were started again. */
  replicatorRestarts: string[];
  checks: StandbyCheck[];
}

interface VmRun {
  vm: string;
  source: DirtySource;
  shadow: ShadowVerifier;
  publisher: KafkaPublisher;
  commits: Map<string, number>;
  last: EpochCommit | null;
  committed: number;
  /** Delta epochs: page bytes and count after the first one, and when the first one was committed. */
  deltaBytes: number;
  deltaEpochs: number;
  deltaStartMs: number;
  /** The guest was stopped (the drain phase). */
  stopped: boolean;
}

/** kvm-native's thread CPU clock, or undefined (said in the log) when the native helper is missing. */
function threadClock(log: Logger): (() => number) | undefined {
  try {
    threadCpuMs();
    return threadCpuMs;
  } catch (err) {
    log.warn(`the CPU of the simulated guests and shadow images cannot be told apart from the harvesters': ${errorMessage(err)}`);
    return undefined;
  }
}

export async function runPipeline(o: PipelineOptions): Promise<PipelineResult> {
  const log = o.log ?? silentLogger;
  const phase = o.onPhase ?? (() => undefined);
  reportKafkajsSpeedups(log);
  phase('starting servers');
  const servers: Servers = await startServers({ partitions: Math.max(4, o.vms) });
  phase(`using ${servers.description}`);
  let pool: ReplicatorPool | null = null;
  const runs: VmRun[] = [];
  // The CPU this process spends on the simulated guests and the shadow images, to report the product's own.
  const cpuClock = threadClock(log);
  let shadowCpuMs = 0;
  /** Runs work on a shadow image, counting its CPU into shadowCpuMs. */
  const onShadow = (work: () => void): void => {
    const c0 = cpuClock?.() ?? 0;
    work();
    if (cpuClock) shadowCpuMs += cpuClock() - c0;
  };
  const runOwnCpu = (): RunOwnCpu => ({
    simulatedGuestsMs: !cpuClock ? null : runs.reduce<number | null>((n, r) => {
      const g = r.source instanceof SimSource ? r.source.guestCpuMs : null;
      return n === null || g === null ? null : n + g;
    }, 0),
    shadowImagesMs: cpuClock ? shadowCpuMs : null,
  });
  let producer: Producer | null = null;
  let listener: ControlListener | null = null;
  let logStart: LogStartOffsets | null = null;
  let redis: Redis | null = null;
  // Every timer of the run, cleared however the run ends (a pending one would keep the process alive).
  const timers: NodeJS.Timeout[] = [];
  try {
    const kafka = new Kafka({ clientId: 'ckpt-pipeline', brokers: servers.brokers, logLevel: logLevel.NOTHING });
    // Without idempotence, one request in flight keeps a VM's records in order across retries.
    producer = kafka.producer({ idempotent: !servers.embeddedKafka, maxInFlightRequests: servers.embeddedKafka ? 1 : 5, allowAutoTopicCreation: false });
    try {
      await producer.connect();
    } catch (err) {
      throw new Error(`cannot connect to Kafka at ${servers.brokers.join(',')}${servers.embeddedKafka ? '' : ' (KAFKA_BROKERS)'}: ${(err as Error).message}`, { cause: err });
    }
    redis = await connectRedis(servers, (err) => log.debug('redis connection error', { err }));
    pool = new ReplicatorPool(servers, o.replicators, (line) => log.debug('replicator', { line }));
    listener = new ControlListener(kafka, servers.topics.control, log);
    logStart = new LogStartOffsets(kafka, servers.topics.pages);
    const store = new StandbyStore(redis, servers.redisPrefix);
    // The embedded broker keeps 5 MiB per partition, shared by the VMs whose keys hash to it, and at
    // least that less its largest record batch (kafka-mock.c): what the VMs of one partition may have
    // waiting for the replicator (their windows) must fit in that, or records are lost with no
    // replicator away at all. Two batches together must fit in 5 MiB, or the mock drops the second.
    const vmsPerPartition = maxVmsPerPartition(o.vms, Math.max(4, o.vms), servers.topics.pages);
    const maxRequestBytes = o.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES;
    const largestBatch = Math.max(maxRequestBytes, o.maxRecordBytes) + (64 << 10);
    const windowBytes = o.windowBytes ?? (servers.embeddedKafka ? Math.max(0, Math.floor((EMBEDDED_PARTITION_BYTES - largestBatch) / vmsPerPartition)) : 0);
    if (servers.embeddedKafka) {
      const problems = [
        ...(windowBytes === 0 ? ['the replication window is off, so nothing keeps the harvesters within what the broker keeps'] : []),
        ...(windowBytes * vmsPerPartition + largestBatch > EMBEDDED_PARTITION_BYTES ? ['the windows of the VMs of one partition plus the largest record batch exceed its 5 MiB'] : []),
        ...(2 * largestBatch > EMBEDDED_PARTITION_BYTES ? ['two record batches of the largest size exceed its 5 MiB'] : []),
      ];
      if (problems.length) log.warn(`the embedded broker can lose records with these sizes: ${problems.join('; ')}`, { windowBytes, vmsPerPartition, maxRequestBytes, maxRecordBytes: o.maxRecordBytes });
    }
    // Publishers stuck on a replicator that does not progress give up after the drain timeout.
    const drainDeadline = new AbortController();
    let sourceKind = '';
    let sourceNote: string | undefined;
    for (let v = 0; v < o.vms; v++) {
      const vm = `vm-${v}`;
      const opened = openSource({
        source: o.source, devPath: '/dev/kvm', memMib: o.memMib, slots: 1, vcpus: o.vcpus, workload: o.workload, rate: o.rate, seed: v + 1,
        hotPages: 256, hotPercent: 90, fill: o.fill, ringEntries: 65536,
      }, cpuClock ? { simCpuClockMs: cpuClock } : {});
      sourceKind = opened.source.kind;
      sourceNote = opened.fallbackReason;
      const publisher = new KafkaPublisher({
        producer, topic: servers.topics.pages, vm, maxRecordBytes: o.maxRecordBytes, compression: o.compression, maxInFlightBytes: 8 << 20,
        maxRequestBytes,
        windowBytes, windowStallMs: o.windowStallMs, logStartOffset: o.windowRetentionCheck === false ? undefined : logStart.of,
        publishTimeoutMs: 30_000, log, signal: drainDeadline.signal,
      });
      listener.register(vm, (m) => publisher.window.marker(m));
      runs.push({ vm, source: opened.source, shadow: new ShadowVerifier(opened.source), publisher, commits: new Map(), last: null, committed: 0, deltaBytes: 0, deltaEpochs: 0, deltaStartMs: 0, stopped: false });
    }
    await listener.start();
    phase('harvesting');
    const stop = new AbortController();
    const lags: number[] = [];
    // Lag: from the harvester's commit to the epoch being visible in Redis.
    const poll = setInterval(() => {
      for (const r of runs) {
        void store.readPosition(r.vm).then((m) => {
          if (!m) return;
          const key = `${m.generation}/${m.epoch}`;
          const at = r.commits.get(key);
          if (at !== undefined) {
            lags.push(Date.now() - at);
            r.commits.delete(key);
            for (const k of r.commits.keys()) {
              const [g, e] = k.split('/').map(Number);
              if (g! < m.generation || (g === m.generation && e! < m.epoch)) r.commits.delete(k);
            }
          }
        }, () => undefined);
      }
    }, 5);
    timers.push(poll);
    const t0 = performance.now();
    const cpuAtStart = sampleCpu(servers, pool, runOwnCpu());
    const injuries: string[] = [];
    const chaosDone = runChaos(o.chaos, o.durationS * 1000, servers, pool, injuries, t0);
    const timer = setTimeout(() => stop.abort(), o.durationS * 1000);
    const giveUp = setTimeout(() => drainDeadline.abort(), (o.durationS + o.drainTimeoutS) * 1000);
    timers.push(timer, giveUp);
    // Checkpoints one VM's guest until `signal` aborts (epochs 0) or for a baseline and `epochs` more.
    const harvest = (r: VmRun, source: DirtySource, epochs: number, generation: number, signal?: AbortSignal): Promise<HarvestSummary> => {
      // The shadow must hold only committed epochs: segments are held back until the commit.
      const pendingSegments: Parameters<EpochSink['segment']>[] = [];
      const shadowSink: EpochSink = {
        begin: () => {
          pendingSegments.length = 0;
          onShadow(() => r.shadow.begin());
        },
        segment: (h, seg) => { pendingSegments.push([h, seg]); },
        commit: () => undefined,
      };
      return runHarvest(source, {
        epochs, intervalMs: o.intervalMs, signal, sinks: [r.publisher, shadowSink],
        cycle: { generation }, logger: log, metrics: createHarvesterMetrics(),
        takeResyncRequest: () => listener!.takeResyncRequest(r.vm),
        generationFloor: () => listener!.generationFloor(r.vm),
        onEpoch: (c) => {
          // The publisher's commit has been acknowledged by the broker: the epoch is committed.
          onShadow(() => { for (const [h, seg] of pendingSegments) r.shadow.segment(h, seg); });
          pendingSegments.length = 0;
          r.last = c;
          r.committed++;
          if (!c.baseline) {
            if (r.deltaStartMs === 0) r.deltaStartMs = performance.now();
            else if (!r.stopped) {
              r.deltaBytes += c.bytes;
              r.deltaEpochs++;
            }
          }
          r.commits.set(`${c.generation}/${c.epoch}`, c.committedAtMs);
        },
      });
    };
    const summaries = await Promise.all(runs.map((r) => harvest(r, r.source, 0, Date.now(), stop.signal)));
    clearTimeout(timer);
    await chaosDone;
    const tEnd = performance.now();
    const cpuAtEnd = sampleCpu(servers, pool, runOwnCpu());
    const harvestS = (tEnd - t0) / 1000;
    const steady = runs.filter((r) => r.deltaStartMs > 0);
    const steadyMBps = steady.reduce((n, r) => n + r.deltaBytes / ((tEnd - r.deltaStartMs) / 1000), 0) / 1e6;
    const steadyEps = steady.length ? steady.reduce((n, r) => n + r.deltaEpochs / ((tEnd - r.deltaStartMs) / 1000), 0) / steady.length : 0;
    for (const r of runs) r.source.pause();
    phase('draining replicators');
    // The guests no longer run, but their harvesters still answer: a replicator that lost continuity
    // (records dropped by retention while it was down, say) asks for a baseline, which is cut from the
    // stopped guest and must be applied before the standby can match.
    const deadline = Date.now() + o.drainTimeoutS * 1000;
    let drainBaselines = 0;
    await Promise.all(runs.map(async (r) => {
      r.stopped = true;
      const stopped = stoppedGuest(r.source);
      while (r.last && Date.now() <= deadline) {
        const m = await store.readPosition(r.vm);
        if (m && m.generation === r.last.generation && m.epoch === r.last.epoch) break;
        const why = listener!.takeResyncRequest(r.vm);
        if (why !== null) {
          log.warn('the guest is stopped; answering a resync request with a baseline of its final memory', { vm: r.vm, reason: why });
          // Counted in `resyncs` (with any generation it had to start itself); its pages are not part
          // of the run's throughput.
          const s = await harvest(r, stopped, 1, nextGeneration(r.last.generation, listener!.generationFloor(r.vm), log), drainDeadline.signal);
          drainBaselines += 1 + s.resyncs;
          continue;
        }
        await new Promise((res) => setTimeout(res, 20));
      }
    }));
    clearTimeout(giveUp);
    clearInterval(poll);
    phase('verifying');
    const checks: StandbyCheck[] = [];
    let applied = 0;
    for (const r of runs) {
      if (!r.last) {
        checks.push({ vm: r.vm, matches: false, problems: ['the harvester committed no epoch'], generation: 0, epoch: -1, digest: '', recomputedDigest: '', pagesCompared: 0 });
        continue;
      }
      const c = await verifyStandby(store, r.vm, { generation: r.last.generation, epoch: r.last.epoch, digest: r.last.digest }, r.shadow.shadow);
      checks.push(c);
      applied += c.generation === r.last.generation ? c.epoch + 1 : 0;
    }
    const bytesHarvested = summaries.reduce((n, s) => n + s.bytesHarvested, 0);
    return {
      source: sourceKind, sourceNote, kafkaCrc32c: kafkaCrc32c().impl, kafkaEncoder: kafkaEncoder().impl, vms: o.vms,
      epochsCommitted: runs.reduce((n, r) => n + r.committed, 0),
      epochsApplied: applied,
      standbyMatches: checks.every((c) => c.matches),
      pagesShipped: summaries.reduce((n, s) => n + s.pagesHarvested, 0),
      bytesHarvested,
      bytesOnWire: runs.reduce((n, r) => n + r.publisher.bytesOnWire, 0),
      throughputMBps: Number((bytesHarvested / harvestS / 1e6).toFixed(1)),
      steadyThroughputMBps: Number(steadyMBps.toFixed(1)),
      steadyEpochsPerS: Number(steadyEps.toFixed(1)),
      cpu: cpuBetween(cpuAtStart, cpuAtEnd, bytesHarvested),
      lagP50Ms: percentile(lags, 50), lagP99Ms: percentile(lags, 99), lagSamples: lags.length,
      resyncs: summaries.reduce((n, s) => n + s.resyncs, 0) + drainBaselines,
      durationS: Number(harvestS.toFixed(2)),
      injuries,
      replicatorRestarts: [...pool.restarts],
      checks,
    };
  } finally {
    for (const t of timers) clearTimeout(t);
    for (const r of runs) r.source.close();
    await listener?.stop();
    await logStart?.close();
    await producer?.disconnect().catch(() => undefined);
    await pool?.stop();
    redis?.disconnect();
    await servers.stop();
  }
}

/**
 * Plays the injuries at random moments between `from` and 90% of the run (default from 15%).
 * Member churn while the consumer group is still forming is the harshest case on the embedded broker.
 */
async function runChaos(c: Chaos | undefined, durationMs: number, servers: Servers, pool: ReplicatorPool, injuries: string[], t0: number): Promise<void> {
  if (!c) return;
  let seed = (c.seed ?? 1) >>> 0 || 1;
  const rnd = (): number => {
    seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0;
    return seed / 2 ** 32;
  };
  const from = Math.min(0.85, Math.max(0, c.from ?? 0.15));
  const events: { at: number; kind: 'replicator' | 'redis' | 'broker' | 'replicators-out' | 'join' | 'restart' }[] = [];
  for (let i = 0; i < (c.replicatorJoins ?? 0); i++) events.push({ at: durationMs * (from + (0.9 - from) * rnd()), kind: 'join' });
  for (let i = 0; i < (c.replicatorRestarts ?? 0); i++) events.push({ at: durationMs * (from + (0.9 - from) * rnd()), kind: 'restart' });
  if (c.replicatorOutageMs) events.push({ at: durationMs * (0.15 + 0.2 * rnd()), kind: 'replicators-out' });
  for (let i = 0; i < (c.replicatorKills ?? 0); i++) events.push({ at: durationMs * (from + (0.9 - from) * rnd()), kind: 'replicator' });
  for (let i = 0; i < (c.redisRestarts ?? 0); i++) events.push({ at: durationMs * (from + (0.9 - from) * rnd()), kind: 'redis' });
  if (c.brokerOutageMs) events.push({ at: durationMs * (from + (0.9 - from) * rnd()), kind: 'broker' });
  events.sort((a, b) => a.at - b.at);
  const since = (): number => Math.round(performance.now() - t0);
  for (const e of events) {
    const wait = e.at - (performance.now() - t0);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    if (e.kind === 'replicator') {
      const i = Math.floor(rnd() * pool.members.length);
      const victim = await pool.kill(i);
      injuries.push(`${since()} ms: kill -9 replicator ${i} (pid ${victim.pid}), started again`);
    } else if (e.kind === 'restart') {
      const i = Math.floor(rnd() * pool.members.length);
      const old = await pool.kill(i, 'SIGTERM');
      injuries.push(`${since()} ms: replicator ${i} (pid ${old.pid}) stopped in good order, a new one started`);
    } else if (e.kind === 'join') {
      pool.add();
      injuries.push(`${since()} ms: replicator ${pool.members.length - 1} joined the group`);
    } else if (e.kind === 'replicators-out') {
      await pool.killAll();
      injuries.push(`${since()} ms: kill -9 of every replicator; down for ${c.replicatorOutageMs} ms`);
      await new Promise((r) => setTimeout(r, c.replicatorOutageMs));
      pool.start();
      injuries.push(`${since()} ms: replicators started again`);
    } else if (e.kind === 'redis') {
      if (!servers.redis) throw new Error('a Redis restart needs the embedded redis-server (unset REDIS_URL)');
      await servers.redis.restart();
      injuries.push(`${since()} ms: kill -9 redis-server, restarted on its AOF`);
    } else {
      if (!servers.kafka) throw new Error('a broker outage needs the embedded broker (unset KAFKA_BROKERS)');
      await servers.kafka.brokerDown(-1);
      injuries.push(`${since()} ms: broker down for ${c.brokerOutageMs} ms`);
      await new Promise((r) => setTimeout(r, c.brokerOutageMs));
      await servers.kafka.brokerUp(-1);
    }
  }
}

/** What the embedded broker keeps of each partition (librdkafka's mock cluster). */
const EMBEDDED_PARTITION_BYTES = 5 << 20;

/** Most VMs (vm-0, vm-1, ...) whose keys the default partitioner puts on one partition. */
function maxVmsPerPartition(vms: number, partitions: number, topic: string): number {
  const counts = new Map<number, number>();
  for (let v = 0; v < vms; v++) {
    const p = partitionOfVm(`vm-${v}`, partitions, topic);
    counts.set(p, (counts.get(p) ?? 0) + 1);
  }
  return Math.max(1, ...counts.values());
}
