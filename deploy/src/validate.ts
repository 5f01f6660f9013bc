/**
 * `npm run -s validate:deploy [-- --json]`: checks everything under deploy/ offline, without a
 * cluster: Kubernetes manifests (every overlay rendered and validated against the Kubernetes,
 * prometheus-operator and Strimzi schemas, env vars against each service's config schema, images and
 * ports), Grafana dashboards (PromQL parses, only known metrics, JSON up to date with the code),
 * Prometheus rules (promtool check + unit tests, only known metrics), the Dockerfiles, and
 * docs/metrics.md against the code. Exit 0 when all is valid, 1 otherwise, 2 on bad options.
 * With --json the last line is one JSON object: manifests, dashboards, alertRules, dockerfiles,
 * metrics, unknownMetricRefs, invalid, problems.
 */
import { commandConfig } from '@ckpt/common';
import { validateAlertRules } from './alert-rules.ts';
import type { CheckResult } from './check-result.ts';
import { validateDashboards } from './dashboards.ts';
import { validateDockerfiles } from './dockerfiles.ts';
import { validateManifests } from './manifests.ts';
import { validateMetricsDoc } from './metrics-doc.ts';

const USAGE = `usage: npm run -s validate:deploy [-- --json]

Validates deploy/ offline: Kubernetes manifests, Grafana dashboards, Prometheus rules (needs promtool:
npm run setup installs it), Dockerfiles, and docs/metrics.md against the services' metrics.`;

async function main(): Promise<number> {
  const cfg = commandConfig('validate:deploy', { json: { type: 'bool', default: false, help: 'print one JSON object as the last line' } }, USAGE, process.argv.slice(2));
  if (typeof cfg === 'number') return cfg;
  const checks: [string, () => Promise<CheckResult> | CheckResult][] = [
    ['manifests', validateManifests],
    ['dashboards', () => validateDashboards()],
    ['alertRules', () => validateAlertRules()],
    ['dockerfiles', () => validateDockerfiles()],
    ['metrics', () => validateMetricsDoc()],
  ];
  const counts: Record<string, number> = {};
  const problems: string[] = [];
  const unknown: string[] = [];
  for (const [name, check] of checks) {
    let r: CheckResult;
    try {
      r = await check();
    } catch (err) {
      r = { count: 0, invalid: [`${name}: the check itself failed: ${(err as Error).stack ?? String(err)}`], unknownMetricRefs: [] };
    }
    counts[name] = r.count;
    problems.push(...r.invalid);
    unknown.push(...r.unknownMetricRefs);
    const bad = r.invalid.length + r.unknownMetricRefs.length;
    process.stderr.write(`${bad ? 'FAIL' : 'ok  '} ${name.padEnd(12)} ${String(r.count).padStart(4)} checked${bad ? `, ${r.invalid.length} invalid, ${r.unknownMetricRefs.length} unknown metric refs` : ''}\n`);
    for (const p of r.invalid) process.stderr.write(`       invalid: ${p}\n`);
    for (const u of r.unknownMetricRefs) process.stderr.write(`       unknown metric: ${u}\n`);
  }
  if (cfg.json) {
    process.stdout.write(JSON.stringify({ ...counts, unknownMetricRefs: unknown.length, invalid: problems.length, problems: [...problems, ...unknown.map((u) => `unknown metric: ${u}`)] }) + '\n');
  }
  return problems.length || unknown.length ? 1 : 0;
}

main().then((code) => { process.exitCode = code; }, (err: unknown) => {
  process.stderr.write(`validate:deploy: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
