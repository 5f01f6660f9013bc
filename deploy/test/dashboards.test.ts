/**
 * The Grafana dashboards: the committed JSON is valid and up to date, every query is sound PromQL on
 * known metrics, and the validator catches each kind of broken dashboard (on a temporary copy of
 * deploy/grafana, never on the committed files).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { cp, mkdtemp, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { PAUSE_P99_BUDGET_SECONDS, PAUSE_P99_WATCH_SECONDS } from '../grafana/src/alert-thresholds.ts';
import { DASHBOARDS, renderDashboard, renderKustomization } from '../grafana/src/catalog.ts';
import { AT_RISK_VMS, FRESH_STANDBY_SECONDS, VM_SERIES } from '../grafana/src/standby-queries.ts';
import { VM } from '../grafana/src/vm-dashboard.ts';
import { dashboardPanels, dashboardQueries, validateDashboards, variableQueryExpr } from '../src/dashboards.ts';
import { knownMetrics } from '../src/known-metrics.ts';
import { parsePromQL, substituteGrafanaVariables } from '../src/promql.ts';

const GRAFANA_DIR = fileURLToPath(new URL('../grafana/', import.meta.url));
const RULES_DIR = fileURLToPath(new URL('../prometheus/rules/', import.meta.url));

/** The `expr` of one alert of a committed PrometheusRule file. */
async function alertExpr(file: string, alert: string): Promise<string> {
  const rule = parseYaml(await readFile(join(RULES_DIR, file), 'utf8')) as { spec: { groups: { rules: { alert?: string; expr: string }[] }[] } };
  const found = rule.spec.groups.flatMap((g) => g.rules).find((r) => r.alert === alert);
  assert.ok(found, `${file} has no alert ${alert}`);
  return found.expr.trim();
}

/** The parts of Grafana's dashboard JSON these tests read. */
interface TargetJson { refId: string; expr: string; format?: string; datasource?: unknown }
interface PanelJson {
  id: number;
  type: string;
  title: string;
  description?: string;
  datasource?: unknown;
  targets: TargetJson[];
  options: { legend?: { showLegend: boolean }; yAxis?: { unit?: string }; calculate?: boolean };
  fieldConfig: { defaults: { unit?: string; thresholds?: { steps: { color: string; value: number | null }[] } } };
}
interface VariableJson { name: string; type: string; query: unknown; datasource?: unknown }
interface DashboardJson { uid: string; tags: string[]; refresh: string; templating: { list: VariableJson[] }; panels: PanelJson[] }
interface KustomizationJson {
  namespace?: string;
  configMapGenerator: { name: string; files: string[]; options: { labels?: Record<string, string>; disableNameSuffixHash?: boolean } }[];
}

const panelsOf = (dashboard: DashboardJson): PanelJson[] => dashboardPanels(dashboard) as unknown as PanelJson[];
const contentPanels = (dashboard: DashboardJson): PanelJson[] => panelsOf(dashboard).filter((p) => p.type !== 'row');
const variable = (dashboard: DashboardJson, name: string): VariableJson => dashboard.templating.list.find((v) => v.name === name)!;

/** Each dashboard as the code builds it, parsed back from its rendered text (what Grafana reads). */
const generated = DASHBOARDS.map((d) => ({ ...d, json: JSON.parse(renderDashboard(d.build())) as DashboardJson }));
const byUid = (uid: string): DashboardJson => generated.find((d) => d.uid === uid)!.json;

