/**
 * Checks the committed Grafana dashboards (deploy/grafana/dashboards/*.json) and the kustomization
 * that ships them: each file is valid JSON with its fixed uid, queries Prometheus only through the
 * `datasource` variable, has PromQL that parses and selects only metrics a service defines, equals
 * what deploy/grafana/src generates now, and is named by exactly one labelled ConfigMap generator.
 */
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { DASHBOARDS, DASHBOARDS_FOLDER, SIDECAR_LABEL, renderDashboard, type DashboardEntry } from '../grafana/src/catalog.ts';
import type { CheckResult } from './check-result.ts';
import { knownSeriesNames, selectorLabelProblems } from './known-metrics.ts';
import { parsePromQL, substituteGrafanaVariables } from './promql.ts';
import { asArray, isObject, type JsonObject } from './json-shape.ts';

const GRAFANA_DIR = fileURLToPath(new URL('../grafana/', import.meta.url));
/** What every panel, target and query variable must use: the dashboard's Prometheus variable. */
const DATASOURCE_UID = '${datasource}';
const REBUILD = 'run `npm run build:dashboards` and commit the result';

export interface DashboardSources {
  /** Folder holding kustomization.yaml and dashboards/*.json; deploy/grafana by default. */
  dir?: string;
}

/** A PromQL query found in a dashboard, with where it is (for messages). */
export interface DashboardQuery {
  where: string;
  expr: string;
}

type Json = JsonObject;


/** Panels in order, those inside (collapsed) rows included; rows themselves are returned too. */
export function dashboardPanels(dashboard: unknown): Json[] {
  const out: Json[] = [];
  for (const p of asArray(isObject(dashboard) ? dashboard.panels : undefined)) {
    if (!isObject(p)) continue;
    out.push(p);
    for (const inner of asArray(p.panels)) if (isObject(inner)) out.push(inner);
  }
  return out;
}

const panelName = (p: Json): string => `panel "${typeof p.title === 'string' ? p.title : '?'}"${typeof p.id === 'number' ? ` (id ${p.id})` : ''}`;

/**
 * The PromQL a query variable runs. Grafana's Prometheus variable functions are not PromQL:
 * `label_values(selector, label)` selects with `selector` (and `label_values(label)` selects
 * nothing), `query_result(expr)` runs `expr`, `metrics(regex)` and `label_names()` select nothing.
 */
export function variableQueryExpr(query: string): string | undefined {
  const call = /^\s*(label_values|query_result|metrics|label_names)\s*\(([\s\S]*)\)\s*$/.exec(query);
  if (!call) return query;
  const [, fn, args] = call as unknown as [string, string, string];
  if (fn === 'query_result') return args;
  if (fn !== 'label_values') return undefined;
  // The label is the last argument; a selector may itself contain commas (between its matchers).
  const m = /^([\s\S]*),\s*[A-Za-z_][A-Za-z0-9_]*\s*$/.exec(args);
  return m ? m[1] : undefined;
}

/** Every PromQL query of a dashboard: panel targets, then query variables. */
export function dashboardQueries(dashboard: unknown): DashboardQuery[] {
  const out: DashboardQuery[] = [];
  for (const p of dashboardPanels(dashboard)) {
    asArray(p.targets).forEach((t, i) => {
      if (!isObject(t)) return;
      const ref = typeof t.refId === 'string' && t.refId ? t.refId : String(i);
      out.push({ where: `${panelName(p)} query ${ref}`, expr: typeof t.expr === 'string' ? t.expr : '' });
    });
  }
  const templating = isObject(dashboard) && isObject(dashboard.templating) ? dashboard.templating : {};
  for (const v of asArray(templating.list)) {
    if (!isObject(v) || v.type !== 'query') continue;
    const raw = isObject(v.query) ? v.query.query : v.query;
    const expr = variableQueryExpr(typeof raw === 'string' ? raw : '');
    if (expr !== undefined) out.push({ where: `variable ${String(v.name)}`, expr });
  }
  return out;
}

