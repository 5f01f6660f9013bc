/**
 * Checks the Prometheus rules offline. Each `deploy/prometheus/rules/*.yaml` is one PrometheusRule,
 * validated against the prometheus-operator schema; its `spec.groups` are written out as a plain rule
 * file for `promtool check rules`, and the unit tests in `deploy/prometheus/tests/*.yaml` run with
 * `promtool test rules` against those extracted files. Every expression must parse and select only
 * metrics a service defines (or a recording rule records); every alert needs a `severity`, a
 * `summary`, a `description` and a `runbook` annotation pointing at its own section of docs/alerts.md,
 * and unit tests that expect it both firing and not firing.
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PrometheusRule, type IPrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule';
import { parse, stringify } from 'yaml';
import type { CheckResult } from './check-result.ts';
import { knownSeriesNames, selectorLabelProblems } from './known-metrics.ts';
import { parsePromQL } from './promql.ts';
import { asArray, isObject, type JsonObject } from './json-shape.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Where the rules, their tests and their runbook are; the defaults are the committed files. */
export interface AlertRuleSources {
  /** Holds `rules/*.yaml` (PrometheusRules), `tests/*.yaml` (promtool unit tests) and `kustomization.yaml`. */
  prometheusDir?: string;
  /** The runbook the alerts' `runbook` annotations point into (they always name it `docs/alerts.md`). */
  runbookFile?: string;
  /** The promtool binary (default: `promtool` on PATH). */
  promtool?: string;
}

export const SEVERITIES: readonly string[] = ['critical', 'warning'];
/** What every `runbook` annotation starts with; the anchor is the alert name in lower case. */
export const RUNBOOK_PREFIX = 'docs/alerts.md#';
/** Labels every PrometheusRule carries (the Prometheus's ruleSelector may match them; overlays add more). */
export const RULE_LABELS: Readonly<Record<string, string>> = { 'app.kubernetes.io/part-of': 'ckpt' };

const PROMTOOL_MISSING = 'promtool is not installed: run `npm run setup` as root (or `bash scripts/setup.sh`), which extracts it from Debian\'s prometheus package into /usr/local/bin';

type Json = JsonObject;
const nonEmptyString = (v: unknown): v is string => typeof v === 'string' && v.trim() !== '';
/** A YAML value as text for messages and for PromQL (an `expr` may be a bare number). */
const str = (v: unknown): string => (typeof v === 'string' ? v : v !== null && typeof v === 'object' ? JSON.stringify(v) : String(v));

interface Rule {
  /** `group/name`, for messages. */
  where: string;
  alert?: string;
  record?: string;
  expr: string;
  labels: Json;
  annotations: Json;
}

interface RuleFile {
  path: string;
  /** What messages call it (repository-relative when it is in the repository). */
  shown: string;
  groups: unknown[];
  rules: Rule[];
}

interface TestFile {
  path: string;
  shown: string;
  doc: Json;
}

const show = (path: string): string => {
  const r = relative(ROOT, path);
  return r.startsWith('..') || isAbsolute(r) ? path : r;
};

async function yamlFiles(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).filter((f) => f.endsWith('.yaml') || f.endsWith('.yml')).sort().map((f) => join(dir, f));
  } catch {
    return [];
  }
}

async function readYaml(path: string, out: CheckResult): Promise<unknown> {
  try {
    return parse(await readFile(path, 'utf8'));
  } catch (err) {
    out.invalid.push(`${show(path)}: cannot read or parse it: ${(err as Error).message}`);
    return undefined;
  }
}