describe('committed dashboards', () => {
  test('validateDashboards() on the repository: 3 dashboards, nothing invalid, no unknown metric', async () => {
    assert.deepEqual(await validateDashboards(), { count: 3, invalid: [], unknownMetricRefs: [] });
  });

  test('uids are fixed and unique, and each file and ConfigMap is named after its uid', async () => {
    assert.deepEqual(DASHBOARDS.map((d) => d.uid), ['ckpt-overview', 'ckpt-vm', 'ckpt-host']);
    for (const d of DASHBOARDS) {
      const committed = JSON.parse(await readFile(join(GRAFANA_DIR, 'dashboards', d.file), 'utf8')) as DashboardJson;
      assert.equal(committed.uid, d.uid);
      assert.equal(d.file, `${d.uid}.json`);
      assert.equal(d.configMap, `ckpt-dashboard-${d.uid.slice('ckpt-'.length)}`);
    }
  });

  test('the kustomization generates one labelled, unhashed ConfigMap per dashboard file and sets no namespace', async () => {
    const text = await readFile(join(GRAFANA_DIR, 'kustomization.yaml'), 'utf8');
    assert.equal(text, renderKustomization());
    const k = parseYaml(text) as KustomizationJson;
    assert.equal(k.namespace, undefined);
    assert.deepEqual(k.configMapGenerator, DASHBOARDS.map((d) => ({
      name: d.configMap,
      files: [`dashboards/${d.file}`],
      options: { labels: { grafana_dashboard: '1' }, disableNameSuffixHash: true },
    })));
  });

  test('rendering is stable: the same text twice, keys sorted, pretty-printed, final newline', () => {
    for (const d of DASHBOARDS) {
      const text = renderDashboard(d.build());
      assert.equal(renderDashboard(d.build()), text);
      assert.ok(text.endsWith('}\n') && text.includes('\n  "panels": ['), d.file);
      const keys = Object.keys(JSON.parse(text) as object);
      assert.deepEqual(keys, [...keys].sort(), d.file);
    }
  });
});

