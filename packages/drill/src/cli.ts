/**
 * `npm run drill -- [options]`: the failover rehearsal (see drill.ts). Prints progress and a report on
 * stderr; with --json the last line on stdout is one JSON object. Exit 0 only when every scenario
 * verified, 1 otherwise, 2 on bad options, 130 on Ctrl-C and 143 on SIGTERM (after cleaning up).
 */
import { commandConfig, createLogger, type Schema } from '@ckpt/common';
import { runDrill, running, SCENARIOS, type ScenarioName } from './drill.ts';

const SCHEMA = {
  scenario: { type: 'enum', values: [...SCENARIOS, 'all'], default: 'primary-crash', help: 'what happens before the primary is killed: primary-crash (nothing), replicator-crash, redis-restart (on its AOF), redis-data-loss (restarted empty), broker-outage, or all in turn' },
  source: { type: 'enum', values: ['auto', 'kvm', 'sim'], default: 'auto', help: 'primary guest: real KVM, the simulator, or KVM when /dev/kvm is usable' },
  memMib: { type: 'int', default: 64, min: 8, max: 65536, help: 'guest memory in MiB' },
  vcpus: { type: 'int', default: 2, min: 1, max: 16, help: 'guest vCPUs' },
  rate: { type: 'int', default: 2000, min: 0, max: 1_000_000, help: 'guest dirty pages/s per vCPU' },
  intervalMs: { type: 'int', default: 25, min: 5, max: 10_000, help: 'epoch interval' },
  runS: { type: 'number', default: 4, min: 0.5, max: 3600, help: 'the primary is killed between runS/2 and runS after its baseline (and injury)' },
  seed: { type: 'int', default: 0, min: 0, help: 'random seed of the moments and the workload (0: from the clock)' },
  json: { type: 'bool', default: false, help: 'print one JSON object as the last line' },
} as const satisfies Schema;

const USAGE = `usage: npm run drill -- [options]

Fails over a running guest and proves nothing committed was lost. Starts the Kafka broker and Redis
(embedded, unless KAFKA_BROKERS / REDIS_URL are set), a replicator, and a primary guest with its
harvester; kills the primary (-9) at a random moment; restores the standby from Redis, resumes it on a
fresh KVM VM, and checks every byte against the last committed epoch. Reports RPO and RTO.`;

/** How long Ctrl-C waits for the scenario's clean-up before exiting anyway. */
const CLEANUP_DEADLINE_MS = 20_000;

async function main(): Promise<number> {
  // Scenarios that restart a server need the embedded one: a bad option, found before anything starts.
  const cfg = commandConfig('drill', SCHEMA, USAGE, process.argv.slice(2), (c) => {
    const wants = (s: string): boolean => c.scenario === s || c.scenario === 'all';
    return [
      ...((wants('redis-restart') || wants('redis-data-loss')) && process.env.REDIS_URL ? [`--scenario ${c.scenario} restarts Redis: it needs the embedded redis-server (unset REDIS_URL)`] : []),
      ...(wants('broker-outage') && process.env.KAFKA_BROKERS ? [`--scenario ${c.scenario} stops the broker: it needs the embedded one (unset KAFKA_BROKERS)`] : []),
    ];
  });
  if (typeof cfg === 'number') return cfg;
  const say = (s: string): void => void process.stderr.write(s + '\n');
  let interrupted = false;
  const onSignal = (sig: 'SIGINT' | 'SIGTERM'): void => {
    const code = sig === 'SIGINT' ? 130 : 143; // 128 + the signal's number, as a shell reports it
    // A second Ctrl-C, or a clean-up that hangs, still ends the drill (the servers it started were
    // killed at the first signal by the child registry; a clean-up cut short can leave a data directory).
    if (interrupted) {
      say(`drill: ${sig} again: exiting without finishing the clean-up`);
      process.exit(code);
    }
    interrupted = true;
    say(`drill: ${sig}: stopping and cleaning up (again to exit at once)`);
    const deadline = setTimeout(() => {
      say(`drill: the clean-up took more than ${CLEANUP_DEADLINE_MS / 1000} s: exiting without it`);
      process.exit(code);
    }, CLEANUP_DEADLINE_MS);
    deadline.unref();
    void Promise.all([...running].map((c) => c().catch(() => undefined))).finally(() => process.exit(code));
  };
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  const t0 = Date.now();
  const scenarios: ScenarioName[] = cfg.scenario === 'all' ? [...SCENARIOS] : [cfg.scenario];
  const r = await runDrill({
    ...cfg, scenarios, seed: cfg.seed || Date.now(),
    log: createLogger({ service: 'drill' }, { defaultLevel: 'warn' }),
    onPhase: (s, p) => say(`drill [${((Date.now() - t0) / 1000).toFixed(1).padStart(5)} s] ${s}: ${p}`),
  });
  say('');
  say(`drill report: primary guest on ${r.source === 'kvm' ? 'real KVM' : 'the simulator'}${r.sourceNote ? ` (${r.sourceNote})` : ''}, ${cfg.memMib} MiB, ${cfg.vcpus} vCPU, ${cfg.intervalMs} ms epochs`);
  for (const s of r.scenarios) {
    say(`  ${s.verified ? 'PASS' : 'FAIL'} ${s.name}${s.injury !== 'none' ? ` (injury: ${s.injury})` : ''}`);
    say(s.restoredEpoch
      ? `       restored epoch ${s.restoredEpoch} = last committed ${s.lastCommittedEpoch || '-'}; ${s.pagesCompared} pages compared with the witness; ${s.epochsCommitted} epochs committed`
      : `       nothing restored (last committed epoch ${s.lastCommittedEpoch || 'unknown'}; ${s.epochsCommitted} epochs committed)`);
    const v = (x: number | null, unit: string): string => (x === null ? '-' : `${x} ${unit}`);
    say(`       RPO ${v(s.rpoMs, 'ms')} (${v(s.rpoEpochs, 'epochs')})  RTO ${v(s.rtoMs, 'ms')}  restore ${v(s.restoreMBps, 'MB/s')}  resumed: ${s.resumed ? 'yes' : 'no'} (${s.resumeDetail || '-'})`);
    if (s.injury !== 'none') say(`       recovery from the injury: ${v(s.recoveryMs, 'ms')} until the standby held an epoch paused after it ended`);
    for (const p of s.problems) say(`       problem: ${p}`);
  }
  say(r.verified ? 'drill: every scenario verified' : 'drill: FAILED');
  if (cfg.json) process.stdout.write(JSON.stringify(r) + '\n');
  return r.verified ? 0 : 1;
}

main().then((code) => { process.exitCode = code; }, (err: unknown) => {
  process.stderr.write(`drill: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
