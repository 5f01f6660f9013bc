/**
 * `npm run pipeline -- [options]`: harvester(s), Kafka, replicator(s) and Redis together; then checks
 * every VM's standby against the harvester's last committed epoch. Exit 0 when all match, 1 when any
 * does not, 2 on bad options.
 */
import { commandConfig, createLogger, errorMessage, jsonFailureLine, WORKLOADS, type Schema } from '@ckpt/common';
import { runPipeline } from './run-pipeline.ts';

const SCHEMA = {
  source: { type: 'enum', values: ['auto', 'kvm', 'sim'], default: 'auto', help: 'guest: real KVM, the simulator, or KVM when /dev/kvm is usable' },
  vms: { type: 'int', default: 1, min: 1, max: 64, help: 'guests checkpointed at once' },
  durationS: { type: 'number', default: 5, min: 0.5, max: 86_400, help: 'how long the guests run' },
  memMib: { type: 'int', default: 64, min: 8, max: 64 * 1024 * 1024, help: 'guest memory per VM in MiB' },
  vcpus: { type: 'int', default: 1, min: 1, max: 64, help: 'vCPUs per guest' },
  workload: { type: 'enum', values: WORKLOADS, default: 'random', help: 'guest write pattern' },
  rate: { type: 'int', default: 5000, min: 0, max: 100_000_000, help: 'dirty pages/s per vCPU (0 = as fast as possible)' },
  fill: { type: 'bool', default: false, help: 'guests fill written pages with incompressible data' },
  intervalMs: { type: 'int', default: 50, min: 1, max: 60_000, help: 'epoch interval' },
  compression: { type: 'enum', values: ['none', 'gzip'], default: 'none', help: 'compression of page batches' },
  maxRecordBytes: { type: 'int', default: 1_000_000, min: 16384, max: 64 << 20, help: 'largest record on the pages topic' },
  maxRequestBytes: { type: 'int', default: -1, min: -1, max: 64 << 20, help: 'record bytes of one VM per produce request (-1: 1 000 000; the embedded broker can lose a record batch much above 1 MiB)' },
  windowBytes: { type: 'int', default: -1, min: -1, help: 'cap on bytes produced but not yet applied, per VM (-1: against the embedded broker about 4 MiB per partition, split between its VMs; off against a real one; 0: off)' },
  replicators: { type: 'int', default: 1, min: 1, max: 16, help: 'replicator processes in one consumer group' },
  drainTimeoutS: { type: 'number', default: 60, min: 1, help: 'how long to wait for the replicators to apply the last epochs' },
  json: { type: 'bool', default: false, help: 'print one JSON object as the last line' },
} as const satisfies Schema;

const USAGE = `usage: npm run pipeline -- [options]

Runs harvester(s), the Kafka broker (embedded unless KAFKA_BROKERS is set), replicator(s) and Redis
(embedded unless REDIS_URL is set), stops the guests, waits for the replicators to drain, and checks
each standby image against the harvester's last committed epoch. Exit code 0 only when all match.`;

async function main(): Promise<number> {
  const cfg = commandConfig('pipeline', SCHEMA, USAGE, process.argv.slice(2));
  if (typeof cfg === 'number') return cfg;
  const log = createLogger({ service: 'pipeline' }, { defaultLevel: 'warn' });
  const say = (s: string): void => void process.stderr.write(s + '\n');
  const r = await runPipeline({
    ...cfg, windowBytes: cfg.windowBytes < 0 ? undefined : cfg.windowBytes, maxRequestBytes: cfg.maxRequestBytes < 0 ? undefined : cfg.maxRequestBytes, log,
    onPhase: (p) => say(`pipeline: ${p}`),
  });
  say(`pipeline: source ${r.source}${r.sourceNote ? ` (${r.sourceNote})` : ''}, ${r.vms} VM(s), ${r.durationS} s`);
  say(`  epochs committed ${r.epochsCommitted} (${r.steadyEpochsPerS} per second per VM after the baseline), applied ${r.epochsApplied}, new generations ${r.resyncs}`);
  say(`  pages shipped ${r.pagesShipped}, page data ${(r.bytesHarvested / 1e6).toFixed(1)} MB, on the wire ${(r.bytesOnWire / 1e6).toFixed(1)} MB, ${r.throughputMBps} MB/s`);
  const c = r.cpu;
  const runOwn = [c.simulatedGuestsMs === null ? '' : `the simulated guests ${c.simulatedGuestsMs} ms`, c.shadowImagesMs === null ? '' : `the shadow images ${c.shadowImagesMs} ms`].filter(Boolean);
  const product = c.productMsPerMB === null ? '' : `; the product's own ${c.productMsPerMB} ms per MB`;
  say(`  CPU ${c.msPerMB} ms per MB (${c.cores} cores${product}): harvesters ${c.harvestersMs} ms${runOwn.length ? ` (of it ${runOwn.join(', ')})` : ''}, replicators ${c.replicatorsMs} ms, Redis ${c.redisMs ?? 'not measured (REDIS_URL)'}${c.redisMs === null ? '' : ' ms'}, broker ${c.brokerMs ?? 'not measured (KAFKA_BROKERS)'}${c.brokerMs === null ? '' : ' ms'}${c.incomplete.length ? ` (incomplete: ${c.incomplete.join('; ')})` : ''}`);
  say(r.lagSamples > 0
    ? `  replication lag p50 ${r.lagP50Ms} ms, p99 ${r.lagP99Ms} ms over ${r.lagSamples} epochs`
    : '  replication lag not measurable: no epoch was seen applied while the guests ran');
  for (const c of r.checks) say(`  ${c.vm}: ${c.matches ? 'standby matches' : 'MISMATCH'} epoch ${c.generation}/${c.epoch}, digest ${c.digest}, ${c.pagesCompared} pages compared${c.problems.length ? ': ' + c.problems.join('; ') : ''}`);
  say(r.standbyMatches ? 'pipeline: every standby equals its last committed epoch' : 'pipeline: FAILED: a standby differs from its last committed epoch');
  if (cfg.json) {
    const { checks, ...rest } = r;
    const lag = r.lagSamples > 0 ? {} : { lagP50Ms: null, lagP99Ms: null }; // not measured is not 0 ms
    process.stdout.write(JSON.stringify({ ...rest, ...lag, checks: checks.map((c) => ({ vm: c.vm, matches: c.matches, generation: c.generation, epoch: c.epoch, problems: c.problems })) }) + '\n');
  }
  return r.standbyMatches ? 0 : 1;
}

main().then((code) => { process.exitCode = code; }, (err: unknown) => {
  process.stderr.write(`pipeline: ${errorMessage(err)}\n`);
  process.exitCode = 1;
  // With --json the last stdout line is still one JSON object: what failed, instead of the result.
  if (process.argv.includes('--json')) {
    process.stdout.write(jsonFailureLine(err, 'CKPT_ERR_PIPELINE_FAILED', { standbyMatches: false }));
  }
});
