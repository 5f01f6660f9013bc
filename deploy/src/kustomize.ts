/**
 * A minimal kustomize (`kustomize build`, `kubectl apply -k`) for offline validation: there is no
 * kustomize or kubectl binary here. It renders what deploy/k8s uses, the way kustomize v5 does:
 *
 * - `resources`: YAML files (inside the kustomization's directory, as kustomize's default load
 *   restrictor demands) and directories holding a kustomization (anywhere);
 * - `configMapGenerator` / `secretGenerator` (`files`, `literals`, `envs`, `options`) and
 *   `generatorOptions`, with a name-suffix hash in kustomize's manner (sha256 of the kind/name/data
 *   JSON, first 10 hex digits mapped 0→g 1→h 3→k a→m e→t; not kustomize v5's suffixes), added at the end of the
 *   top-level build, and references to the generated names fixed up in pod templates;
 * - `patches`: strategic-merge patches (lists merged by their Kubernetes merge key: containers, env and
 *   volumes by `name`, volumeMounts by `mountPath`, container ports by `containerPort`; in custom
 *   resources by the key kyaml infers) and JSON 6902 patches, each by its own identity or a `target`;
 * - `namespace`, `labels` (`includeSelectors`, `includeTemplates`), `commonLabels`,
 *   `commonAnnotations`, `replicas`, `images`.
 *
 * Within one kustomization they run in kustomize's order: resources and generators, then patches,
 * namespace, labels, annotations, replicas, images. Any other field is an error, never ignored: a
 * known kustomize field this renderer does not implement says so, an unknown one is a typo.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename, isAbsolute, join, relative, resolve } from 'node:path';
import YAML from 'yaml';
import { CkptError } from '@ckpt/common';
import { isObject, type JsonObject } from './json-shape.ts';

/** One Kubernetes object as rendered. */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string>; [k: string]: unknown };
  [k: string]: unknown;
}

/** A rendered object and the file it came from (the kustomization, for generated ones). */
export interface RenderedResource {
  object: K8sObject;
  source: string;
}

/** Codes: CKPT_ERR_KUSTOMIZE_{NOT_FOUND,UNKNOWN_FIELD,UNSUPPORTED,INVALID,SECURITY,CONFLICT,PATCH}. */
export class KustomizeError extends CkptError {
  constructor(code: string, message: string, file: string, cause?: unknown) {
    super(`CKPT_ERR_KUSTOMIZE_${code}`, message, { cause, context: { file } });
    this.name = 'KustomizeError';
  }
}

type Obj = JsonObject;

interface Res {
  obj: K8sObject;
  source: string;
  /** Generated ConfigMap/Secret whose name gets the content hash at the end of the build. */
  hash: boolean;
  /** Name before the hash suffix, which references use. */
  originalName: string;
}

const KUSTOMIZATION_FILES = ['kustomization.yaml', 'kustomization.yml', 'Kustomization'];

const SUPPORTED_FIELDS = new Set([
  'apiVersion', 'kind', 'resources', 'namespace', 'images', 'labels', 'commonLabels', 'commonAnnotations', 'patches',
  'configMapGenerator', 'secretGenerator', 'generatorOptions', 'replicas',
]);
/** Real kustomize fields this renderer does not implement: an error that says so, not a silent skip. */
const KNOWN_UNSUPPORTED = new Set([
  'bases', 'components', 'crds', 'configurations', 'namePrefix', 'nameSuffix', 'patchesStrategicMerge', 'patchesJson6902',
  'vars', 'replacements', 'helmCharts', 'helmGlobals', 'helmChartInflationGenerator', 'generators', 'transformers', 'validators',
  'openapi', 'sortOptions', 'buildMetadata', 'metadata', 'nameReference', 'inventory', 'labelSelector',
]);

/** Kinds the namespace transformer leaves alone (cluster-scoped). */
const CLUSTER_SCOPED = new Set([
  'Namespace', 'Node', 'PersistentVolume', 'StorageClass', 'CSIDriver', 'CSINode', 'VolumeAttachment', 'ClusterRole', 'ClusterRoleBinding',
  'CustomResourceDefinition', 'PriorityClass', 'RuntimeClass', 'IngressClass', 'MutatingWebhookConfiguration', 'ValidatingWebhookConfiguration',
  'ValidatingAdmissionPolicy', 'ValidatingAdmissionPolicyBinding', 'APIService', 'CertificateSigningRequest', 'ComponentStatus',
  'FlowSchema', 'PriorityLevelConfiguration', 'PodSecurityPolicy',
]);

const clone = <T>(v: T): T => structuredClone(v);
/** A value for a message: strings as they are, anything else as JSON. */
const show = (v: unknown): string => (typeof v === 'string' ? v : JSON.stringify(v));

function fail(code: string, file: string, message: string, cause?: unknown): never {
  throw new KustomizeError(code, `${file}: ${message}`, file, cause);
}

/** Rejects keys of `o` outside `allowed` (kustomize unmarshals strictly). */
function strictKeys(o: Obj, allowed: readonly string[], file: string, where: string): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) fail('UNKNOWN_FIELD', file, `unknown field "${k}" in ${where} (allowed: ${allowed.join(', ')})`);
  }
}

function asList(v: unknown, file: string, field: string): unknown[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) fail('INVALID', file, `${field} must be a list`);
  return v;
}

function asStringMap(v: unknown, file: string, field: string): Record<string, string> {
  if (v === undefined || v === null) return {};
  if (!isObject(v)) fail('INVALID', file, `${field} must be a map`);
  for (const [k, x] of Object.entries(v)) if (typeof x !== 'string') fail('INVALID', file, `${field}.${k} must be a string (quote it: "${String(x)}")`);
  return v as Record<string, string>;
}

const groupOf = (apiVersion: string): string => (apiVersion.includes('/') ? apiVersion.split('/')[0]! : '');
const idOf = (o: K8sObject): string => `${o.apiVersion}/${o.kind}/${o.metadata.namespace ?? '~'}/${o.metadata.name}`;
const describe = (o: K8sObject): string => `${o.kind} ${o.metadata.namespace ? o.metadata.namespace + '/' : ''}${o.metadata.name}`;

/** Kustomize's default load restrictor: files must be in or below the kustomization root. */
function withinRoot(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
}