const usesDatasourceVariable = (ds: unknown): boolean => isObject(ds) && ds.uid === DATASOURCE_UID && (ds.type === undefined || ds.type === 'prometheus');
const describeDatasource = (ds: unknown): string => (ds === undefined ? 'none' : JSON.stringify(ds));

/** Problems of one parsed dashboard, and the unknown metrics it selects. */
function checkDashboard(file: string, dashboard: unknown, known: Set<string>, out: CheckResult): void {
  if (!isObject(dashboard)) {
    out.invalid.push(`${file}: is not a JSON object`);
    return;
  }
  const variables = asArray(isObject(dashboard.templating) ? dashboard.templating.list : undefined).filter(isObject);
  if (!variables.some((v) => v.name === 'datasource' && v.type === 'datasource' && v.query === 'prometheus')) {
    out.invalid.push(`${file}: has no "datasource" variable of type prometheus (panels must not name a datasource directly)`);
  }
  for (const v of variables) {
    if (v.type === 'query' && !usesDatasourceVariable(v.datasource)) {
      out.invalid.push(`${file}: variable ${String(v.name)} uses datasource ${describeDatasource(v.datasource)}, not ${DATASOURCE_UID}`);
    }
  }
  for (const p of dashboardPanels(dashboard)) {
    if (p.type === 'row') continue;
    if (!usesDatasourceVariable(p.datasource)) {
      out.invalid.push(`${file}: ${panelName(p)} uses datasource ${describeDatasource(p.datasource)}, not ${DATASOURCE_UID}`);
    }
    const targets = asArray(p.targets);
    if (targets.length === 0) out.invalid.push(`${file}: ${panelName(p)} has no query`);
    for (const t of targets) {
      if (isObject(t) && t.datasource !== undefined && !usesDatasourceVariable(t.datasource)) {
        out.invalid.push(`${file}: ${panelName(p)} query ${String(t.refId)} uses datasource ${describeDatasource(t.datasource)}, not ${DATASOURCE_UID}`);
      }
    }
  }
  for (const q of dashboardQueries(dashboard)) {
    const parsed = parsePromQL(substituteGrafanaVariables(q.expr));
    if (parsed.errors.length) {
      out.invalid.push(`${file}: ${q.where}: PromQL does not parse (${parsed.errors.join('; ')}): ${q.expr}`);
      continue;
    }
    for (const m of parsed.metrics) if (!known.has(m)) out.unknownMetricRefs.push(`${file} ${q.where}: ${m}`);
    for (const p of selectorLabelProblems(parsed.selectors)) out.invalid.push(`${file}: ${q.where}: ${p}: ${q.expr}`);
  }
}

/** The first line where two texts differ, to say where a committed file is stale. */
function firstDifference(a: string, b: string): number {
  const x = a.split('\n');
  const y = b.split('\n');
  let i = 0;
  while (i < x.length && i < y.length && x[i] === y[i]) i++;
  return i + 1;
}

/** `files:` entries are `path` or `key=path`. */
const generatorPath = (f: unknown): string => (typeof f === 'string' ? f.slice(f.indexOf('=') + 1).trim() : '');