/** One PrometheusRule file: its shape, its schema, its rules. Null when unusable. */
async function loadRuleFile(path: string, out: CheckResult): Promise<RuleFile | null> {
  const shown = show(path);
  const doc = await readYaml(path, out);
  if (doc === undefined) return null;
  if (!isObject(doc)) {
    out.invalid.push(`${shown}: is not a YAML mapping (one PrometheusRule per file)`);
    return null;
  }
  if (doc.apiVersion !== PrometheusRule.apiVersion || doc.kind !== PrometheusRule.kind) {
    out.invalid.push(`${shown}: is ${str(doc.apiVersion)} ${str(doc.kind)}, not ${PrometheusRule.apiVersion} ${PrometheusRule.kind}`);
    return null;
  }
  const meta = isObject(doc.metadata) ? doc.metadata : {};
  if (!nonEmptyString(meta.name)) out.invalid.push(`${shown}: has no metadata.name`);
  if (meta.namespace !== undefined) out.invalid.push(`${shown}: sets namespace ${str(meta.namespace)}; leave it to the overlays`);
  const labels = isObject(meta.labels) ? meta.labels : {};
  for (const [k, v] of Object.entries(RULE_LABELS)) {
    if (labels[k] !== v) out.invalid.push(`${shown}: lacks the label ${k}: ${v}`);
  }
  try {
    new PrometheusRule(doc as unknown as IPrometheusRule).validate();
  } catch (err) {
    out.invalid.push(`${shown}: does not match the PrometheusRule schema: ${(err as Error).message}`);
    return null;
  }
  const groups = asArray(isObject(doc.spec) ? doc.spec.groups : undefined);
  if (groups.length === 0) out.invalid.push(`${shown}: has no spec.groups`);
  const rules: Rule[] = [];
  for (const g of groups) {
    if (!isObject(g)) continue;
    for (const r of asArray(g.rules)) {
      if (!isObject(r)) continue;
      const name = str(r.alert ?? r.record ?? '(unnamed)');
      rules.push({
        where: `${str(g.name)}/${name}`,
        ...(typeof r.alert === 'string' ? { alert: r.alert } : {}),
        ...(typeof r.record === 'string' ? { record: r.record } : {}),
        expr: str(r.expr),
        labels: isObject(r.labels) ? r.labels : {},
        annotations: isObject(r.annotations) ? r.annotations : {},
      });
    }
  }
  return { path, shown, groups, rules };
}

/** The anchors of docs/alerts.md's headings, as GitHub renders them. */
async function runbookAnchors(file: string, out: CheckResult): Promise<Map<string, string> | null> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    out.invalid.push(`${show(file)}: cannot read the runbook: ${(err as Error).message}`);
    return null;
  }
  const anchors = new Map<string, string>();
  for (const m of text.matchAll(/^#{1,6}\s+(.+?)\s*#*\s*$/gm)) {
    const heading = m[1]!;
    anchors.set(heading.toLowerCase().replace(/[^\w\- ]/g, '').replace(/ /g, '-'), heading);
  }
  return anchors;
}

function checkRules(files: RuleFile[], anchors: Map<string, string> | null, runbookFile: string, out: CheckResult): void {
  const known = knownSeriesNames();
  for (const f of files) for (const r of f.rules) if (r.record) known.add(r.record);
  const alertsSeen = new Map<string, string>();
  for (const f of files) {
    for (const r of f.rules) {
      out.count++;
      const at = `${f.shown}: ${r.where}`;
      const parsed = parsePromQL(r.expr);
      if (parsed.errors.length) out.invalid.push(`${at}: PromQL does not parse (${parsed.errors.join('; ')}): ${r.expr}`);
      for (const m of parsed.metrics) if (!known.has(m)) out.unknownMetricRefs.push(`${at}: ${m}`);
      for (const p of selectorLabelProblems(parsed.selectors)) out.invalid.push(`${at}: ${p}: ${r.expr}`);
      if (!r.alert) continue;
      const other = alertsSeen.get(r.alert);
      if (other) out.invalid.push(`${at}: alert ${r.alert} is also defined in ${other}; give each alert one name (its runbook section is named after it)`);
      alertsSeen.set(r.alert, at);
      if (!SEVERITIES.includes(str(r.labels.severity))) out.invalid.push(`${at}: label severity is ${str(r.labels.severity)}; use one of ${SEVERITIES.join(', ')}`);
      for (const a of ['summary', 'description']) {
        if (!nonEmptyString(r.annotations[a])) out.invalid.push(`${at}: has no ${a} annotation`);
      }
      const expected = RUNBOOK_PREFIX + r.alert.toLowerCase();
      const runbook = r.annotations.runbook;
      if (runbook !== expected) {
        out.invalid.push(`${at}: annotation runbook is ${runbook === undefined ? 'missing' : JSON.stringify(runbook)}; use ${JSON.stringify(expected)} and a section "## ${r.alert}" in docs/alerts.md`);
      } else if (anchors && !anchors.has(expected.slice(RUNBOOK_PREFIX.length))) {
        out.invalid.push(`${at}: ${show(runbookFile)} has no section "## ${r.alert}" (what it means, likely causes, what to do)`);
      }
    }
  }
  // Sections named like an alert that no rule defines any more.
  if (anchors) {
    for (const heading of anchors.values()) {
      if (/^Ckpt[A-Z]\w*$/.test(heading) && !alertsSeen.has(heading)) out.invalid.push(`${show(runbookFile)}: section "${heading}" names no alert in the rules; remove or rename it`);
    }
  }
}