function kustomizationFile(dir: string): string | null {
  for (const f of KUSTOMIZATION_FILES) if (existsSync(join(dir, f))) return join(dir, f);
  return null;
}

/** The objects in a YAML file (empty documents skipped, `List` kinds expanded). */
function parseObjects(text: string, file: string): K8sObject[] {
  const out: K8sObject[] = [];
  let docs;
  try {
    docs = YAML.parseAllDocuments(text);
  } catch (err) {
    fail('INVALID', file, `not YAML: ${(err as Error).message}`, err);
  }
  for (const doc of docs) {
    if (doc.errors.length) fail('INVALID', file, `not YAML: ${doc.errors[0]!.message}`);
    const v: unknown = doc.toJS();
    if (v === null || v === undefined) continue;
    if (!isObject(v)) fail('INVALID', file, 'a document is not a Kubernetes object (a map)');
    if (typeof v.kind === 'string' && v.kind.endsWith('List') && Array.isArray(v.items)) {
      for (const item of v.items) out.push(checkObject(item, file));
    } else {
      out.push(checkObject(v, file));
    }
  }
  return out;
}

function checkObject(v: unknown, file: string): K8sObject {
  if (!isObject(v)) fail('INVALID', file, 'an item is not a map');
  if (typeof v.apiVersion !== 'string' || typeof v.kind !== 'string') fail('INVALID', file, 'an object has no apiVersion or kind');
  if (!isObject(v.metadata) || typeof v.metadata.name !== 'string' || v.metadata.name === '') fail('INVALID', file, `a ${v.kind} has no metadata.name`);
  return v as K8sObject;
}

// ---------------------------------------------------------------------------------------------
// Generators

interface GeneratorOptions {
  labels: Record<string, string>;
  annotations: Record<string, string>;
  disableNameSuffixHash: boolean;
  immutable: boolean;
}

function parseOptions(v: unknown, file: string, where: string, base?: GeneratorOptions): GeneratorOptions {
  const o = v ?? {};
  if (!isObject(o)) fail('INVALID', file, `${where} must be a map`);
  strictKeys(o, ['labels', 'annotations', 'disableNameSuffixHash', 'immutable'], file, where);
  for (const b of ['disableNameSuffixHash', 'immutable'] as const) {
    if (o[b] !== undefined && typeof o[b] !== 'boolean') fail('INVALID', file, `${where}.${b} must be true or false`);
  }
  return {
    labels: { ...base?.labels, ...asStringMap(o.labels, file, `${where}.labels`) },
    annotations: { ...base?.annotations, ...asStringMap(o.annotations, file, `${where}.annotations`) },
    disableNameSuffixHash: (o.disableNameSuffixHash as boolean | undefined) ?? base?.disableNameSuffixHash ?? false,
    immutable: (o.immutable as boolean | undefined) ?? base?.immutable ?? false,
  };
}

const KEY_RE = /^[-._a-zA-Z0-9]+$/;

/** `KEY=VALUE` as kustomize reads a literal: split at the first `=`, one pair of surrounding quotes removed. */
function parseLiteral(s: string, file: string, where: string): [string, string] {
  const eq = s.indexOf('=');
  if (eq <= 0) fail('INVALID', file, `${where}: literal "${s}" is not KEY=VALUE`);
  let value = s.slice(eq + 1);
  if (value.length >= 2 && ((value.startsWith('"') && value.endsWith('"')) || (value.startsWith("'") && value.endsWith("'")))) value = value.slice(1, -1);
  return [s.slice(0, eq), value];
}

function generate(kind: 'ConfigMap' | 'Secret', spec: unknown, dir: string, file: string, defaults: GeneratorOptions): Res {
  const field = kind === 'ConfigMap' ? 'configMapGenerator' : 'secretGenerator';
  if (!isObject(spec)) fail('INVALID', file, `${field} entries must be maps`);
  strictKeys(spec, ['name', 'namespace', 'behavior', 'files', 'literals', 'envs', 'env', 'options', ...(kind === 'Secret' ? ['type'] : [])], file, field);
  const name = spec.name;
  if (typeof name !== 'string' || name === '') fail('INVALID', file, `${field} entry without a name`);
  const where = `${field} ${name}`;
  if (spec.behavior !== undefined && spec.behavior !== 'create') {
    fail('UNSUPPORTED', file, `${where}: behavior "${show(spec.behavior)}" is not supported by this renderer (only create); patch the generated object instead`);
  }
  const options = parseOptions(spec.options, file, `${where}.options`, defaults);
  const data: Record<string, string> = {};
  const binaryData: Record<string, string> = {};
  const put = (key: string, value: Buffer, from: string): void => {
    if (!KEY_RE.test(key)) fail('INVALID', file, `${where}: key "${key}" (${from}) may only use letters, digits, "-", "_" and "."`);
    if (key in data || key in binaryData) fail('INVALID', file, `${where}: key "${key}" is defined twice`);
    const text = value.toString('utf8');
    const utf8 = Buffer.from(text, 'utf8').equals(value);
    if (kind === 'Secret') data[key] = value.toString('base64');
    else if (utf8) data[key] = text;
    else binaryData[key] = value.toString('base64');
  };
  const readInRoot = (rel: string): Buffer => {
    const path = resolve(dir, rel);
    if (!withinRoot(dir, path)) fail('SECURITY', file, `${where}: file "${rel}" is not in or below ${dir} (kustomize's load restrictor rejects it)`);
    if (!existsSync(path) || !statSync(path).isFile()) fail('NOT_FOUND', file, `${where}: file "${rel}" does not exist`);
    return readFileSync(path);
  };
  for (const lit of asList(spec.literals, file, `${where}.literals`)) {
    if (typeof lit !== 'string') fail('INVALID', file, `${where}.literals must be strings`);
    const [k, v] = parseLiteral(lit, file, where);
    put(k, Buffer.from(v, 'utf8'), 'literal');
  }
  for (const f of asList(spec.files, file, `${where}.files`)) {
    if (typeof f !== 'string') fail('INVALID', file, `${where}.files must be strings`);
    const eq = f.indexOf('=');
    const [key, rel] = eq > 0 ? [f.slice(0, eq), f.slice(eq + 1)] : [basename(f), f];
    put(key, readInRoot(rel), rel);
  }
  const envFiles = [...asList(spec.envs, file, `${where}.envs`), ...(spec.env === undefined ? [] : [spec.env])];
  for (const e of envFiles) {
    if (typeof e !== 'string') fail('INVALID', file, `${where}.envs must be strings`);
    for (const [i, raw] of readInRoot(e).toString('utf8').split('\n').entries()) {
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) continue;
      // kustomize would read a bare KEY from this process's environment: not reproducible, so refused.
      if (!line.includes('=')) fail('INVALID', file, `${where}: ${e}:${i + 1}: "${line}" has no "=" (values from the environment are not supported)`);
      const [k, v] = parseLiteral(line, file, `${where} ${e}:${i + 1}`);
      put(k, Buffer.from(v, 'utf8'), e);
    }
  }
  const metadata: K8sObject['metadata'] = { name };
  if (typeof spec.namespace === 'string') metadata.namespace = spec.namespace;
  if (Object.keys(options.labels).length) metadata.labels = { ...options.labels };
  if (Object.keys(options.annotations).length) metadata.annotations = { ...options.annotations };
  const obj: K8sObject = { apiVersion: 'v1', kind, metadata };
  if (kind === 'Secret') obj.type = typeof spec.type === 'string' ? spec.type : 'Opaque';
  obj.data = data;
  if (Object.keys(binaryData).length) obj.binaryData = binaryData;
  if (options.immutable) obj.immutable = true;
  return { obj, source: file, hash: !options.disableNameSuffixHash, originalName: name };
}

