/**
 * `npm run harvest -- [options]`: runs a guest and cuts checkpoint epochs locally (no Kafka), with
 * optional verification against guest memory. See --help.
 */
import { ConfigError, CkptError, createLogger, helpText, jsonFailureLine, parseConfig, startCommandMetricsServer, wantsHelp, type MetricsServer } from '@ckpt/common';
import { HARVEST_CLI_SCHEMA, type HarvestCliConfig } from '../harvest-config.ts';
import { runHarvest, type HarvestSummary } from '../harvest-loop.ts';
import { createHarvesterMetrics } from '../metrics.ts';
import { openSource } from '../sources/open-source.ts';
import { SimSource } from '../sources/sim/sim-source.ts';

const USAGE = 'Usage: npm run harvest -- [options]\n\nRuns a guest (real KVM or the simulator) and cuts checkpoint epochs locally.\nExit code: 0 ok, 1 verification mismatch or failure, 2 bad usage.';

function human(s: HarvestSummary, cfg: HarvestCliConfig, fallback?: string): string {
  const lines = [
    `source      ${s.source} (${s.mode}${s.mode === 'ring' ? `, ${cfg.ringEntries} entries/vCPU` : ''})${fallback ? `: simulator because ${fallback}` : ''}`,
    `guest       ${s.memBytes / 1048576} MiB, ${s.vcpus} vCPU, workload ${cfg.workload} at ${cfg.rate || 'max'} pages/s/vCPU`,
    `epochs      ${s.epochs} (baseline + ${Math.max(0, s.epochs - 1)}) every ${cfg.intervalMs} ms`,
    `harvested   ${s.pagesHarvested} pages (${s.zeroPages} zero), ${(s.bytesHarvested / 1048576).toFixed(1)} MiB of data`,
    `pause       p50 ${s.pauseP50Us} us, p99 ${s.pauseP99Us} us, max ${s.pauseMaxUs} us`,
    `ring        ${s.ringFullExits} ring-full exits, ${s.ringReliefs} live reliefs, ${s.invalidEntries} invalid entries dropped, reset counts ${s.resetCountsMatch ? 'match' : 'DIFFER'}`,
    `continuity  generation ${s.generation}, ${s.resyncs} resyncs, ${s.ringEntriesLost} ring entries lost by the kernel`,
    `digest      ${s.lastDigest}`,
  ];
  if (s.verified) lines.push(`verify      ${s.mismatches === 0 ? 'OK: shadow equals guest memory at every epoch' : `FAILED: ${s.mismatches} mismatches (${s.missedWrites} missed writes, ${s.digestMismatches} digest mismatches)`}`);
  return lines.join('\n');
}

async function main(argv: string[]): Promise<number> {
  if (wantsHelp(argv)) {
    process.stdout.write(helpText(HARVEST_CLI_SCHEMA, USAGE) + '\n');
    return 0;
  }
  const cfg = parseConfig(HARVEST_CLI_SCHEMA, { argv });
  if (cfg.unsafeCopyBeforeResetMs > 0 && cfg.precopyRounds === 0) {
    throw new ConfigError(['--unsafe-copy-before-reset-ms needs --precopy-rounds >= 1 (the wrong order only exists in live rounds)']);
  }
  const log = createLogger({ service: 'harvester', component: 'cli' });
  const { source, fallbackReason } = openSource(cfg);
  if (cfg.injectHostile > 0 && !(source instanceof SimSource)) {
    source.close();
    throw new ConfigError(['--inject-hostile needs the simulator (--source sim): the kernel\'s rings cannot be written safely']);
  }
  const metrics = createHarvesterMetrics();
  let server: MetricsServer | undefined;
  const abort = new AbortController();
  const onSignal = (): void => abort.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    if (cfg.metricsPort >= 0) {
      server = await startCommandMetricsServer('CKPT_ERR_HARVEST_METRICS_PORT', metrics.registry, cfg.metricsPort);
      log.info('metrics listening', { port: server.port });
    }
    const summary = await runHarvest(source, {
      epochs: cfg.epochs,
      intervalMs: cfg.intervalMs,
      verify: cfg.verify,
      metrics,
      logger: log,
      signal: abort.signal,
      cycle: {
        precopyRounds: cfg.precopyRounds,
        precopyAboveEntries: cfg.precopyAboveEntries,
        ...(cfg.unsafeCopyBeforeResetMs > 0 ? { unsafeCopyBeforeReset: { delayMs: cfg.unsafeCopyBeforeResetMs } } : {}),
      },
      beforeEpoch: (epoch) => {
        if (cfg.injectHostile > 0 && epoch > 0 && source instanceof SimSource) {
          const kinds = ['slot', 'as-id', 'offset', 'flags'] as const;
          for (let i = 0; i < cfg.injectHostile; i++) source.injectHostile(i % source.vcpuCount, kinds[i % kinds.length]!);
        }
      },
    });
    process.stderr.write(human(summary, cfg, fallbackReason) + '\n');
    if (cfg.json) {
      process.stdout.write(JSON.stringify({ ...summary, fallbackReason: fallbackReason ?? null, workload: cfg.workload, intervalMs: cfg.intervalMs }) + '\n');
    }
    if (summary.vcpuError) return 1;
    // After a kernel ring overrun the counts cannot agree (the helper re-synced the ring); that case is
    // reported as lost entries and handled by a new generation.
    if (!summary.resetCountsMatch && summary.ringEntriesLost === 0) return 1;
    return summary.mismatches > 0 ? 1 : 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    source.close();
    await server?.close();
  }
}

const argv = process.argv.slice(2);
main(argv).then(
  (code) => { process.exitCode = code; },
  (err: unknown) => {
    if (err instanceof ConfigError) {
      process.stderr.write(`harvest: ${err.message}\n(npm run harvest -- --help lists the options)\n`);
      process.exitCode = 2;
    } else if (err instanceof CkptError) {
      process.stderr.write(`harvest: ${err.message} [${err.code}]\n`);
      process.exitCode = 1;
    } else {
      process.stderr.write(`harvest: unexpected failure: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exitCode = 1;
    }
    // With --json the last stdout line is still one JSON object: what failed, instead of the summary.
    if (argv.includes('--json') || argv.includes('--json=true')) {
      process.stdout.write(jsonFailureLine(err, 'CKPT_ERR_HARVEST_UNEXPECTED'));
    }
  },
);
