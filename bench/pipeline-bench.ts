/**
 * `npm run bench:pipeline [-- --json] [-- --quick]`: the replication pipeline's costs, each from a
 * pipeline run on the embedded servers (real Kafka-protocol broker, real redis-server, replicator
 * processes):
 *
 * 1. End-to-end throughput of incompressible dirty pages (harvest, Kafka, Redis) in MB/s, against the
 *    raw Redis ingest ceiling measured in the same run (`redis-benchmark -t set -d 4096 -P 32` on the
 *    same kind of redis-server): `ratioToRedisIngest` (target throughput >= 200 MB/s).
 * 2. Bytes on the wire for a zero-page-heavy guest (an idle 256 MiB guest: baseline plus epochs), as a
 *    fraction of its raw size: `zeroPageWireRatio` (target < 2%).
 * 3. Replication lag p99 at a steady 40 epochs/s with 1000 dirty pages per epoch: `lagP99Ms`
 *    (target < 100 ms); the same at 250 and 100 pages per epoch (`lagP99Ms250Pages`, `lagP99Ms100Pages`),
 *    with the cadence held after the baseline (`lagSteadyEpochsPerS*`).
 */
import { execFileSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { RedisServer } from '@ckpt/embedded';
import { kvmAvailability } from '@ckpt/kvm-native';
import { runPipeline, type PipelineOptions, type PipelineResult } from '@ckpt/pipeline';
import { benchArgs } from './bench-args.ts';

const { json, quick } = benchArgs('bench:pipeline');
const say = (s: string): void => void process.stderr.write(s + '\n');

const base: PipelineOptions = {
  source: 'sim', vms: 1, durationS: quick ? 4 : 10, memMib: 256, vcpus: 1, workload: 'random', rate: 0, fill: false, intervalMs: 50,
  compression: 'none', maxRecordBytes: 1_000_000, replicators: 1, drainTimeoutS: 120,
};

function check(r: PipelineResult, what: string): void {
  if (!r.standbyMatches) throw new Error(`${what}: the standby did not match: ${JSON.stringify(r.checks.map((c) => c.problems))}`);
}

/** SET throughput of 4 KiB values into a fresh redis-server with AOF (fsync everysec and always). */
async function redisIngestMBps(): Promise<{ everysec: number; always: number }> {
  const out: Record<string, number> = {};
  for (const fsync of ['everysec', 'always'] as const) {
    const server = await RedisServer.start({ appendfsync: fsync });
    try {
      const text = execFileSync('redis-benchmark', ['-p', String(server.port), '-t', 'set', '-d', '4096', '-P', '32', '-n', quick ? '50000' : '200000', '-q', '--csv'], { encoding: 'utf8' });
      const line = text.split('\n').find((l) => l.startsWith('"SET"'));
      const rps = line ? Number(line.split(',')[1]!.replace(/"/g, '')) : NaN;
      out[fsync] = (rps * 4096) / 1e6;
    } finally {
      await server.stop();
    }
  }
  return { everysec: out.everysec!, always: out.always! };
}

async function main(): Promise<void> {
  // Offered load: 2 simulated guests filling pages with incompressible data at 25000 pages/s each
  // (205 MB/s together). The simulator, not KVM: on this host KVM emulates every store to a dirty-logged
  // page, so a real guest fills pages far slower than the pipeline can carry them.
  say('1/3 end-to-end throughput of incompressible pages (2 simulated guests, 25000 filled pages/s each, 30 s) vs redis-benchmark SET -d 4096 -P 32');
  const ceiling = await redisIngestMBps();
  // 30 s, not 10: in a 10 s run V8 spent about 2.5 s of the harvesters' process compiling (the code gets
  // hot bit by bit) and the CPU per MB was a third higher than over 30 s; a service runs for days.
  const t = await runPipeline({ ...base, vms: 2, memMib: 64, fill: true, workload: 'random', rate: 25_000, intervalMs: 20, durationS: quick ? 4 : 30 });
  check(t, 'throughput run');
  // The embedded Redis runs with appendfsync always (every acknowledged write is on disk): compare with that.
  const ratioToRedisIngest = t.steadyThroughputMBps / ceiling.always;
  say(`    ${t.steadyThroughputMBps} MB/s end to end in delta epochs (${t.throughputMBps} MB/s over the whole run with its baselines; ${t.epochsCommitted} epochs, ${(t.bytesHarvested / 1e6).toFixed(0)} MB); redis-benchmark SET ${ceiling.always.toFixed(0)} MB/s with fsync always, ${ceiling.everysec.toFixed(0)} MB/s with everysec; ratio ${ratioToRedisIngest.toFixed(3)} (target >= 200 MB/s); record CRC-32C: ${t.kafkaCrc32c}, kafkajs encoder: ${t.kafkaEncoder}`);
  say(`    CPU ${t.cpu.msPerMB} ms per MB harvested, ${t.cpu.cores} cores busy: harvesters' process ${t.cpu.harvestersMs} ms (of it the simulated guests ${t.cpu.simulatedGuestsMs ?? '?'} ms, the run's shadow images ${t.cpu.shadowImagesMs ?? '?'} ms), replicator ${t.cpu.replicatorsMs} ms, redis-server ${t.cpu.redisMs} ms, broker ${t.cpu.brokerMs} ms (a steadier figure than MB/s on a shared machine)${t.cpu.incomplete.length ? `; incomplete: ${t.cpu.incomplete.join('; ')}` : ''}`);
  say(`    the product's own CPU (without the simulated guests and shadow images): ${t.cpu.productMsPerMB ?? '?'} ms per MB; 200 MB/s on this machine's ${availableParallelism()} cores needs at most ${(availableParallelism() * 1000 / 200).toFixed(0)} ms per MB`);

  say('2/3 bytes on the wire for a zero-page-heavy guest (idle, 256 MiB)');
  const z = await runPipeline({ ...base, workload: 'idle', rate: 0, durationS: quick ? 2 : 4 });
  check(z, 'zero-page run');
  const raw = 256 * 1024 * 1024;
  const zeroPageWireRatio = z.bytesOnWire / raw;
  say(`    ${z.bytesOnWire} bytes on the wire for a ${raw}-byte guest over ${z.epochsCommitted} epochs: ${(zeroPageWireRatio * 100).toFixed(3)}% (target < 2%)`);

  const kvm = kvmAvailability().usable;
  say(`3/3 replication lag at 40 epochs/s, 1000 dirty pages per epoch (${kvm ? 'real KVM guest' : 'simulated guest: KVM is not usable here'})`);
  const l = await runPipeline({ ...base, source: kvm ? 'kvm' : 'sim', memMib: 256, workload: 'random', rate: 40_000, intervalMs: 25, durationS: quick ? 4 : 10 });
  check(l, 'lag run');
  const epochsPerS = l.epochsCommitted / l.durationS;
  const pagesPerEpoch = l.pagesShipped / Math.max(1, l.epochsCommitted);
  if (l.lagSamples === 0) say(`    no epoch was seen applied while the guest ran (${epochsPerS.toFixed(1)} epochs/s, ${pagesPerEpoch.toFixed(0)} pages per epoch): the pipeline falls behind, the lag is not measurable (target p99 < 100 ms)`);
  else say(`    lag p50 ${l.lagP50Ms} ms, p99 ${l.lagP99Ms} ms over ${l.lagSamples} epochs at ${epochsPerS.toFixed(1)} epochs/s (${l.steadyEpochsPerS} after the baseline), ${pagesPerEpoch.toFixed(0)} pages per epoch (target p99 < 100 ms)`);
  // The same cadence with a quarter of the pages (41 MB/s: about what this host sustains next to the KVM
  // guest) and a tenth (16 MB/s: the latency floor).
  const lighter = async (pages: number): Promise<{ r: PipelineResult; eps: number }> => {
    const r = await runPipeline({ ...base, source: kvm ? 'kvm' : 'sim', memMib: 256, workload: 'random', rate: pages * 40, intervalMs: 25, durationS: quick ? 4 : 10 });
    check(r, `lag run at ${pages} pages per epoch`);
    const eps = r.epochsCommitted / r.durationS;
    say(`    at ${pages} pages per epoch instead: lag p50 ${r.lagP50Ms} ms, p99 ${r.lagP99Ms} ms over ${r.lagSamples} epochs at ${eps.toFixed(1)} epochs/s over the run, ${r.steadyEpochsPerS} after the baseline`);
    return { r, eps };
  };
  const quarter = await lighter(250);
  const { r: light, eps: lightEps } = await lighter(100);

  if (json) {
    process.stdout.write(JSON.stringify({
      throughputMBps: t.steadyThroughputMBps, throughputWithBaselinesMBps: t.throughputMBps, redisIngestMBps: Number(ceiling.always.toFixed(1)), redisIngestEverysecMBps: Number(ceiling.everysec.toFixed(1)),
      ratioToRedisIngest: Number(ratioToRedisIngest.toFixed(3)), kafkaCrc32c: t.kafkaCrc32c, kafkaEncoder: t.kafkaEncoder,
      cpuMsPerMB: t.cpu.msPerMB, cpuCores: t.cpu.cores, cpuByProcessMs: { harvesters: t.cpu.harvestersMs, replicators: t.cpu.replicatorsMs, redis: t.cpu.redisMs, broker: t.cpu.brokerMs },
      cpuSimulatedGuestsMs: t.cpu.simulatedGuestsMs, cpuShadowImagesMs: t.cpu.shadowImagesMs, productCpuMsPerMB: t.cpu.productMsPerMB,
      zeroPageWireRatio: Number(zeroPageWireRatio.toFixed(5)), zeroPageBytesOnWire: z.bytesOnWire,
      lagP50Ms: l.lagSamples ? l.lagP50Ms : null, lagP99Ms: l.lagSamples ? l.lagP99Ms : null, lagSamples: l.lagSamples, lagSource: l.source, lagEpochsPerS: Number(epochsPerS.toFixed(1)), lagSteadyEpochsPerS: l.steadyEpochsPerS, lagPagesPerEpoch: Math.round(pagesPerEpoch),
      lagP99Ms100Pages: light.lagP99Ms, lagP50Ms100Pages: light.lagP50Ms, lagEpochsPerS100Pages: Number(lightEps.toFixed(1)), lagSteadyEpochsPerS100Pages: light.steadyEpochsPerS,
      lagP99Ms250Pages: quarter.r.lagSamples ? quarter.r.lagP99Ms : null, lagP50Ms250Pages: quarter.r.lagSamples ? quarter.r.lagP50Ms : null, lagSteadyEpochsPerS250Pages: quarter.r.steadyEpochsPerS,
    }) + '\n');
  }
}

main().catch((err: unknown) => {
  say(`bench:pipeline: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});