/** JSON as Go's encoding/json writes it (sorted keys, HTML-safe escapes), which kustomize hashes. */
function goJson(v: unknown): string {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'string') {
    return JSON.stringify(v).replace(/[<>&\u2028\u2029]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'))
      .replace(/\\b/g, '\\u0008').replace(/\\f/g, '\\u000c');
  }
  if (typeof v === 'number' || typeof v === 'boolean') return JSON.stringify(v);
  if (Array.isArray(v)) return '[' + v.map(goJson).join(',') + ']';
  const o = v as Obj;
  return '{' + Object.keys(o).sort().map((k) => goJson(k) + ':' + goJson(o[k])).join(',') + '}';
}

/**
 * A name-suffix hash of a ConfigMap or Secret in the manner of kustomize's api/hasher. It is not the
 * suffix kustomize v5 (`kubectl kustomize`) gives the same object; nothing may depend on its value,
 * only on references being fixed up to it (docs/deploy.md).
 */
export function nameHash(obj: K8sObject): string {
  const m: Obj = obj.kind === 'Secret'
    ? { kind: 'Secret', type: obj.type ?? '', name: obj.metadata.name, data: obj.data ?? '' }
    : { kind: 'ConfigMap', name: obj.metadata.name, data: obj.data ?? '' };
  if (obj.kind === 'ConfigMap' && isObject(obj.binaryData)) m.binaryData = obj.binaryData;
  if (obj.kind === 'Secret' && isObject(obj.stringData)) m.stringData = obj.stringData;
  const hex = createHash('sha256').update(goJson(m)).digest('hex');
  const map: Record<string, string> = { '0': 'g', '1': 'h', '3': 'k', a: 'm', e: 't' };
  return [...hex.slice(0, 10)].map((c) => map[c] ?? c).join('');
}

// ---------------------------------------------------------------------------------------------
// Strategic merge patch and JSON 6902

const DELETE = Symbol('delete');

/**
 * Merge keys of lists in Kubernetes' own kinds (their OpenAPI x-kubernetes-patch-merge-key), by the
 * list's field name and, for `ports`, its parent. A list not named here is replaced whole, as
 * kubectl and kustomize do for lists without a merge strategy (args, tolerations, NetworkPolicy rules).
 */
function nativeMergeKey(path: readonly string[], kind: string): string | null {
  const last = path.at(-1);
  const parentIsItemOf = path.at(-2) === '[]' ? path.at(-3) : undefined;
  switch (last) {
    case 'containers': case 'initContainers': case 'ephemeralContainers': case 'env': case 'volumes': case 'imagePullSecrets':
    case 'resourceClaims': case 'schedulingGates':
      return 'name';
    case 'volumeMounts': return 'mountPath';
    case 'volumeDevices': return 'devicePath';
    case 'hostAliases': return 'ip';
    case 'topologySpreadConstraints': return 'topologyKey';
    case 'ownerReferences': return 'uid';
    case 'ports':
      if (parentIsItemOf === 'containers' || parentIsItemOf === 'initContainers' || parentIsItemOf === 'ephemeralContainers') return 'containerPort';
      if (kind === 'Service' && path.length === 2 && path[0] === 'spec') return 'port';
      return null;
    default:
      return null;
  }
}

/** kyaml's associative-list keys, used for kinds without a schema (custom resources). */
const ASSOCIATIVE_KEYS = ['mountPath', 'devicePath', 'ip', 'type', 'topologyKey', 'name', 'containerPort'];

function inferredMergeKey(lists: unknown[][]): string | null {
  const items = lists.flat().filter((x) => !(isObject(x) && Object.keys(x).length === 1 && '$patch' in x));
  if (items.length === 0 || !items.every(isObject)) return null;
  return ASSOCIATIVE_KEYS.find((k) => items.every((x) => isObject(x) && x[k] !== undefined)) ?? null;
}

/** Drops `null` values (deletions of fields that do not exist) from a patch value being added whole. */
function cleanPatch(v: unknown, file: string): unknown {
  if (Array.isArray(v)) return v.filter((x) => !(isObject(x) && x.$patch === 'delete')).map((x) => cleanPatch(x, file));
  if (!isObject(v)) return v;
  const out: Obj = {};
  for (const [k, x] of Object.entries(v)) {
    if (k === '$patch') continue;
    if (k.startsWith('$')) fail('UNSUPPORTED', file, `patch directive ${k} is not supported by this renderer`);
    if (x !== null) out[k] = cleanPatch(x, file);
  }
  return out;
}