/** Every PrometheusRule file is a resource of kustomization.yaml, and nothing else is listed there. */
async function checkKustomization(dir: string, ruleFiles: string[], out: CheckResult): Promise<void> {
  const path = join(dir, 'kustomization.yaml');
  const doc = await readYaml(path, out);
  if (doc === undefined) return;
  const listed = asArray(isObject(doc) ? doc.resources : undefined).map((r) => resolve(dir, str(r)));
  for (const f of ruleFiles) if (!listed.includes(f)) out.invalid.push(`${show(path)}: resources do not list ${relative(dir, f)}`);
  for (const l of listed) if (!ruleFiles.includes(l)) out.invalid.push(`${show(path)}: lists ${relative(dir, l)}, which is not a rule file in rules/`);
}

/** Each alert is expected firing by some unit test and not firing by some other; each recording rule is queried by one. */
function checkCoverage(files: RuleFile[], tests: TestFile[], out: CheckResult): void {
  const firing = new Set<string>();
  const quiet = new Set<string>();
  const queried: string[] = [];
  for (const t of tests) {
    for (const tc of asArray(t.doc.tests)) {
      if (!isObject(tc)) continue;
      for (const a of asArray(tc.alert_rule_test)) {
        if (!isObject(a) || typeof a.alertname !== 'string') continue;
        (asArray(a.exp_alerts).length > 0 ? firing : quiet).add(a.alertname);
      }
      for (const e of asArray(tc.promql_expr_test)) if (isObject(e)) queried.push(str(e.expr));
    }
  }
  for (const f of files) {
    for (const r of f.rules) {
      if (r.alert && !firing.has(r.alert)) out.invalid.push(`${f.shown}: ${r.where}: no unit test in tests/ expects it firing (an exp_alerts entry)`);
      if (r.alert && !quiet.has(r.alert)) out.invalid.push(`${f.shown}: ${r.where}: no unit test in tests/ expects it not firing (exp_alerts: [])`);
      if (r.record && !queried.some((q) => q.includes(r.record!))) out.invalid.push(`${f.shown}: ${r.where}: no promql_expr_test in tests/ queries this recording rule`);
    }
  }
}

interface Run {
  ok: boolean;
  missing: boolean;
  output: string;
}

function run(bin: string, args: string[], cwd: string): Promise<Run> {
  return new Promise((done) => {
    execFile(bin, args, { cwd, encoding: 'utf8', timeout: 120_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const output = `${stdout}${stderr}`.trim();
      if (!err) return done({ ok: true, missing: false, output });
      const code = (err as NodeJS.ErrnoException).code;
      done({ ok: false, missing: code === 'ENOENT', output: output || err.message });
    });
  });
}

