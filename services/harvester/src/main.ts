/**
 * The harvester as a long-running service: configuration from HARVESTER_* environment variables
 * (same schema as `npm run harvest`), metrics on HARVESTER_METRICS_PORT (default 9464), epochs cut until
 * SIGTERM/SIGINT. Publishing epochs to Kafka arrives with the replication issue; until then the
 * service checkpoints locally (and verifies, with HARVESTER_VERIFY=true).
 */
import { ConfigError, CkptError, createLogger, helpText, parseConfig, startMetricsServer, wantsHelp } from '@ckpt/common';
import { HARVEST_SCHEMA } from './harvest-config.ts';
import { runHarvest } from './harvest-loop.ts';
import { createHarvesterMetrics } from './metrics.ts';
import { openSource } from './sources/open-source.ts';

const SERVICE_SCHEMA = {
  ...HARVEST_SCHEMA,
  epochs: { ...HARVEST_SCHEMA.epochs, default: 0 },
  metricsPort: { ...HARVEST_SCHEMA.metricsPort, default: 9464 },
} as const;

async function main(): Promise<number> {
  if (wantsHelp(process.argv.slice(2))) {
    process.stdout.write(helpText(SERVICE_SCHEMA, 'Usage: node --import tsx services/harvester/src/main.ts\n\nConfigured by environment variables:', 'HARVESTER_') + '\n');
    return 0;
  }
  const cfg = parseConfig(SERVICE_SCHEMA, { env: process.env, envPrefix: 'HARVESTER_' });
  const log = createLogger({ service: 'harvester' });
  const metrics = createHarvesterMetrics({ defaultMetrics: true });
  const { source, fallbackReason } = openSource(cfg);
  if (fallbackReason) log.warn('using the simulator', { component: 'source', reason: fallbackReason });
  const abort = new AbortController();
  let ready = false;
  const server = await startMetricsServer(metrics.registry, cfg.metricsPort, () => (ready ? null : 'guest not started'));
  log.info('started', { component: 'main', source: source.kind, mode: source.mode, metricsPort: server.port });
  const stop = (signal: string): void => {
    log.info('stopping', { component: 'main', signal });
    abort.abort();
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  try {
    ready = true;
    const summary = await runHarvest(source, {
      epochs: cfg.epochs, intervalMs: cfg.intervalMs, verify: cfg.verify, metrics, logger: log.child({ component: 'harvest' }),
      signal: abort.signal, cycle: { precopyRounds: cfg.precopyRounds },
    });
    log.info('stopped', { component: 'main', ...summary });
    return summary.mismatches > 0 || summary.vcpuError ? 1 : 0;
  } finally {
    source.close();
    await server.close();
  }
}

main().then(
  (code) => { process.exitCode = code; },
  (err: unknown) => {
    const log = createLogger({ service: 'harvester', component: 'main' });
    log.error(err instanceof ConfigError || err instanceof CkptError ? err.message : 'unexpected failure', { err });
    process.exitCode = err instanceof ConfigError ? 2 : 1;
  },
);