function smpMerge(target: unknown, patch: unknown, path: string[], ctx: { kind: string; native: boolean; file: string }): unknown {
  if (isObject(patch)) {
    const directive = patch.$patch;
    if (directive === 'delete') return DELETE;
    if (directive === 'replace') return cleanPatch(patch, ctx.file);
    if (directive !== undefined) fail('UNSUPPORTED', ctx.file, `$patch: ${show(directive)} is not supported (delete or replace)`);
    if (!isObject(target)) return cleanPatch(patch, ctx.file);
    const out: Obj = { ...target };
    for (const [k, v] of Object.entries(patch)) {
      if (k.startsWith('$')) fail('UNSUPPORTED', ctx.file, `patch directive ${k} is not supported by this renderer`);
      if (v === null) {
        delete out[k];
        continue;
      }
      const merged = smpMerge(out[k], v, [...path, k], ctx);
      if (merged === DELETE) delete out[k];
      else out[k] = merged;
    }
    return out;
  }
  if (Array.isArray(patch)) {
    if (patch.some((x) => isObject(x) && x.$patch === 'replace' && Object.keys(x).length === 1)) {
      return cleanPatch(patch.filter((x) => !(isObject(x) && x.$patch === 'replace')), ctx.file);
    }
    const key = ctx.native ? nativeMergeKey(path, ctx.kind) : inferredMergeKey([patch, Array.isArray(target) ? target : []]);
    if (!key || !Array.isArray(target)) return cleanPatch(patch, ctx.file);
    const out: unknown[] = [...(target as unknown[])];
    for (const item of patch) {
      if (!isObject(item) || item[key] === undefined) fail('PATCH', ctx.file, `an item of ${path.join('.')} has no merge key "${key}"`);
      const i = out.findIndex((x) => isObject(x) && x[key] === item[key]);
      if (i < 0) {
        if (item.$patch !== 'delete') out.push(cleanPatch(item, ctx.file));
        continue;
      }
      const merged = smpMerge(out[i], item, [...path, '[]'], ctx);
      if (merged === DELETE) out.splice(i, 1);
      else out[i] = merged;
    }
    return out;
  }
  return patch;
}

/** Kinds whose lists merge by the Kubernetes OpenAPI merge keys; others get kyaml's inference. */
function isNativeKind(apiVersion: string): boolean {
  const g = groupOf(apiVersion);
  return g === '' || g.endsWith('.k8s.io') || ['apps', 'batch', 'policy', 'autoscaling'].includes(g);
}

function applySmp(res: Res, patch: Obj, file: string): Res | null {
  const { apiVersion: _a, kind: _k, ...rest } = patch;
  const meta = isObject(rest.metadata) ? { ...rest.metadata } : undefined;
  // The patch's own name and namespace only select the target; they are not applied.
  if (meta) {
    delete meta.name;
    delete meta.namespace;
    rest.metadata = meta;
  }
  const merged = smpMerge(res.obj, rest, [], { kind: res.obj.kind, native: isNativeKind(res.obj.apiVersion), file });
  if (merged === DELETE) return null;
  return { ...res, obj: merged as K8sObject };
}