describe('generated dashboards', () => {
  test('shared settings: ckpt tag, 30 s refresh, a prometheus datasource variable, unique panel ids', () => {
    for (const { uid, json } of generated) {
      assert.deepEqual(json.tags, ['ckpt'], uid);
      assert.equal(json.refresh, '30s', uid);
      const ds = variable(json, 'datasource');
      assert.deepEqual([ds.type, ds.query], ['datasource', 'prometheus'], uid);
      const ids = panelsOf(json).map((p) => p.id);
      assert.equal(new Set(ids).size, ids.length, `${uid}: panel ids repeat`);
      assert.ok(ids.every((id) => id > 0), `${uid}: a panel has no id`);
    }
  });

  test('every panel uses ${datasource}, has a description, a unit and queries with distinct refIds', () => {
    for (const { uid, json } of generated) {
      for (const p of contentPanels(json)) {
        const where = `${uid} "${p.title}"`;
        assert.deepEqual(p.datasource, { type: 'prometheus', uid: '${datasource}' }, where);
        assert.ok(typeof p.description === 'string' && p.description.length >= 40, `${where}: no useful description`);
        const unit = p.type === 'heatmap' ? p.options.yAxis?.unit : p.type === 'table' ? 'per column' : p.fieldConfig.defaults.unit;
        assert.ok(unit, `${where}: no unit`);
        const refIds = p.targets.map((t) => t.refId);
        assert.ok(refIds.length > 0 && refIds.every(Boolean) && new Set(refIds).size === refIds.length, `${where}: refIds ${refIds.join(',')}`);
        for (const t of p.targets) assert.deepEqual(t.datasource, { type: 'prometheus', uid: '${datasource}' }, where);
        if (p.type === 'timeseries') assert.equal(p.options.legend?.showLegend, true, `${where}: no legend`);
      }
    }
  });

  test('every query (panels and variables) parses as PromQL and selects at least one known metric', () => {
    const known = new Set(knownMetrics().flatMap((m) => (m.type === 'histogram' ? [`${m.name}_bucket`, `${m.name}_sum`, `${m.name}_count`] : [m.name])));
    known.add('up');
    let queries = 0;
    for (const { uid, json } of generated) {
      for (const q of dashboardQueries(json)) {
        queries++;
        const parsed = parsePromQL(substituteGrafanaVariables(q.expr));
        assert.deepEqual(parsed.errors, [], `${uid} ${q.where}: ${q.expr}`);
        assert.ok(parsed.metrics.length > 0, `${uid} ${q.where} selects no metric: ${q.expr}`);
        for (const m of parsed.metrics) assert.ok(known.has(m), `${uid} ${q.where}: unknown metric ${m}`);
      }
    }
    assert.ok(queries >= 100, `only ${queries} queries`);
  });

  test('counters only inside rate() or increase(), gauges never, histograms through their buckets, intervals from Grafana', () => {
    const types = new Map(knownMetrics().map((m) => [m.name, m.type]));
    for (const { uid, json } of generated) {
      for (const q of dashboardQueries(json)) {
        if (q.where.startsWith('variable')) continue;
        const where = `${uid} ${q.where}: ${q.expr}`;
        for (const m of parsePromQL(substituteGrafanaVariables(q.expr)).metrics) {
          const base = m.replace(/_(bucket|sum|count)$/, '');
          const type = types.get(m) ?? (types.get(base) === 'histogram' ? 'histogram-series' : 'gauge');
          const inRate = new RegExp(`\\b(rate|increase)\\(${m}\\b`).test(q.expr);
          if (type === 'counter' || type === 'histogram-series') assert.ok(inRate, `${where}: ${m} outside rate()/increase()`);
          if (type === 'gauge') assert.ok(!new RegExp(`\\b(rate|increase|irate)\\(${m}\\b`).test(q.expr), `${where}: rate() over gauge ${m}`);
        }
        for (const call of q.expr.matchAll(/histogram_quantile\(([\d.]+), sum by \(([^)]*)\) \(rate\((\w+)_bucket\b/g)) {
          assert.ok(Number(call[1]) > 0 && Number(call[1]) < 1, where);
          assert.match(call[2]!, /\ble$/, `${where}: quantile not by le`);
        }
        assert.equal((q.expr.match(/histogram_quantile\(/g) ?? []).length, (q.expr.match(/histogram_quantile\([\d.]+, sum by \([^)]*\ble\) \(rate\(\w+_bucket/g) ?? []).length, `${where}: histogram_quantile not over sum by (le) of rate of _bucket`);
        // Every range is Grafana's, so it follows the scrape interval and the zoom.
        for (const r of q.expr.matchAll(/\[([^\]]+)\]/g)) assert.ok(['$__rate_interval', '$__range', '10m'].includes(r[1]!), `${where}: range [${r[1]}]`);
      }
    }
  });

  test('the VM dashboard filters every panel query by $vm and takes vm from a label_values variable', () => {
    const vm = byUid('ckpt-vm');
    const queries = dashboardQueries(vm).filter((q) => !q.where.startsWith('variable'));
    assert.ok(queries.length >= 30, `${queries.length} queries`);
    for (const q of queries) {
      assert.ok(q.expr.includes(VM), `${q.where}: ${q.expr}`);
      // Every selector, not just one per query, carries the matcher; only `up`, which Prometheus
      // labels with the target and not the VM, is tied to the VM by `and on (instance)` instead.
      for (const m of parsePromQL(substituteGrafanaVariables(q.expr)).metrics) {
        for (const use of q.expr.matchAll(new RegExp(`\\b${m}(?![\\w:])(\\{[^}]*\\})?`, 'g'))) {
          if (m === 'up') assert.match(q.expr, /\band on \(instance\) .*\{[^}]*vm="\$vm"/, `${q.where}: ${q.expr}`);
          else assert.ok(use[1]?.includes(VM), `${q.where}: ${m} is not filtered by ${VM} in ${q.expr}`);
        }
      }
    }
    const vmVariable = variable(vm, 'vm');
    assert.equal(vmVariable.type, 'query');
    assert.match(vmVariable.query as string, /^label_values\(.+, vm\)$/);
  });

  // When a host is lost, its harvester's series go stale: a VM known only by them would vanish from
  // the dashboards exactly when it needs a failover. The replicator keeps reporting its standby.
  test('a VM whose harvester is gone stays in $vm and among the VMs at risk, by its replicator standby series', () => {
    const perVm = knownMetrics().filter((m) => (VM_SERIES as readonly string[]).includes(m.name));
    assert.deepEqual(perVm.map((m) => m.service).sort(), ['harvester', 'replicator']);
    for (const m of perVm) assert.ok(m.labels.includes('vm'), `${m.name} has no vm label`);

    const vmVariable = variable(byUid('ckpt-vm'), 'vm').query as string;
    assert.deepEqual(parsePromQL(variableQueryExpr(vmVariable)!).metrics.sort(), [...VM_SERIES].sort(), vmVariable);

    // At risk: every VM the left operand names, less the protected ones.
    const known = AT_RISK_VMS.slice(0, AT_RISK_VMS.indexOf(' unless on (vm) '));
    assert.deepEqual(parsePromQL(known).metrics.sort(), [...VM_SERIES].sort(), AT_RISK_VMS);
    const uses = dashboardQueries(byUid('ckpt-overview')).filter((q) => q.expr.includes(AT_RISK_VMS)).map((q) => q.where.replace(/ \(id \d+\)/, ''));
    assert.deepEqual(uses, ['panel "VMs at risk" query A', 'panel "Protection over time" query B']);
  });

  test('the guest pause p99 stat colours by the budget CkptPauseP99OverBudget fires at, for the worst VM as the alert sees it', async () => {
    assert.equal(await alertExpr('ckpt-harvester.yaml', 'CkptPauseP99OverBudget'), `vm:ckpt_harvester_pause_seconds:p99_rate5m > ${PAUSE_P99_BUDGET_SECONDS}`);
    const p = contentPanels(byUid('ckpt-overview')).find((x) => x.title === 'Guest pause p99')!;
    assert.deepEqual(p.fieldConfig.defaults.thresholds?.steps, [
      { color: 'green', value: null }, { color: 'orange', value: PAUSE_P99_WATCH_SECONDS }, { color: 'red', value: PAUSE_P99_BUDGET_SECONDS },
    ]);
    assert.match(p.targets[0]!.expr, /^max\(histogram_quantile\(0\.99, sum by \(vm, le\) /);
    assert.ok(p.description?.includes(`${PAUSE_P99_BUDGET_SECONDS * 1000} ms`), p.description);
  });

  test('the standby freshness limit of the dashboards is the one CkptRpoBreached fires at', async () => {
    assert.equal(await alertExpr('ckpt-replication.yaml', 'CkptRpoBreached'), `min by (vm) (ckpt_replicator_standby_age_seconds) > ${FRESH_STANDBY_SECONDS}`);
  });

  test('the restore panels ignore the 0 a restorer reports before a success, and say that drills do not show there', () => {
    const restores = ['Restores by outcome (range)', 'Last successful restore', 'Slowest restore (range)', 'Last restore throughput']
      .map((t) => contentPanels(byUid('ckpt-overview')).find((p) => p.title === t)!);
    for (const p of restores) {
      assert.match(p.description ?? '', /failover/, p.title);
      assert.match(p.description ?? '', /drill.*Job's status.*log/, p.title);
    }
    for (const [p, gauge] of [[restores[1]!, 'ckpt_restorer_last_success_timestamp_seconds'], [restores[3]!, 'ckpt_restorer_throughput_bytes_per_second']] as const) {
      assert.match(p.targets[0]!.expr, new RegExp(`\\b${gauge}\\b.*\\) > 0\\)$`), p.title);
    }
  });

  test('the host dashboard filters every panel query by the instance variable', () => {
    for (const q of dashboardQueries(byUid('ckpt-host')).filter((x) => !x.where.startsWith('variable'))) {
      assert.ok(q.expr.includes('instance=~"$instance"'), `${q.where}: ${q.expr}`);
    }
  });

  test('the overview answers the operator\'s questions', () => {
    const titles = contentPanels(byUid('ckpt-overview')).map((p) => p.title);
    for (const t of ['VMs protected', 'VMs at risk', 'RPO now (oldest standby)', 'Replication lag p99', 'Harvesters up', 'Replicators up',
      'Bytes harvested, published, applied', 'Guest pause p99', 'Digest mismatches', 'Continuity gaps', 'Dead letters', 'Produce errors',
      'Stale standby images', 'Resyncs per minute', '10 oldest standby images']) {
      assert.ok(titles.includes(t), `no panel "${t}"`);
    }
    const host = contentPanels(byUid('ckpt-host'));
    assert.equal(host.filter((p) => p.type === 'heatmap').length, 2);
    for (const p of host.filter((x) => x.type === 'heatmap')) {
      assert.equal(p.targets[0]!.format, 'heatmap');
      assert.equal(p.options.calculate, false);
    }
  });
});

describe('variable queries', () => {
  test('label_values, query_result and plain PromQL give the PromQL they run', () => {
    assert.equal(variableQueryExpr('label_values(up{job="a", b=~"c|d"}, instance)'), 'up{job="a", b=~"c|d"}');
    assert.equal(variableQueryExpr('label_values(ckpt_replicator_standby_age_seconds, vm)'), 'ckpt_replicator_standby_age_seconds');
    assert.equal(variableQueryExpr('label_values(vm)'), undefined);
    assert.equal(variableQueryExpr('query_result(topk(5, up))'), 'topk(5, up)');
    assert.equal(variableQueryExpr('metrics(ckpt_.*)'), undefined);
    assert.equal(variableQueryExpr('max by (vm) (up)'), 'max by (vm) (up)');
  });

  test('a __name__ regex of plain names selects those metrics; any other regex selects none', () => {
    assert.deepEqual(parsePromQL('{__name__=~"ckpt_a|ckpt_b"}').metrics, ['ckpt_a', 'ckpt_b']);
    assert.deepEqual(parsePromQL('{__name__=~"ckpt_.*"}').metrics, []);
    assert.deepEqual(parsePromQL('{__name__="ckpt_a", vm="x"}').metrics, ['ckpt_a']);
  });
});

describe('validateDashboards on a broken copy', () => {
  const roots: string[] = [];
  after(async () => {
    await Promise.all(roots.map((r) => rm(r, { recursive: true, force: true })));
  });

  /** A copy of deploy/grafana (dashboards and kustomization) in a temporary folder. */
  async function copy(): Promise<string> {
    const root = await mkdtemp(join(tmpdir(), 'ckpt-dashboards-'));
    roots.push(root);
    await cp(join(GRAFANA_DIR, 'dashboards'), join(root, 'dashboards'), { recursive: true });
    await cp(join(GRAFANA_DIR, 'kustomization.yaml'), join(root, 'kustomization.yaml'));
    return root;
  }

  /** Rewrites one dashboard of a copy in the committed format (so only the change itself differs). */
  async function edit(root: string, file: string, change: (d: DashboardJson) => void): Promise<void> {
    const path = join(root, 'dashboards', file);
    const d = JSON.parse(await readFile(path, 'utf8')) as DashboardJson;
    change(d);
    await writeFile(path, JSON.stringify(d, null, 2) + '\n');
  }

  const panel = (d: DashboardJson, title: string): PanelJson => {
    const p = panelsOf(d).find((x) => x.title === title);
    assert.ok(p, `no panel ${title}`);
    return p;
  };

  test('an unmodified copy is valid (the other cases fail for their change only)', async () => {
    assert.deepEqual(await validateDashboards({ dir: await copy() }), { count: 3, invalid: [], unknownMetricRefs: [] });
  });

  test('a query that does not parse is reported with its panel and query', async () => {
    const root = await copy();
    await edit(root, 'ckpt-overview.json', (d) => { panel(d, 'VMs at risk').targets[0]!.expr = 'sum(rate(ckpt_harvester_epochs_total[$__rate_interval])'; });
    const r = await validateDashboards({ dir: root });
    assert.ok(r.invalid.some((m) => /^ckpt-overview\.json: panel "VMs at risk" \(id \d+\) query A: PromQL does not parse/.test(m)), r.invalid.join('\n'));
    assert.deepEqual(r.unknownMetricRefs, []);
  });

  test('a metric no service defines is an unknown metric ref, in a panel and in a variable', async () => {
    const root = await copy();
    await edit(root, 'ckpt-vm.json', (d) => {
      panel(d, 'Dirty rate').targets[0]!.expr = 'sum(rate(ckpt_harvester_dirty_pages_total{vm="$vm"}[$__rate_interval]))';
      variable(d, 'vm').query = 'label_values(ckpt_replicator_standby_age, vm)';
    });
    const r = await validateDashboards({ dir: root });
    assert.equal(r.unknownMetricRefs.length, 2, r.unknownMetricRefs.join('\n'));
    assert.match(r.unknownMetricRefs[0]!, /^ckpt-vm\.json panel "Dirty rate" \(id \d+\) query A: ckpt_harvester_dirty_pages_total$/);
    assert.equal(r.unknownMetricRefs[1], 'ckpt-vm.json variable vm: ckpt_replicator_standby_age');
  });

  test('a selector on a label its metric does not carry is reported (a typo there matches nothing and the panel shows no data)', async () => {
    const root = await copy();
    await edit(root, 'ckpt-vm.json', (d) => {
      panel(d, 'Dirty rate').targets[0]!.expr = 'sum(rate(ckpt_harvester_pages_harvested_total{vmid="$vm"}[$__rate_interval]))';
    });
    await edit(root, 'ckpt-overview.json', (d) => {
      // The replicator's counter has no vm label; le belongs to buckets only.
      panel(d, 'VMs at risk').targets[0]!.expr = 'sum(rate(ckpt_replicator_gaps_total{vm="a"}[$__rate_interval])) + sum(ckpt_replicator_apply_seconds_count{le="1"})';
    });
    const r = await validateDashboards({ dir: root });
    assert.deepEqual(r.unknownMetricRefs, []);
    for (const re of [/^ckpt-vm\.json: panel "Dirty rate" .*: ckpt_harvester_pages_harvested_total has no label vmid \(it has .*\bvm\b/,
      /^ckpt-overview\.json: panel "VMs at risk" .*: ckpt_replicator_gaps_total has no label vm /, /ckpt_replicator_apply_seconds_count has no label le /]) {
      assert.ok(r.invalid.some((m) => re.test(m)), `${re}:\n${r.invalid.join('\n')}`);
    }
    // Labels that exist pass: le on a bucket, vm on the harvester's series, the target's own labels.
    await edit(root, 'ckpt-vm.json', (d) => {
      panel(d, 'Dirty rate').targets[0]!.expr = 'sum(rate(ckpt_replicator_apply_seconds_bucket{le="1", job="x", pod="p"}[$__rate_interval])) + sum(ckpt_harvester_last_epoch{vm="$vm"})';
    });
    await edit(root, 'ckpt-overview.json', (d) => { panel(d, 'VMs at risk').targets[0]!.expr = 'sum(up{job="ckpt-replicator"})'; });
    assert.deepEqual((await validateDashboards({ dir: root })).invalid.filter((m) => !/: stale, differs/.test(m)), []);
  });

  test('a panel, a query or a variable on another datasource than ${datasource} is reported', async () => {
    const root = await copy();
    await edit(root, 'ckpt-host.json', (d) => {
      panel(d, 'Dirty rate').datasource = { type: 'prometheus', uid: 'prometheus-prod' };
      panel(d, 'CPU').targets[0]!.datasource = { type: 'loki', uid: '${datasource}' };
      variable(d, 'instance').datasource = { type: 'prometheus', uid: 'abc' };
    });
    const r = await validateDashboards({ dir: root });
    for (const re of [/panel "Dirty rate" .* uses datasource \{"type":"prometheus","uid":"prometheus-prod"\}/, /panel "CPU" .* query A uses datasource .*loki/, /variable instance uses datasource .*abc/]) {
      assert.ok(r.invalid.some((m) => m.startsWith('ckpt-host.json: ') && re.test(m)), `${re}:\n${r.invalid.join('\n')}`);
    }
  });

  test('a dashboard without the prometheus datasource variable is reported', async () => {
    const root = await copy();
    await edit(root, 'ckpt-overview.json', (d) => { d.templating.list = []; });
    const r = await validateDashboards({ dir: root });
    assert.ok(r.invalid.some((m) => m.startsWith('ckpt-overview.json: has no "datasource" variable')), r.invalid.join('\n'));
  });

  test('stale committed JSON (a change the code does not make) is reported, and only that', async () => {
    const root = await copy();
    await edit(root, 'ckpt-vm.json', (d) => { panel(d, 'Epoch size').description = 'Edited in Grafana and exported by hand.'; });
    const r = await validateDashboards({ dir: root });
    assert.equal(r.invalid.length, 1, r.invalid.join('\n'));
    assert.match(r.invalid[0]!, /^ckpt-vm\.json: stale, differs from what deploy\/grafana\/src generates from line \d+; run `npm run build:dashboards`/);
    assert.deepEqual(r.unknownMetricRefs, []);
  });

  test('invalid JSON, a duplicate uid, a file the code does not generate and a missing one are reported', async () => {
    const root = await copy();
    await writeFile(join(root, 'dashboards', 'ckpt-overview.json'), '{"uid": "ckpt-overview",');
    await edit(root, 'ckpt-host.json', (d) => { d.uid = 'ckpt-vm'; });
    await writeFile(join(root, 'dashboards', 'extra.json'), await readFile(join(GRAFANA_DIR, 'dashboards', 'ckpt-vm.json'), 'utf8'));
    const r = await validateDashboards({ dir: root });
    assert.equal(r.count, 4);
    for (const re of [/^ckpt-overview\.json: is not valid JSON/, /uid ckpt-vm is also the uid of/, /^ckpt-host\.json: uid ckpt-vm is not its fixed uid ckpt-host/,
      /^extra\.json: no dashboard in deploy\/grafana\/src generates it/, /dashboards\/extra\.json is in 0 ConfigMap generators/]) {
      assert.ok(r.invalid.some((m) => re.test(m)), `${re}:\n${r.invalid.join('\n')}`);
    }
    await unlink(join(root, 'dashboards', 'ckpt-vm.json'));
    const missing = await validateDashboards({ dir: root });
    assert.ok(missing.invalid.some((m) => /^ckpt-vm\.json: missing from dashboards\//.test(m)), missing.invalid.join('\n'));
    assert.ok(missing.invalid.some((m) => /names dashboards\/ckpt-vm\.json, which is not a dashboard file/.test(m)), missing.invalid.join('\n'));
  });

  test('a kustomization without a dashboard\'s ConfigMap, without the sidecar label, or with a namespace is reported', async () => {
    const root = await copy();
    const k = parseYaml(await readFile(join(root, 'kustomization.yaml'), 'utf8')) as KustomizationJson;
    k.namespace = 'monitoring';
    k.configMapGenerator = k.configMapGenerator.filter((g) => g.name !== 'ckpt-dashboard-host');
    delete k.configMapGenerator[0]!.options.labels;
    k.configMapGenerator[1]!.options.disableNameSuffixHash = false;
    await writeFile(join(root, 'kustomization.yaml'), JSON.stringify(k));
    const r = await validateDashboards({ dir: root });
    for (const re of [/sets namespace "monitoring"/, /dashboards\/ckpt-host\.json is in 0 ConfigMap generators/,
      /ConfigMap ckpt-dashboard-overview lacks the label grafana_dashboard: "1"/, /ConfigMap ckpt-dashboard-vm needs options\.disableNameSuffixHash: true/]) {
      assert.ok(r.invalid.some((m) => m.startsWith('kustomization.yaml: ') && re.test(m)), `${re}:\n${r.invalid.join('\n')}`);
    }
  });
});

test('npm run build:dashboards --help prints its usage and a stray option is refused (exit 2), both without writing a file', () => {
  const build = fileURLToPath(new URL('../grafana/src/build.ts', import.meta.url));
  const kustomization = fileURLToPath(new URL('../grafana/kustomization.yaml', import.meta.url));
  const before = statSync(kustomization).mtimeMs;
  const help = spawnSync(process.execPath, ['--import', 'tsx', build, '--help'], { encoding: 'utf8' });
  assert.equal(help.status, 0, help.stderr);
  assert.match(help.stdout, /^usage: npm run build:dashboards/);
  const bad = spawnSync(process.execPath, ['--import', 'tsx', build, '--out', 'x'], { encoding: 'utf8' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /unknown option --out/);
  assert.equal(statSync(kustomization).mtimeMs, before, 'nothing was written');
});