/** Writes the extracted rule files and the rewritten tests into `tmp`, runs promtool on them. */
async function runPromtool(files: RuleFile[], rulePaths: string[], tests: TestFile[], promtool: string, tmp: string, out: CheckResult): Promise<void> {
  const version = await run(promtool, ['--version'], tmp);
  if (version.missing) {
    out.invalid.push(`${PROMTOOL_MISSING} (looked for ${promtool})`);
    return;
  }
  const rulesDir = join(tmp, 'rules');
  const testsDir = join(tmp, 'tests');
  await mkdir(rulesDir);
  await mkdir(testsDir);
  // promtool names the files it read: name them back in its output.
  const names = new Map<string, string>();
  const tell = (text: string): string => {
    let t = text;
    for (const [from, to] of names) t = t.split(from).join(to);
    return t.split('\n').filter((l) => l.trim() !== '').map((l) => `    ${l}`).join('\n');
  };
  const extracted = new Map<string, string>();
  for (const f of files) {
    const to = join(rulesDir, basename(f.path));
    await writeFile(to, stringify({ groups: f.groups }));
    extracted.set(f.path, to);
    names.set(to, `${f.shown} (its spec.groups)`);
  }
  for (const f of files) {
    const r = await run(promtool, ['check', 'rules', '--lint=all', '--lint-fatal', extracted.get(f.path)!], tmp);
    if (!r.ok) out.invalid.push(`${f.shown}: promtool check rules fails:\n${tell(r.output)}`);
  }
  for (const t of tests) {
    const ruleFiles = asArray(t.doc.rule_files);
    if (ruleFiles.length === 0) {
      out.invalid.push(`${t.shown}: names no rule_files`);
      continue;
    }
    const rewritten: string[] = [];
    for (const rf of ruleFiles) {
      const from = resolve(dirname(t.path), str(rf));
      const to = extracted.get(from);
      if (to) rewritten.push(to);
      else if (rulePaths.includes(from)) out.invalid.push(`${t.shown}: not run: ${show(from)} is not a valid PrometheusRule (see above)`);
      else out.invalid.push(`${t.shown}: rule_files names ${str(rf)}, which is not a PrometheusRule file in rules/ (name it relative to the test file, e.g. ../rules/<file>.yaml)`);
    }
    if (rewritten.length !== ruleFiles.length) continue;
    const to = join(testsDir, basename(t.path));
    await writeFile(to, stringify({ ...t.doc, rule_files: rewritten }));
    names.set(to, t.shown);
    const r = await run(promtool, ['test', 'rules', to], tmp);
    if (!r.ok) out.invalid.push(`${t.shown}: promtool test rules fails:\n${tell(r.output)}`);
  }
}

/**
 * Validates the PrometheusRules and runs their unit tests. Problems come back as `invalid` lines
 * (promtool's own output included) and unknown metrics as `unknownMetricRefs`; nothing is thrown for
 * a bad rule or a missing promtool. `count` is the number of alerting plus recording rules.
 */
export async function validateAlertRules(sources: AlertRuleSources = {}): Promise<CheckResult> {
  const dir = resolve(sources.prometheusDir ?? join(ROOT, 'deploy/prometheus'));
  const runbookFile = resolve(sources.runbookFile ?? join(ROOT, 'docs/alerts.md'));
  const out: CheckResult = { count: 0, invalid: [], unknownMetricRefs: [] };

  const rulePaths = await yamlFiles(join(dir, 'rules'));
  if (rulePaths.length === 0) out.invalid.push(`${show(join(dir, 'rules'))}: holds no PrometheusRule (*.yaml)`);
  const files: RuleFile[] = [];
  for (const p of rulePaths) {
    const f = await loadRuleFile(p, out);
    if (f) files.push(f);
  }
  await checkKustomization(dir, rulePaths, out);
  checkRules(files, await runbookAnchors(runbookFile, out), runbookFile, out);

  const tests: TestFile[] = [];
  for (const p of await yamlFiles(join(dir, 'tests'))) {
    const doc = await readYaml(p, out);
    if (isObject(doc)) tests.push({ path: p, shown: show(p), doc });
    else if (doc !== undefined) out.invalid.push(`${show(p)}: is not a promtool unit-test file (a YAML mapping)`);
  }
  checkCoverage(files, tests, out);

  const tmp = await mkdtemp(join(tmpdir(), 'ckpt-alert-rules-'));
  try {
    await runPromtool(files, rulePaths, tests, sources.promtool ?? 'promtool', tmp, out);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return out;
}