async function checkKustomization(dir: string, files: readonly string[], catalog: Map<string, DashboardEntry>, out: CheckResult): Promise<void> {
  const where = 'kustomization.yaml';
  let doc: unknown;
  try {
    doc = parseYaml(await readFile(join(dir, where), 'utf8'));
  } catch (err) {
    out.invalid.push(`${where}: cannot read or parse it (${(err as Error).message}); ${REBUILD}`);
    return;
  }
  if (!isObject(doc)) {
    out.invalid.push(`${where}: is not a YAML mapping; ${REBUILD}`);
    return;
  }
  // The overlays put the ConfigMaps in Grafana's namespace.
  if (doc.namespace !== undefined) out.invalid.push(`${where}: sets namespace ${JSON.stringify(doc.namespace)}; leave it to the overlays`);
  const generators = asArray(doc.configMapGenerator).filter(isObject);
  for (const g of generators) {
    for (const f of asArray(g.files)) {
      const path = generatorPath(f);
      const name = path.startsWith(`${DASHBOARDS_FOLDER}/`) ? path.slice(DASHBOARDS_FOLDER.length + 1) : undefined;
      if (name === undefined || !files.includes(name)) out.invalid.push(`${where}: ConfigMap ${String(g.name)} names ${path}, which is not a dashboard file in ${DASHBOARDS_FOLDER}/`);
    }
  }
  for (const file of files) {
    const owners = generators.filter((g) => asArray(g.files).some((f) => generatorPath(f) === `${DASHBOARDS_FOLDER}/${file}`));
    if (owners.length !== 1) {
      out.invalid.push(`${where}: ${DASHBOARDS_FOLDER}/${file} is in ${owners.length} ConfigMap generators, not 1; ${REBUILD}`);
      continue;
    }
    const g = owners[0]!;
    const options = isObject(g.options) ? g.options : {};
    const labels = isObject(options.labels) ? options.labels : {};
    for (const [label, value] of Object.entries(SIDECAR_LABEL)) {
      if (labels[label] !== value) out.invalid.push(`${where}: ConfigMap ${String(g.name)} lacks the label ${label}: "${value}" the Grafana sidecar looks for`);
    }
    if (options.disableNameSuffixHash !== true) out.invalid.push(`${where}: ConfigMap ${String(g.name)} needs options.disableNameSuffixHash: true (a hashed name leaves old copies behind)`);
    const expected = catalog.get(file)?.configMap;
    if (expected !== undefined && g.name !== expected) out.invalid.push(`${where}: the ConfigMap of ${file} is named ${String(g.name)}, not ${expected}`);
  }
}

/**
 * Validates the committed dashboards (count = dashboard files). `sources.dir` points at another
 * copy of deploy/grafana (tests use a temporary one); what the code generates is always the reference.
 */
export async function validateDashboards(sources: DashboardSources = {}): Promise<CheckResult> {
  const dir = sources.dir ?? GRAFANA_DIR;
  const out: CheckResult = { count: 0, invalid: [], unknownMetricRefs: [] };
  const catalog = new Map(DASHBOARDS.map((d) => [d.file, d]));
  const known = knownSeriesNames();
  let files: string[];
  try {
    files = (await readdir(join(dir, DASHBOARDS_FOLDER))).filter((f) => f.endsWith('.json')).sort();
  } catch (err) {
    out.invalid.push(`${DASHBOARDS_FOLDER}/: cannot list it (${(err as Error).message}); ${REBUILD}`);
    return out;
  }
  out.count = files.length;
  const uids = new Map<string, string>();
  for (const file of files) {
    const text = await readFile(join(dir, DASHBOARDS_FOLDER, file), 'utf8');
    let dashboard: unknown;
    try {
      dashboard = JSON.parse(text);
    } catch (err) {
      out.invalid.push(`${file}: is not valid JSON (${(err as Error).message})`);
      continue;
    }
    const entry = catalog.get(file);
    const uid = isObject(dashboard) ? dashboard.uid : undefined;
    if (typeof uid !== 'string' || !/^[a-z0-9][a-z0-9-]{0,39}$/.test(uid)) {
      out.invalid.push(`${file}: needs a fixed uid (lowercase letters, digits and dashes, at most 40), has ${JSON.stringify(uid)}`);
    } else {
      if (uids.has(uid)) out.invalid.push(`${file}: uid ${uid} is also the uid of ${uids.get(uid)}`);
      uids.set(uid, file);
      if (entry && uid !== entry.uid) out.invalid.push(`${file}: uid ${uid} is not its fixed uid ${entry.uid}`);
    }
    checkDashboard(file, dashboard, known, out);
    if (!entry) {
      out.invalid.push(`${file}: no dashboard in deploy/grafana/src generates it; remove it or add it to catalog.ts`);
    } else {
      const generated = renderDashboard(entry.build());
      if (text !== generated) out.invalid.push(`${file}: stale, differs from what deploy/grafana/src generates from line ${firstDifference(text, generated)}; ${REBUILD}`);
    }
  }
  for (const d of DASHBOARDS) {
    if (!files.includes(d.file)) out.invalid.push(`${d.file}: missing from ${DASHBOARDS_FOLDER}/; ${REBUILD}`);
  }
  await checkKustomization(dir, files, catalog, out);
  return out;
}