function pointer(p: string, file: string): string[] {
  if (p === '') return [];
  if (!p.startsWith('/')) fail('PATCH', file, `JSON pointer "${p}" must start with /`);
  return p.slice(1).split('/').map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function applyJson6902(doc: unknown, ops: unknown[], file: string): unknown {
  let root = clone(doc);
  const parentOf = (segs: string[], op: string): { parent: unknown; key: string } => {
    let cur: unknown = root;
    for (const s of segs.slice(0, -1)) {
      if (Array.isArray(cur)) cur = cur[Number(s)];
      else if (isObject(cur)) cur = cur[s];
      else cur = undefined;
      if (cur === undefined) fail('PATCH', file, `${op}: path /${segs.join('/')} does not exist`);
    }
    return { parent: cur, key: segs.at(-1)! };
  };
  const get = (segs: string[], op: string): unknown => {
    if (segs.length === 0) return root;
    const { parent, key } = parentOf(segs, op);
    const v: unknown = Array.isArray(parent) ? (parent as unknown[])[Number(key)] : isObject(parent) ? parent[key] : undefined;
    if (v === undefined) fail('PATCH', file, `${op}: path /${segs.join('/')} does not exist`);
    return v;
  };
  const remove = (segs: string[], op: string): unknown => {
    const v = get(segs, op);
    const { parent, key } = parentOf(segs, op);
    if (Array.isArray(parent)) parent.splice(Number(key), 1);
    else delete (parent as Obj)[key];
    return v;
  };
  const add = (segs: string[], value: unknown, op: string, replace: boolean): void => {
    if (segs.length === 0) {
      root = clone(value);
      return;
    }
    const { parent, key } = parentOf(segs, op);
    if (Array.isArray(parent)) {
      const i = key === '-' ? parent.length : Number(key);
      if (!Number.isInteger(i) || i < 0 || i > parent.length) fail('PATCH', file, `${op}: index ${key} is out of range`);
      if (replace) parent[i] = clone(value);
      else parent.splice(i, 0, clone(value));
    } else if (isObject(parent)) {
      if (replace && !(key in parent)) fail('PATCH', file, `${op}: path /${segs.join('/')} does not exist`);
      parent[key] = clone(value);
    } else {
      fail('PATCH', file, `${op}: parent of /${segs.join('/')} is not an object or list`);
    }
  };
  for (const raw of ops) {
    if (!isObject(raw) || typeof raw.op !== 'string' || typeof raw.path !== 'string') fail('PATCH', file, 'a JSON 6902 operation needs op and path');
    const segs = pointer(raw.path, file);
    switch (raw.op) {
      case 'add': add(segs, raw.value, 'add', false); break;
      case 'replace': get(segs, 'replace'); add(segs, raw.value, 'replace', true); break;
      case 'remove': remove(segs, 'remove'); break;
      case 'move': { const v = remove(pointer(String(raw.from), file), 'move'); add(segs, v, 'move', false); break; }
      case 'copy': add(segs, get(pointer(String(raw.from), file), 'copy'), 'copy', false); break;
      case 'test':
        if (JSON.stringify(get(segs, 'test')) !== JSON.stringify(raw.value)) fail('PATCH', file, `test failed at ${raw.path}`);
        break;
      default: fail('PATCH', file, `unknown JSON 6902 op "${raw.op}"`);
    }
  }
  return root;
}

interface Target {
  group?: string;
  version?: string;
  kind?: string;
  name?: string;
  namespace?: string;
  labelSelector?: string;
  annotationSelector?: string;
}

/** `a=b,c!=d,e` selectors (equality and existence; set-based ones are refused). */
function selectorMatches(sel: string, labels: Record<string, string> | undefined, file: string): boolean {
  for (const term of sel.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^([^!=\s]+)\s*(==|=|!=)?\s*([^=\s]*)$/.exec(term);
    if (!m) fail('UNSUPPORTED', file, `selector term "${term}" is not supported (key, key=value, key!=value)`);
    const [, k, op, v] = m;
    const have = labels?.[k!];
    if (!op && have === undefined) return false;
    if ((op === '=' || op === '==') && have !== v) return false;
    if (op === '!=' && have === v) return false;
  }
  return true;
}

function targetMatches(t: Target, o: K8sObject, file: string): boolean {
  const [group, version] = o.apiVersion.includes('/') ? o.apiVersion.split('/') : ['', o.apiVersion];
  const re = (pattern: string, value: string): boolean => new RegExp(`^(?:${pattern})$`).test(value);
  if (t.group !== undefined && t.group !== group) return false;
  if (t.version !== undefined && t.version !== version) return false;
  if (t.kind !== undefined && t.kind !== o.kind) return false;
  if (t.name !== undefined && !re(t.name, o.metadata.name)) return false;
  if (t.namespace !== undefined && !re(t.namespace, o.metadata.namespace ?? '')) return false;
  if (t.labelSelector !== undefined && !selectorMatches(t.labelSelector, o.metadata.labels, file)) return false;
  if (t.annotationSelector !== undefined && !selectorMatches(t.annotationSelector, o.metadata.annotations, file)) return false;
  return true;
}

function applyPatches(resources: Res[], entries: unknown[], dir: string, file: string): Res[] {
  let out = resources;
  for (const entry of entries) {
    if (!isObject(entry)) fail('INVALID', file, 'patches entries must be maps with path or patch');
    strictKeys(entry, ['path', 'patch', 'target', 'options'], file, 'patches entry');
    if (entry.options !== undefined) {
      if (!isObject(entry.options)) fail('INVALID', file, 'patches options must be a map');
      strictKeys(entry.options, ['allowNameChange', 'allowKindChange'], file, 'patches options');
      if (entry.options.allowNameChange || entry.options.allowKindChange) fail('UNSUPPORTED', file, 'allowNameChange/allowKindChange are not supported');
    }
    let text: string;
    let where: string;
    if (typeof entry.path === 'string') {
      const p = resolve(dir, entry.path);
      if (!withinRoot(dir, p)) fail('SECURITY', file, `patch file "${entry.path}" is not in or below ${dir}`);
      if (!existsSync(p)) fail('NOT_FOUND', file, `patch file "${entry.path}" does not exist`);
      text = readFileSync(p, 'utf8');
      where = p;
    } else if (typeof entry.patch === 'string') {
      text = entry.patch;
      where = `${file} (inline patch)`;
    } else {
      fail('INVALID', file, 'a patches entry needs path or patch');
    }
    let target: Target | undefined;
    if (entry.target !== undefined) {
      if (!isObject(entry.target)) fail('INVALID', file, 'patch target must be a map');
      strictKeys(entry.target, ['group', 'version', 'kind', 'name', 'namespace', 'labelSelector', 'annotationSelector'], file, 'patch target');
      for (const [k, v] of Object.entries(entry.target)) if (typeof v !== 'string') fail('INVALID', file, `patch target ${k} must be a string`);
      target = entry.target;
    }
    const docs = YAML.parseAllDocuments(text).map((d) => {
      if (d.errors.length) fail('INVALID', where, `patch is not YAML: ${d.errors[0]!.message}`);
      return d.toJS() as unknown;
    }).filter((d) => d !== null && d !== undefined);
    if (docs.length === 1 && Array.isArray(docs[0])) {
      if (!target) fail('INVALID', where, 'a JSON 6902 patch needs a target');
      const ops = docs[0];
      const matched = out.filter((r) => targetMatches(target, r.obj, where));
      if (matched.length === 0) fail('PATCH', where, `no resource matches the target ${JSON.stringify(target)}`);
      out = out.map((r) => (matched.includes(r) ? { ...r, obj: applyJson6902(r.obj, ops, where) as K8sObject } : r));
      continue;
    }
    for (const doc of docs) {
      if (!isObject(doc)) fail('INVALID', where, 'a strategic-merge patch must be a map');
      let matched: Res[];
      if (target) {
        matched = out.filter((r) => targetMatches(target, r.obj, where));
      } else {
        const p = checkObject(doc, where);
        matched = out.filter((r) => r.obj.apiVersion === p.apiVersion && r.obj.kind === p.kind && (r.obj.metadata.name === p.metadata.name || r.originalName === p.metadata.name)
          && (p.metadata.namespace === undefined || p.metadata.namespace === r.obj.metadata.namespace));
        if (matched.length > 1) fail('PATCH', where, `${p.kind} ${p.metadata.name} matches ${matched.length} resources: give metadata.namespace or a target`);
      }
      if (matched.length === 0) fail('PATCH', where, `no resource matches the patch${target ? ` target ${JSON.stringify(target)}` : ` for ${String(doc.kind)} ${String((doc.metadata as Obj | undefined)?.name)}`}`);
      const next: Res[] = [];
      for (const r of out) {
        if (!matched.includes(r)) {
          next.push(r);
          continue;
        }
        const patched = applySmp(r, doc, where);
        if (patched) next.push(patched);
      }
      out = next;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Labels, annotations, replicas, images, namespace

/** Pod-template label paths (kustomize's template label field specs). */
const TEMPLATE_LABEL_PATHS: Record<string, string[][]> = {
  Deployment: [['spec', 'template', 'metadata', 'labels']],
  ReplicaSet: [['spec', 'template', 'metadata', 'labels']],
  ReplicationController: [['spec', 'template', 'metadata', 'labels']],
  DaemonSet: [['spec', 'template', 'metadata', 'labels']],
  StatefulSet: [['spec', 'template', 'metadata', 'labels']],
  Job: [['spec', 'template', 'metadata', 'labels']],
  CronJob: [['spec', 'jobTemplate', 'metadata', 'labels'], ['spec', 'jobTemplate', 'spec', 'template', 'metadata', 'labels']],
};

/** Selector paths kustomize's commonLabels changes: [path, create when missing]. */
const SELECTOR_PATHS: Record<string, [string[], boolean][]> = {
  Service: [[['spec', 'selector'], true]],
  ReplicationController: [[['spec', 'selector'], true]],
  Deployment: [[['spec', 'selector', 'matchLabels'], true]],
  ReplicaSet: [[['spec', 'selector', 'matchLabels'], true]],
  DaemonSet: [[['spec', 'selector', 'matchLabels'], true]],
  // volumeClaimTemplates only with selectors (commonLabels' field specs): whether kustomize's
  // includeTemplates reaches them has changed between releases, and they are immutable once applied.
  StatefulSet: [[['spec', 'selector', 'matchLabels'], true], [['spec', 'volumeClaimTemplates', '[]', 'metadata', 'labels'], true]],
  Job: [[['spec', 'selector', 'matchLabels'], false]],
  CronJob: [[['spec', 'jobTemplate', 'spec', 'selector', 'matchLabels'], false]],
  PodDisruptionBudget: [[['spec', 'selector', 'matchLabels'], false]],
  NetworkPolicy: [
    [['spec', 'podSelector', 'matchLabels'], false],
    [['spec', 'ingress', '[]', 'from', '[]', 'podSelector', 'matchLabels'], false],
    [['spec', 'egress', '[]', 'to', '[]', 'podSelector', 'matchLabels'], false],
  ],
};
const AFFINITY_SELECTOR_PATHS: string[][] = [
  ['spec', 'template', 'spec', 'affinity', 'podAffinity', 'preferredDuringSchedulingIgnoredDuringExecution', '[]', 'podAffinityTerm', 'labelSelector', 'matchLabels'],
  ['spec', 'template', 'spec', 'affinity', 'podAffinity', 'requiredDuringSchedulingIgnoredDuringExecution', '[]', 'labelSelector', 'matchLabels'],
  ['spec', 'template', 'spec', 'affinity', 'podAntiAffinity', 'preferredDuringSchedulingIgnoredDuringExecution', '[]', 'podAffinityTerm', 'labelSelector', 'matchLabels'],
  ['spec', 'template', 'spec', 'affinity', 'podAntiAffinity', 'requiredDuringSchedulingIgnoredDuringExecution', '[]', 'labelSelector', 'matchLabels'],
  ['spec', 'template', 'spec', 'topologySpreadConstraints', '[]', 'labelSelector', 'matchLabels'],
];

/** Merges `pairs` into the map at `path` ('[]' walks every list item); creates it when `create`. */
function addAt(node: unknown, path: readonly string[], pairs: Record<string, string>, create: boolean): void {
  if (path.length === 0) return;
  const [head, ...rest] = path;
  if (head === '[]') {
    if (Array.isArray(node)) for (const item of node) addAt(item, rest, pairs, create);
    return;
  }
  if (!isObject(node)) return;
  if (rest.length === 0) {
    if (node[head!] === undefined || node[head!] === null) {
      if (!create) return;
      node[head!] = {};
    }
    Object.assign(node[head!] as Obj, pairs);
    return;
  }
  if (node[head!] === undefined || node[head!] === null) {
    if (!create || rest[0] === '[]') return;
    node[head!] = {};
  }
  addAt(node[head!], rest, pairs, create);
}

function applyLabels(resources: Res[], pairs: Record<string, string>, selectors: boolean, templates: boolean): void {
  for (const r of resources) {
    const o = r.obj;
    addAt(o, ['metadata', 'labels'], pairs, true);
    if (selectors || templates) for (const p of TEMPLATE_LABEL_PATHS[o.kind] ?? []) addAt(o, p, pairs, true);
    if (selectors) {
      for (const [p, create] of SELECTOR_PATHS[o.kind] ?? []) addAt(o, p, pairs, create);
      if (o.kind === 'Deployment' || o.kind === 'StatefulSet') for (const p of AFFINITY_SELECTOR_PATHS) addAt(o, p, pairs, false);
    }
  }
}

interface ImageRef {
  name: string;
  tag?: string;
  digest?: string;
}

export function parseImage(image: string): ImageRef {
  let rest = image;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
  }
  const slash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  let tag: string | undefined;
  if (colon > slash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
  }
  return { name: rest, tag, digest };
}

function applyImages(resources: Res[], entries: unknown[], file: string): void {
  const rules = entries.map((e) => {
    if (!isObject(e)) fail('INVALID', file, 'images entries must be maps');
    strictKeys(e, ['name', 'newName', 'newTag', 'digest'], file, 'images entry');
    for (const k of ['name', 'newName', 'newTag', 'digest']) {
      if (e[k] !== undefined && typeof e[k] !== 'string') fail('INVALID', file, `images ${k} must be a string (quote a numeric tag: "1.0")`);
    }
    if (typeof e.name !== 'string' || e.name === '') fail('INVALID', file, 'images entry without a name');
    return e as { name: string; newName?: string; newTag?: string; digest?: string };
  });
  const visit = (node: unknown): void => {
    if (Array.isArray(node)) {
      for (const x of node) visit(x);
      return;
    }
    if (!isObject(node)) return;
    for (const [k, v] of Object.entries(node)) {
      if ((k === 'containers' || k === 'initContainers') && Array.isArray(v)) {
        for (const c of v) {
          if (!isObject(c) || typeof c.image !== 'string') continue;
          const ref = parseImage(c.image);
          const rule = rules.find((x) => x.name === ref.name);
          if (!rule) continue;
          const name = rule.newName ?? ref.name;
          if (rule.digest) c.image = `${name}@${rule.digest}`;
          else if (rule.newTag) c.image = `${name}:${rule.newTag}`;
          else c.image = name + (ref.tag ? `:${ref.tag}` : '') + (ref.digest ? `@${ref.digest}` : '');
        }
      }
      visit(v);
    }
  };
  for (const r of resources) visit(r.obj);
}

function applyReplicas(resources: Res[], entries: unknown[], file: string): void {
  for (const e of entries) {
    if (!isObject(e)) fail('INVALID', file, 'replicas entries must be maps');
    strictKeys(e, ['name', 'count'], file, 'replicas entry');
    if (typeof e.name !== 'string' || !Number.isInteger(e.count) || (e.count as number) < 0) fail('INVALID', file, 'replicas entries need a name and a whole count');
    const hits = resources.filter((r) => ['Deployment', 'ReplicaSet', 'ReplicationController', 'StatefulSet'].includes(r.obj.kind) && r.obj.metadata.name === e.name);
    if (hits.length === 0) fail('INVALID', file, `replicas: no Deployment, ReplicaSet, ReplicationController or StatefulSet named ${e.name}`);
    for (const r of hits) {
      const spec: Obj = isObject(r.obj.spec) ? r.obj.spec : (r.obj.spec = {});
      spec.replicas = e.count;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Accumulation, hashing, references, order

function accumulate(dir: string, stack: readonly string[]): Res[] {
  const file = kustomizationFile(dir);
  if (!file) fail('NOT_FOUND', dir, `no ${KUSTOMIZATION_FILES.join(' / ')} in this directory`);
  if (stack.includes(dir)) fail('INVALID', file, `kustomizations include each other: ${[...stack, dir].join(' -> ')}`);
  let k: unknown;
  try {
    k = YAML.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    fail('INVALID', file, `not YAML: ${(err as Error).message}`, err);
  }
  if (k === null || k === undefined) k = {};
  if (!isObject(k)) fail('INVALID', file, 'a kustomization must be a map');
  for (const key of Object.keys(k)) {
    if (KNOWN_UNSUPPORTED.has(key)) fail('UNSUPPORTED', file, `"${key}" is a kustomize field this renderer does not implement; use ${SUPPORTED_FIELDS.size} supported fields: ${[...SUPPORTED_FIELDS].join(', ')}`);
    if (!SUPPORTED_FIELDS.has(key)) fail('UNKNOWN_FIELD', file, `unknown field "${key}" (kustomize would reject it too)`);
  }
  if (k.apiVersion !== undefined && k.apiVersion !== 'kustomize.config.k8s.io/v1beta1') fail('UNSUPPORTED', file, `apiVersion ${show(k.apiVersion)} (expected kustomize.config.k8s.io/v1beta1)`);
  if (k.kind !== undefined && k.kind !== 'Kustomization') fail('UNSUPPORTED', file, `kind ${show(k.kind)} (expected Kustomization)`);

  let resources: Res[] = [];
  const ids = new Map<string, string>();
  const add = (r: Res): void => {
    const id = idOf(r.obj);
    const prev = ids.get(id);
    if (prev) fail('CONFLICT', file, `${describe(r.obj)} is defined twice (${prev} and ${r.source})`);
    ids.set(id, r.source);
    resources.push(r);
  };
  for (const entry of asList(k.resources, file, 'resources')) {
    if (typeof entry !== 'string') fail('INVALID', file, 'resources entries must be paths');
    if (/^[a-z]+:\/\/|^git@|^github\.com\//.test(entry)) fail('UNSUPPORTED', file, `remote resource "${entry}" is not supported (offline renderer)`);
    const p = resolve(dir, entry);
    if (!existsSync(p)) fail('NOT_FOUND', file, `resource "${entry}" does not exist`);
    if (statSync(p).isDirectory()) {
      for (const r of accumulate(p, [...stack, dir])) add(r);
    } else {
      if (!withinRoot(dir, p)) fail('SECURITY', file, `resource file "${entry}" is not in or below ${dir} (kustomize's load restrictor rejects it; include its directory's kustomization instead)`);
      for (const obj of parseObjects(readFileSync(p, 'utf8'), p)) add({ obj, source: p, hash: false, originalName: obj.metadata.name });
    }
  }
  const defaults = parseOptions(k.generatorOptions, file, 'generatorOptions');
  for (const g of asList(k.configMapGenerator, file, 'configMapGenerator')) add(generate('ConfigMap', g, dir, file, defaults));
  for (const g of asList(k.secretGenerator, file, 'secretGenerator')) add(generate('Secret', g, dir, file, defaults));

  resources = resources.map((r) => ({ ...r, obj: clone(r.obj) }));
  resources = applyPatches(resources, asList(k.patches, file, 'patches'), dir, file);

  if (k.namespace !== undefined) {
    if (typeof k.namespace !== 'string' || k.namespace === '') fail('INVALID', file, 'namespace must be a name');
    for (const r of resources) if (!CLUSTER_SCOPED.has(r.obj.kind)) r.obj.metadata.namespace = k.namespace;
  }
  for (const l of asList(k.labels, file, 'labels')) {
    if (!isObject(l)) fail('INVALID', file, 'labels entries must be maps');
    strictKeys(l, ['pairs', 'includeSelectors', 'includeTemplates', 'fields'], file, 'labels entry');
    if (l.fields !== undefined) fail('UNSUPPORTED', file, 'labels[].fields is not supported by this renderer');
    applyLabels(resources, asStringMap(l.pairs, file, 'labels.pairs'), l.includeSelectors === true, l.includeTemplates === true);
  }
  if (k.commonLabels !== undefined) applyLabels(resources, asStringMap(k.commonLabels, file, 'commonLabels'), true, true);
  if (k.commonAnnotations !== undefined) {
    const pairs = asStringMap(k.commonAnnotations, file, 'commonAnnotations');
    for (const r of resources) {
      addAt(r.obj, ['metadata', 'annotations'], pairs, true);
      for (const p of TEMPLATE_LABEL_PATHS[r.obj.kind] ?? []) addAt(r.obj, [...p.slice(0, -1), 'annotations'], pairs, true);
    }
  }
  applyReplicas(resources, asList(k.replicas, file, 'replicas'), file);
  applyImages(resources, asList(k.images, file, 'images'), file);
  return resources;
}

/** Where pod specs sit in each workload kind. */
export function podSpecsOf(o: K8sObject): Obj[] {
  const spec = isObject(o.spec) ? o.spec : undefined;
  const tmpl = (s: unknown): Obj | undefined => (isObject(s) && isObject(s.template) && isObject(s.template.spec) ? s.template.spec : undefined);
  let ps: Obj | undefined;
  if (o.kind === 'Pod') ps = spec;
  else if (['Deployment', 'ReplicaSet', 'ReplicationController', 'DaemonSet', 'StatefulSet', 'Job'].includes(o.kind)) ps = tmpl(spec);
  else if (o.kind === 'CronJob' && isObject(spec?.jobTemplate)) ps = tmpl(spec.jobTemplate.spec);
  return ps ? [ps] : [];
}

/** Every ConfigMap/Secret name a pod spec refers to, as mutable slots (kustomize's nameReference paths). */
export function podSpecReferences(ps: Obj): { kind: 'ConfigMap' | 'Secret'; holder: Obj; field: string; where: string }[] {
  const out: { kind: 'ConfigMap' | 'Secret'; holder: Obj; field: string; where: string }[] = [];
  const push = (kind: 'ConfigMap' | 'Secret', holder: unknown, field: string, where: string): void => {
    if (isObject(holder) && typeof holder[field] === 'string') out.push({ kind, holder, field, where });
  };
  for (const v of Array.isArray(ps.volumes) ? ps.volumes : []) {
    if (!isObject(v)) continue;
    push('ConfigMap', v.configMap, 'name', `volume ${String(v.name)}`);
    push('Secret', v.secret, 'secretName', `volume ${String(v.name)}`);
    if (isObject(v.projected) && Array.isArray(v.projected.sources)) {
      for (const s of v.projected.sources) {
        if (!isObject(s)) continue;
        push('ConfigMap', s.configMap, 'name', `volume ${String(v.name)}`);
        push('Secret', s.secret, 'name', `volume ${String(v.name)}`);
      }
    }
  }
  for (const list of ['containers', 'initContainers', 'ephemeralContainers']) {
    for (const c of Array.isArray(ps[list]) ? ps[list] : []) {
      if (!isObject(c)) continue;
      for (const e of Array.isArray(c.env) ? c.env : []) {
        if (!isObject(e) || !isObject(e.valueFrom)) continue;
        push('ConfigMap', e.valueFrom.configMapKeyRef, 'name', `container ${String(c.name)} env ${String(e.name)}`);
        push('Secret', e.valueFrom.secretKeyRef, 'name', `container ${String(c.name)} env ${String(e.name)}`);
      }
      for (const e of Array.isArray(c.envFrom) ? c.envFrom : []) {
        if (!isObject(e)) continue;
        push('ConfigMap', e.configMapRef, 'name', `container ${String(c.name)} envFrom`);
        push('Secret', e.secretRef, 'name', `container ${String(c.name)} envFrom`);
      }
    }
  }
  for (const s of Array.isArray(ps.imagePullSecrets) ? ps.imagePullSecrets : []) push('Secret', s, 'name', 'imagePullSecrets');
  return out;
}

/** Kustomize's last steps: hash suffixes on generated names, then references fixed up to match. */
function hashAndFixReferences(resources: Res[]): void {
  const renamed = new Map<string, string>();
  for (const r of resources) {
    if (!r.hash) continue;
    r.obj.metadata.name = `${r.originalName}-${nameHash(r.obj)}`;
    renamed.set(`${r.obj.kind}/${r.obj.metadata.namespace ?? ''}/${r.originalName}`, r.obj.metadata.name);
  }
  if (renamed.size === 0) return;
  for (const r of resources) {
    const ns = r.obj.metadata.namespace ?? '';
    const slots = podSpecsOf(r.obj).flatMap(podSpecReferences);
    if (r.obj.kind === 'ServiceAccount') {
      for (const list of ['imagePullSecrets', 'secrets']) {
        const items = r.obj[list];
        if (Array.isArray(items)) for (const s of items) if (isObject(s) && typeof s.name === 'string') slots.push({ kind: 'Secret', holder: s, field: 'name', where: list });
      }
    }
    for (const s of slots) {
      const to = renamed.get(`${s.kind}/${ns}/${String(s.holder[s.field])}`);
      if (to) s.holder[s.field] = to;
    }
  }
}

/** Kustomize's legacy output order: namespaces, accounts, config, services, workloads; webhooks last. */
const ORDER_FIRST = ['Namespace', 'ResourceQuota', 'StorageClass', 'CustomResourceDefinition', 'ServiceAccount', 'PodSecurityPolicy', 'Role', 'ClusterRole',
  'RoleBinding', 'ClusterRoleBinding', 'ConfigMap', 'Secret', 'Endpoints', 'Service', 'LimitRange', 'PriorityClass', 'PersistentVolume',
  'PersistentVolumeClaim', 'Deployment', 'StatefulSet', 'CronJob', 'PodDisruptionBudget'];
const ORDER_LAST = ['MutatingWebhookConfiguration', 'ValidatingWebhookConfiguration'];

function legacyOrder(a: K8sObject, b: K8sObject): number {
  const rank = (o: K8sObject): number => {
    const i = ORDER_FIRST.indexOf(o.kind);
    if (i >= 0) return i;
    const j = ORDER_LAST.indexOf(o.kind);
    return j >= 0 ? 1000 + j : 500;
  };
  const key = (o: K8sObject): string => `${o.apiVersion}|${o.kind}|${o.metadata.namespace ?? ''}|${o.metadata.name}`;
  return rank(a) - rank(b) || (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0);
}

/** Renders the kustomization in `dir` with the files it came from. Throws KustomizeError. */
export function renderWithSources(dir: string): RenderedResource[] {
  const resources = accumulate(resolve(dir), []);
  hashAndFixReferences(resources);
  return resources.sort((a, b) => legacyOrder(a.obj, b.obj)).map((r) => ({ object: r.obj, source: r.source }));
}

/** The objects `kustomize build dir` (and `kubectl apply -k dir`) would produce. Throws KustomizeError. */
export function renderKustomization(dir: string): K8sObject[] {
  return renderWithSources(dir).map((r) => r.object);
}

/** YAML stream of rendered objects, as `kustomize build` prints it. */
export function toYamlStream(objects: readonly K8sObject[]): string {
  return objects.map((o) => YAML.stringify(o, { lineWidth: 0 })).join('---\n');
}

