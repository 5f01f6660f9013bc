/**
 * The Prometheus rules: the committed ones pass every check (schema, promtool check, promtool unit
 * tests, known metrics, annotations, runbook sections), every alert is unit-tested firing and not
 * firing, and each kind of mistake is reported, shown on edited copies in temp dirs.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cp, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { validateAlertRules } from '../src/alert-rules.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const PROMETHEUS = join(ROOT, 'deploy/prometheus');
const RUNBOOK = join(ROOT, 'docs/alerts.md');
/** 22 alerts and 1 recording rule; a new rule changes this number on purpose. */
const RULES = 26;

type Json = Record<string, unknown>;
const list = (v: unknown): Json[] => (Array.isArray(v) ? (v as Json[]) : []);

/** An editable copy of deploy/prometheus and docs/alerts.md in a temp dir. */
interface Copy {
  prometheusDir: string;
  runbookFile: string;
  /** Replaces `from` (which must occur) in a file of the copy (path relative to deploy/prometheus, or 'runbook'). */
  edit(file: string, from: string, to: string): Promise<void>;
}

async function withCopy(fn: (c: Copy) => Promise<void>): Promise<void> {
  const tmp = await mkdtemp(join(tmpdir(), 'ckpt-alert-rules-test-'));
  try {
    const prometheusDir = join(tmp, 'prometheus');
    const runbookFile = join(tmp, 'alerts.md');
    await cp(PROMETHEUS, prometheusDir, { recursive: true });
    await cp(RUNBOOK, runbookFile);
    const edit = async (file: string, from: string, to: string): Promise<void> => {
      const path = file === 'runbook' ? runbookFile : join(prometheusDir, file);
      const text = await readFile(path, 'utf8');
      assert.ok(text.includes(from), `${file} does not contain ${JSON.stringify(from)}`);
      await writeFile(path, text.replace(from, to));
    };
    await fn({ prometheusDir, runbookFile, edit });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

test('promtool is installed (CI installs it with scripts/setup.sh)', () => {
  const r = spawnSync('promtool', ['--version'], { encoding: 'utf8' });
  assert.ok(!r.error, 'promtool is not installed: run `npm run setup` as root (or `bash scripts/setup.sh`); without it the rules are not checked');
  assert.match(r.stdout + r.stderr, /promtool, version \d+\.\d+/);
});

test('the committed rules: schema, promtool check and unit tests pass, only known metrics, every rule counted', async () => {
  const r = await validateAlertRules();
  assert.deepEqual(r.invalid, []);
  assert.deepEqual(r.unknownMetricRefs, []);
  assert.equal(r.count, RULES);
});

test('every alert is expected firing by a unit test and not firing by another', async () => {
  const alerts: string[] = [];
  for (const f of await readdir(join(PROMETHEUS, 'rules'))) {
    const doc = parse(await readFile(join(PROMETHEUS, 'rules', f), 'utf8')) as { spec: { groups: Json[] } };
    for (const g of doc.spec.groups) for (const r of list(g.rules)) if (typeof r.alert === 'string') alerts.push(r.alert);
  }
  const firing = new Set<string>();
  const quiet = new Set<string>();
  for (const f of await readdir(join(PROMETHEUS, 'tests'))) {
    const doc = parse(await readFile(join(PROMETHEUS, 'tests', f), 'utf8')) as Json;
    for (const t of list(doc.tests)) {
      for (const a of list(t.alert_rule_test)) (list(a.exp_alerts).length ? firing : quiet).add(String(a.alertname));
    }
  }
  assert.equal(alerts.length, RULES - 1);
  assert.deepEqual(alerts.filter((a) => !firing.has(a)), [], 'alerts no unit test expects firing');
  assert.deepEqual(alerts.filter((a) => !quiet.has(a)), [], 'alerts no unit test expects not firing');
});

test('a syntax error in an expression is reported by promtool check rules (and the PromQL parser)', async () => {
  await withCopy(async (c) => {
    await c.edit('rules/ckpt-replication.yaml', 'expr: min by (vm) (ckpt_replicator_standby_age_seconds) > 10', 'expr: min by (vm) (ckpt_replicator_standby_age_seconds > 10');
    const r = await validateAlertRules(c);
    const promtool = r.invalid.find((l) => l.includes('ckpt-replication.yaml: promtool check rules fails'));
    assert.ok(promtool, r.invalid.join('\n'));
    assert.match(promtool, /ckpt-replication\.yaml \(its spec\.groups\)/, 'promtool output names the PrometheusRule, not the temp file');
    assert.match(promtool, /parse error|unclosed|unexpected/i);
    assert.ok(r.invalid.some((l) => l.includes('ckpt-replication/CkptRpoBreached: PromQL does not parse')), r.invalid.join('\n'));
  });
});

test('a metric no service defines is reported', async () => {
  await withCopy(async (c) => {
    await c.edit('rules/ckpt-harvester.yaml', 'rate(ckpt_harvester_ring_full_exits_total[5m])', 'rate(ckpt_harvester_ring_full_exit_total[5m])');
    const r = await validateAlertRules(c);
    assert.deepEqual(r.unknownMetricRefs, [`${join(c.prometheusDir, 'rules/ckpt-harvester.yaml')}: ckpt-harvester/CkptRingFullStorm: ckpt_harvester_ring_full_exit_total`]);
  });
});

test('a selector on a label its metric does not carry is reported (such an alert can never fire)', async () => {
  await withCopy(async (c) => {
    await c.edit('rules/ckpt-harvester.yaml', 'rate(ckpt_harvester_ring_full_exits_total[5m])', 'rate(ckpt_harvester_ring_full_exits_total{vm_id="a"}[5m])');
    const r = await validateAlertRules(c);
    assert.deepEqual(r.unknownMetricRefs, []);
    assert.ok(r.invalid.some((m) => /ckpt-harvester\/CkptRingFullStorm: ckpt_harvester_ring_full_exits_total has no label vm_id \(it has .*\bvm\b/.test(m)), r.invalid.join('\n'));
  });
});

test('a unit test expecting the wrong thing fails in promtool test rules', async () => {
  await withCopy(async (c) => {
    // The RPO alert fires for vm-a at 5m; expect it for vm-b instead.
    await c.edit('tests/ckpt-replication-test.yaml', '              severity: critical\n              vm: vm-a', '              severity: critical\n              vm: vm-b');
    const r = await validateAlertRules(c);
    const failed = r.invalid.find((l) => l.includes('ckpt-replication-test.yaml: promtool test rules fails'));
    assert.ok(failed, r.invalid.join('\n'));
    assert.match(failed, /FAILED/);
    assert.match(failed, /alertname: CkptRpoBreached, time: 5m/);
    assert.equal(r.invalid.length, 1, r.invalid.join('\n'));
  });
});

test('an alert without unit tests, severity, annotations or runbook section is reported', async () => {
  await withCopy(async (c) => {
    await c.edit('rules/ckpt-services.yaml', '        - alert: CkptHarvesterAbsent', `        - alert: CkptNewAndUntested
          expr: up{job="ckpt-harvester"} == 2
          labels:
            severity: page
          annotations:
            summary: "untested"
            runbook: docs/alerts.md#nowhere
        - alert: CkptHarvesterAbsent`);
    await c.edit('runbook', '## CkptProduceErrors', '## CkptProduceErrorz');
    const r = await validateAlertRules(c);
    const where = `${join(c.prometheusDir, 'rules/ckpt-services.yaml')}: ckpt-services/CkptNewAndUntested`;
    for (const expected of [
      `${where}: label severity is page; use one of critical, warning`,
      `${where}: has no description annotation`,
      `${where}: annotation runbook is "docs/alerts.md#nowhere"; use "docs/alerts.md#ckptnewanduntested" and a section "## CkptNewAndUntested" in docs/alerts.md`,
      `${where}: no unit test in tests/ expects it firing (an exp_alerts entry)`,
      `${where}: no unit test in tests/ expects it not firing (exp_alerts: [])`,
      `${join(c.prometheusDir, 'rules/ckpt-harvester.yaml')}: ckpt-harvester/CkptProduceErrors: ${c.runbookFile} has no section "## CkptProduceErrors" (what it means, likely causes, what to do)`,
      `${c.runbookFile}: section "CkptProduceErrorz" names no alert in the rules; remove or rename it`,
    ]) assert.ok(r.invalid.includes(expected), `missing: ${expected}\ngot:\n${r.invalid.join('\n')}`);
    assert.equal(r.count, RULES + 1);
  });
});

test('a PrometheusRule that breaks the operator schema, sets a namespace or is not listed in the kustomization is reported', async () => {
  await withCopy(async (c) => {
    await c.edit('rules/ckpt-harvester.yaml', 'for: 15m', 'for: 15 minutes');
    await c.edit('rules/ckpt-services.yaml', '  name: ckpt-services\n', '  name: ckpt-services\n  namespace: monitoring\n');
    await c.edit('kustomization.yaml', '  - rules/ckpt-services.yaml\n', '');
    const r = await validateAlertRules(c);
    const harvester = join(c.prometheusDir, 'rules/ckpt-harvester.yaml');
    assert.ok(r.invalid.some((l) => l.startsWith(`${harvester}: does not match the PrometheusRule schema:`) && l.includes('/for must match pattern')), r.invalid.join('\n'));
    // Its unit tests cannot run against it, and say why.
    assert.ok(r.invalid.includes(`${join(c.prometheusDir, 'tests/ckpt-harvester-test.yaml')}: not run: ${harvester} is not a valid PrometheusRule (see above)`), r.invalid.join('\n'));
    assert.ok(r.invalid.includes(`${join(c.prometheusDir, 'rules/ckpt-services.yaml')}: sets namespace monitoring; leave it to the overlays`), r.invalid.join('\n'));
    assert.ok(r.invalid.includes(`${join(c.prometheusDir, 'kustomization.yaml')}: resources do not list rules/ckpt-services.yaml`), r.invalid.join('\n'));
  });
});

test('a unit test naming a rule file that is not a PrometheusRule of rules/ is reported', async () => {
  await withCopy(async (c) => {
    await c.edit('tests/ckpt-services-test.yaml', '  - ../rules/ckpt-services.yaml', '  - ../rules/services.rules.yaml');
    const r = await validateAlertRules(c);
    assert.ok(r.invalid.some((l) => l.startsWith(`${join(c.prometheusDir, 'tests/ckpt-services-test.yaml')}: rule_files names ../rules/services.rules.yaml, which is not a PrometheusRule file in rules/`)), r.invalid.join('\n'));
  });
});

test('a missing promtool is an invalid line saying how to install it, not an exception or a pass', async () => {
  const r = await validateAlertRules({ promtool: '/nonexistent/promtool' });
  assert.equal(r.invalid.length, 1, r.invalid.join('\n'));
  assert.match(r.invalid[0]!, /promtool is not installed: run `npm run setup` as root \(or `bash scripts\/setup\.sh`\)/);
  assert.equal(r.count, RULES);
});
