/**
 * Offline validation of the Kubernetes manifests (deploy/k8s): every overlay is rendered with the
 * kustomize renderer (kustomize.ts) and each object is checked, without a cluster:
 *
 * 1. Schema: Kubernetes kinds by kubernetes-models' validators, prometheus-operator kinds by
 *    @kubernetes-models/prometheus-operator, Strimzi kinds by the JSON schemas in
 *    deploy/k8s/schemas/strimzi (ajv). Fields the kind does not have are errors too (the API server's
 *    strict field validation rejects them; kubernetes-models does not), found by walking the object
 *    along the models' TypeScript types. A kind none of these knows is invalid.
 * 2. Configuration: each of our containers (found by image name) sets only its service's env vars
 *    (HARVESTER_*, REPLICATOR_*, RESTORER_*, from `env` and `envFrom` ConfigMaps), literal values parse
 *    with the service's own parseConfig, the settings a service cannot start without are there, and
 *    every *_FILE setting points into a mounted volume that holds that key.
 * 3. Ports: the container port `metrics` equals the service's *_METRICS_PORT and its Dockerfile's
 *    EXPOSE; liveness probes /healthz and readiness probes /readyz on it; PodMonitors and Services
 *    select pods that exist, on ports those pods name.
 * 4. Security of every pod: non-root, read-only root filesystem, no privilege escalation, all
 *    capabilities dropped, not privileged, RuntimeDefault seccomp, no host namespaces or hostPath, no
 *    service-account token, CPU and memory requests and a memory limit.
 * 5. References: Secrets, ConfigMaps, PVCs and ServiceAccounts a pod uses are rendered in the same
 *    overlay, or created by Strimzi for a Kafka/KafkaUser rendered there, or listed in OPERATOR_SECRETS
 *    for that overlay; Strimzi resources name a rendered Kafka.
 * 6. Kafka: the topics the services use exist with room for their largest produce request, each
 *    service's KafkaUser's ACLs allow what it does, and the bootstrap address is a listener of the
 *    rendered Kafka with the client's TLS/SASL settings that admits the client's pods.
 *
 * Everything found is returned as `invalid` lines; nothing is thrown.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv, type ValidateFunction } from 'ajv';
import ts from 'typescript';
import { ConfigError, parseConfig, toEnv, type Schema } from '@ckpt/common';
import { HARVESTER_ENV_PREFIX, HARVESTER_SERVICE_SCHEMA } from '@ckpt/harvester';
import { REPLICATOR_ENV_PREFIX, REPLICATOR_SCHEMA } from '@ckpt/replicator';
import { RESTORER_ENV_PREFIX, RESTORER_SCHEMA } from '@ckpt/restorer';
import { PodMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor';
import { PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';
import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { StatefulSet } from 'kubernetes-models/apps/v1/StatefulSet';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler';
import { CronJob } from 'kubernetes-models/batch/v1/CronJob';
import { Job } from 'kubernetes-models/batch/v1/Job';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { ClusterRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole';
import { ClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding';
import { Role } from 'kubernetes-models/rbac.authorization.k8s.io/v1/Role';
import { RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Namespace } from 'kubernetes-models/v1/Namespace';
import { PersistentVolumeClaim } from 'kubernetes-models/v1/PersistentVolumeClaim';
import { Pod } from 'kubernetes-models/v1/Pod';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import type { CheckResult } from './check-result.ts';
import { imageDeclarations as dockerfileDeclarations, type Service as ServiceName } from './dockerfiles.ts';
import { parseImage, podSpecReferences, podSpecsOf, renderWithSources, type K8sObject } from './kustomize.ts';
import { asArray, asObjects, isObject, type JsonObject } from './json-shape.ts';
import { NetworkPolicies, type Peer, type PodEndpoint } from './network-policies.ts';
import { selectorMatches } from './selectors.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
/** Every directory here is an overlay that must render and validate. */
export const OVERLAYS_DIR = join(ROOT, 'deploy/k8s/overlays');
const STRIMZI_SCHEMAS_DIR = join(ROOT, 'deploy/k8s/schemas/strimzi');

/**
 * Secrets that no overlay renders because the cluster's operator creates them, with the keys they
 * hold; docs/deploy.md ("Production") lists the same. Strimzi's Secrets are not here: they are derived
 * from the Kafka and KafkaUser objects an overlay renders (strimziSecrets()).
 */
export const OPERATOR_SECRETS: readonly { name: string; namespace: string; keys: readonly string[]; overlays: readonly string[]; createdBy: string }[] = [
  { name: 'ckpt-redis-auth', namespace: 'ckpt', keys: ['password'], overlays: ['production'], createdBy: 'kubectl -n ckpt create secret generic ckpt-redis-auth --from-literal=password=$(openssl rand -hex 32)' },
  { name: 'ckpt-redis-tls', namespace: 'ckpt', keys: ['tls.crt', 'tls.key', 'ca.crt'], overlays: ['production'], createdBy: 'a cert-manager Certificate for ckpt-redis.ckpt.svc (docs/deploy.md)' },
];

/**
 * Record overhead on top of the harvester's largest produce request (HARVESTER_MAX_REQUEST_BYTES): one
 * VM's records, which Kafka keeps as one record batch, so the pages topic's max.message.bytes must hold
 * both.
 */
const RECORD_OVERHEAD_BYTES = 64 << 10;

type Obj = JsonObject;
const objs = asObjects;
const obj = (v: unknown): Obj => (isObject(v) ? v : {});
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
const describe = (o: K8sObject): string => `${o.kind} ${o.metadata.namespace ? o.metadata.namespace + '/' : ''}${o.metadata.name}`;

// ---------------------------------------------------------------------------------------------
// 1. Schemas

interface ModelClass { new(data: never): { validate(): void } }

/** Kinds validated by kubernetes-models, with the TypeScript interface the unknown-field walk follows. */
const MODELS: Record<string, { model: ModelClass; module: string; iface: string }> = {
  'v1/Namespace': { model: Namespace, module: 'kubernetes-models/v1/Namespace', iface: 'INamespace' },
  'v1/ServiceAccount': { model: ServiceAccount, module: 'kubernetes-models/v1/ServiceAccount', iface: 'IServiceAccount' },
  'v1/ConfigMap': { model: ConfigMap, module: 'kubernetes-models/v1/ConfigMap', iface: 'IConfigMap' },
  'v1/Secret': { model: Secret, module: 'kubernetes-models/v1/Secret', iface: 'ISecret' },
  'v1/Service': { model: Service, module: 'kubernetes-models/v1/Service', iface: 'IService' },
  'v1/PersistentVolumeClaim': { model: PersistentVolumeClaim, module: 'kubernetes-models/v1/PersistentVolumeClaim', iface: 'IPersistentVolumeClaim' },
  'v1/Pod': { model: Pod, module: 'kubernetes-models/v1/Pod', iface: 'IPod' },
  'apps/v1/Deployment': { model: Deployment, module: 'kubernetes-models/apps/v1/Deployment', iface: 'IDeployment' },
  'apps/v1/DaemonSet': { model: DaemonSet, module: 'kubernetes-models/apps/v1/DaemonSet', iface: 'IDaemonSet' },
  'apps/v1/StatefulSet': { model: StatefulSet, module: 'kubernetes-models/apps/v1/StatefulSet', iface: 'IStatefulSet' },
  'batch/v1/Job': { model: Job, module: 'kubernetes-models/batch/v1/Job', iface: 'IJob' },
  'batch/v1/CronJob': { model: CronJob, module: 'kubernetes-models/batch/v1/CronJob', iface: 'ICronJob' },
  'policy/v1/PodDisruptionBudget': { model: PodDisruptionBudget, module: 'kubernetes-models/policy/v1/PodDisruptionBudget', iface: 'IPodDisruptionBudget' },
  'networking.k8s.io/v1/NetworkPolicy': { model: NetworkPolicy, module: 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy', iface: 'INetworkPolicy' },
  'rbac.authorization.k8s.io/v1/Role': { model: Role, module: 'kubernetes-models/rbac.authorization.k8s.io/v1/Role', iface: 'IRole' },
  'rbac.authorization.k8s.io/v1/RoleBinding': { model: RoleBinding, module: 'kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding', iface: 'IRoleBinding' },
  'rbac.authorization.k8s.io/v1/ClusterRole': { model: ClusterRole, module: 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole', iface: 'IClusterRole' },
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': { model: ClusterRoleBinding, module: 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding', iface: 'IClusterRoleBinding' },
  'autoscaling/v2/HorizontalPodAutoscaler': { model: HorizontalPodAutoscaler, module: 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler', iface: 'IHorizontalPodAutoscaler' },
  'monitoring.coreos.com/v1/PodMonitor': { model: PodMonitor, module: '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor', iface: 'IPodMonitor' },
  'monitoring.coreos.com/v1/ServiceMonitor': { model: ServiceMonitor, module: '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor', iface: 'IServiceMonitor' },
  'monitoring.coreos.com/v1/PrometheusRule': { model: PrometheusRule, module: '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule', iface: 'IPrometheusRule' },
};

/** Strimzi kinds, validated by the JSON schemas of deploy/k8s/schemas/strimzi. */
const STRIMZI: Record<string, string> = {
  'kafka.strimzi.io/v1beta2/Kafka': 'kafka.json',
  'kafka.strimzi.io/v1beta2/KafkaNodePool': 'kafkanodepool.json',
  'kafka.strimzi.io/v1beta2/KafkaTopic': 'kafkatopic.json',
  'kafka.strimzi.io/v1beta2/KafkaUser': 'kafkauser.json',
};

/** Kinds this validator checks, as `apiVersion/kind`. */
export const KNOWN_KINDS: readonly string[] = [...Object.keys(MODELS), ...Object.keys(STRIMZI)];

let strimziValidators: Map<string, ValidateFunction> | null = null;

function strimziValidator(key: string): ValidateFunction {
  if (!strimziValidators) {
    const ajv = new Ajv({ allErrors: true, strictSchema: true, strictTypes: false, strictRequired: false, strictTuples: false });
    ajv.addSchema(JSON.parse(readFileSync(join(STRIMZI_SCHEMAS_DIR, 'common.json'), 'utf8')) as object);
    strimziValidators = new Map(Object.entries(STRIMZI).map(([k, file]) => [k, ajv.compile(JSON.parse(readFileSync(join(STRIMZI_SCHEMAS_DIR, file), 'utf8')) as object)]));
  }
  return strimziValidators.get(key)!;
}

/**
 * Fields an object has that its kind does not: the object is walked along the kubernetes-models
 * TypeScript interface of its kind (the OpenAPI schema they are generated from), which knows every
 * field, including in maps (index signatures) and IntOrString unions.
 */
class UnknownFields {
  private readonly checker: ts.TypeChecker;
  private readonly roots = new Map<string, ts.Type>();

  constructor() {
    const keys = Object.keys(MODELS);
    const file = join(ROOT, 'deploy/src/__manifest-kinds.ts');
    const text = keys.map((k, i) => `import type { ${MODELS[k]!.iface} as T${i} } from '${MODELS[k]!.module}';`).join('\n')
      + `\nexport interface Roots {\n${keys.map((k, i) => `  ${JSON.stringify(k)}: T${i};`).join('\n')}\n}\n`;
    const options: ts.CompilerOptions = {
      module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, target: ts.ScriptTarget.ES2022,
      lib: ['lib.es2022.d.ts'], types: [], strict: true, skipLibCheck: true, noEmit: true,
    };
    const host = ts.createCompilerHost(options);
    const getSourceFile = host.getSourceFile.bind(host);
    const fileExists = host.fileExists.bind(host);
    host.getSourceFile = (name, lang, ...rest) => (name === file ? ts.createSourceFile(name, text, lang) : getSourceFile(name, lang, ...rest));
    host.fileExists = (name) => name === file || fileExists(name);
    const program = ts.createProgram([file], options, host);
    this.checker = program.getTypeChecker();
    const source = program.getSourceFile(file)!;
    const moduleSymbol = this.checker.getSymbolAtLocation(source)!;
    const rootsSymbol = this.checker.getExportsOfModule(moduleSymbol).find((s) => s.name === 'Roots')!;
    const rootsType = this.checker.getDeclaredTypeOfSymbol(rootsSymbol);
    for (const k of keys) {
      const p = this.checker.getPropertyOfType(rootsType, k);
      if (p) this.roots.set(k, this.checker.getTypeOfSymbol(p));
    }
  }

  find(key: string, obj: unknown): string[] {
    const root = this.roots.get(key);
    if (!root) return [`no TypeScript type for ${key} (is kubernetes-models installed?)`];
    const out: string[] = [];
    this.walk(obj, root, '', out);
    return out;
  }

  private objectMembers(type: ts.Type): ts.Type[] {
    const t = this.checker.getNonNullableType(type);
    return (t.isUnion() ? t.types : [t]).filter((m) => (m.flags & ts.TypeFlags.Object) !== 0 || m.isIntersection());
  }

  private walk(value: unknown, type: ts.Type, path: string, out: string[]): void {
    if (this.checker.getNonNullableType(type).flags & (ts.TypeFlags.Any | ts.TypeFlags.Unknown)) return;
    const members = this.objectMembers(type);
    if (members.length === 0) return;
    if (Array.isArray(value)) {
      const element = members.map((m) => this.checker.getIndexTypeOfType(m, ts.IndexKind.Number)).find(Boolean);
      if (element) value.forEach((v, i) => this.walk(v, element, `${path}[${i}]`, out));
      return;
    }
    if (!isObject(value)) return;
    for (const [k, v] of Object.entries(value)) {
      let next: ts.Type | undefined;
      for (const m of members) {
        const p = this.checker.getPropertyOfType(m, k);
        next = p ? this.checker.getTypeOfSymbol(p) : this.checker.getIndexTypeOfType(m, ts.IndexKind.String);
        if (next) break;
      }
      const at = path ? `${path}.${k}` : k;
      if (next) this.walk(v, next, at, out);
      else out.push(at);
    }
  }
}

let unknownFields: UnknownFields | null = null;

function schemaProblems(o: K8sObject): string[] {
  const key = `${o.apiVersion}/${o.kind}`;
  const model = MODELS[key];
  if (model) {
    const problems: string[] = [];
    try {
      new model.model(o as never).validate();
    } catch (err) {
      problems.push(`schema: ${(err as Error).message.replace(/\s+/g, ' ').replace(/\bdata\//g, '')}`);
    }
    unknownFields ??= new UnknownFields();
    for (const f of unknownFields.find(key, o)) problems.push(`schema: unknown field ${f} (not in ${key})`);
    return problems;
  }
  if (STRIMZI[key]) {
    const validate = strimziValidator(key);
    if (validate(o)) return [];
    return (validate.errors ?? []).map((e) => {
      const extra = e.keyword === 'additionalProperties' ? ` "${String((e.params as { additionalProperty?: string }).additionalProperty)}"` : '';
      return `schema: ${e.instancePath || '/'} ${e.message ?? e.keyword}${extra} (deploy/k8s/schemas/strimzi/${STRIMZI[key]})`;
    });
  }
  return [`unknown kind ${key}: not a Kubernetes, prometheus-operator or Strimzi kind this validator knows (${KNOWN_KINDS.length} kinds)`];
}

// ---------------------------------------------------------------------------------------------
// Index of one overlay's objects

class Overlay {
  readonly byKind = new Map<string, K8sObject[]>();

  constructor(readonly name: string, readonly objects: readonly K8sObject[]) {
    for (const o of objects) {
      const l = this.byKind.get(o.kind) ?? [];
      l.push(o);
      this.byKind.set(o.kind, l);
    }
  }

  kind(kind: string): K8sObject[] {
    return this.byKind.get(kind) ?? [];
  }

  find(kind: string, namespace: string | undefined, name: string): K8sObject | undefined {
    return this.kind(kind).find((o) => o.metadata.name === name && (o.metadata.namespace ?? '') === (namespace ?? ''));
  }

  /** Keys of a Secret or ConfigMap: rendered, created by Strimzi, or created by the operator; null if none of these. */
  keysOf(kind: 'Secret' | 'ConfigMap', namespace: string | undefined, name: string): string[] | null {
    const o = this.find(kind, namespace, name);
    if (o) return [...Object.keys(isObject(o.data) ? o.data : {}), ...Object.keys(isObject(o.binaryData) ? o.binaryData : {}), ...Object.keys(isObject(o.stringData) ? o.stringData : {})];
    if (kind !== 'Secret') return null;
    const s = this.strimziSecrets().find((x) => x.name === name && x.namespace === namespace)
      ?? OPERATOR_SECRETS.find((x) => x.name === name && x.namespace === namespace && x.overlays.includes(this.name));
    return s ? [...s.keys] : null;
  }

  /** Secrets Strimzi creates for the Kafka clusters and KafkaUsers rendered here. */
  strimziSecrets(): { name: string; namespace: string | undefined; keys: string[] }[] {
    const out: { name: string; namespace: string | undefined; keys: string[] }[] = [];
    for (const k of this.kind('Kafka')) out.push({ name: `${k.metadata.name}-cluster-ca-cert`, namespace: k.metadata.namespace, keys: ['ca.crt', 'ca.p12', 'ca.password'] });
    for (const u of this.kind('KafkaUser')) {
      const auth = str((isObject(u.spec) && isObject(u.spec.authentication) ? u.spec.authentication : {}).type);
      if (auth === 'scram-sha-512') out.push({ name: u.metadata.name, namespace: u.metadata.namespace, keys: ['password', 'sasl.jaas.config'] });
      if (auth === 'tls') out.push({ name: u.metadata.name, namespace: u.metadata.namespace, keys: ['ca.crt', 'user.crt', 'user.key', 'user.p12', 'user.password'] });
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// 2. Service configuration


interface ServiceSpec {
  image: string;
  prefix: string;
  schema: Schema;
  /** Settings the service cannot run without (schema keys). */
  required: string[];
}

const SERVICES: Record<ServiceName, ServiceSpec> = {
  harvester: { image: 'ckpt-harvester', prefix: HARVESTER_ENV_PREFIX, schema: HARVESTER_SERVICE_SCHEMA, required: ['vmId', 'kafkaBrokers'] },
  replicator: { image: 'ckpt-replicator', prefix: REPLICATOR_ENV_PREFIX, schema: REPLICATOR_SCHEMA, required: ['kafkaBrokers', 'redisUrl'] },
  restorer: { image: 'ckpt-restorer', prefix: RESTORER_ENV_PREFIX, schema: RESTORER_SCHEMA, required: ['vm', 'redisUrl'] },
};

/** Environment variables Node.js itself reads; any other name outside the service's prefix is unread. */
const NODE_ENV_VARS = new Set(['NODE_OPTIONS', 'NODE_ENV', 'NODE_EXTRA_CA_CERTS', 'TZ']);

/** The service an image is, by its repository's last path segment (so a registry override still matches). */
export function serviceOfImage(image: string): ServiceName | null {
  const repo = parseImage(image).name.split('/').at(-1);
  return (Object.keys(SERVICES) as ServiceName[]).find((s) => SERVICES[s].image === repo) ?? null;
}

interface EnvValue {
  /** Known when literal or from a rendered ConfigMap. */
  value?: string;
  source: 'image' | 'literal' | 'configMap' | 'secret' | 'field' | 'unresolved';
  where: string;
}

/** A container's environment as the runtime builds it: the image's ENV, then envFrom, then env (later wins). */
function containerEnv(c: Obj, namespace: string | undefined, ov: Overlay, image: Record<string, string>): Map<string, EnvValue> {
  const env = new Map<string, EnvValue>(Object.entries(image).map(([k, v]) => [k, { value: v, source: 'image', where: 'the image\'s ENV' }]));
  for (const from of objs(c.envFrom)) {
    const prefix = str(from.prefix) ?? '';
    const cm = isObject(from.configMapRef) ? str(from.configMapRef.name) : undefined;
    const sec = isObject(from.secretRef) ? str(from.secretRef.name) : undefined;
    if (cm) {
      const o = ov.find('ConfigMap', namespace, cm);
      for (const [k, v] of Object.entries(o && isObject(o.data) ? o.data : {})) env.set(prefix + k, { value: String(v), source: 'configMap', where: `ConfigMap ${cm}` });
    }
    if (sec) for (const k of ov.keysOf('Secret', namespace, sec) ?? []) env.set(prefix + k, { source: 'secret', where: `Secret ${sec}` });
  }
  for (const e of objs(c.env)) {
    const name = str(e.name);
    if (!name) continue;
    if (typeof e.value === 'string') {
      env.set(name, { value: e.value, source: 'literal', where: 'env' });
    } else if (isObject(e.valueFrom)) {
      const vf = e.valueFrom;
      if (isObject(vf.configMapKeyRef)) {
        const o = ov.find('ConfigMap', namespace, str(vf.configMapKeyRef.name) ?? '');
        const v = o && isObject(o.data) ? o.data[str(vf.configMapKeyRef.key) ?? ''] : undefined;
        env.set(name, typeof v === 'string' ? { value: v, source: 'configMap', where: 'env' } : { source: 'unresolved', where: 'env' });
      } else if (isObject(vf.secretKeyRef)) {
        env.set(name, { source: 'secret', where: 'env' });
      } else {
        env.set(name, { source: 'field', where: 'env' });
      }
    } else {
      env.set(name, { value: '', source: 'literal', where: 'env' });
    }
  }
  return env;
}

interface ContainerConfig {
  service: ServiceName;
  /** Parsed literal settings, defaults where not set (settings in `bad` are missing). */
  config: Record<string, unknown>;
  /** Settings set from a Secret, the downward API or a missing ConfigMap: present, value unknown. */
  opaque: Set<string>;
  /** Settings whose value does not parse (already reported). */
  bad: Set<string>;
}

/** Checks one of our containers' environment against its service's schema; returns what it parsed. */
function checkServiceEnv(service: ServiceName, c: Obj, namespace: string | undefined, ov: Overlay, problems: string[]): ContainerConfig {
  const spec = SERVICES[service];
  const byEnv = new Map(Object.keys(spec.schema).map((k) => [toEnv(spec.prefix, k), k]));
  const env = containerEnv(c, namespace, ov, imageDeclarations(service).env);
  const literal: Record<string, string> = {};
  const opaque = new Set<string>();
  for (const [name, v] of env) {
    const key = byEnv.get(name);
    if (!key) {
      // The Dockerfiles' own ENV are deploy/src/dockerfiles.ts's to check.
      if (NODE_ENV_VARS.has(name) || v.source === 'image') continue;
      const near = [...byEnv.keys()].find((n) => editDistance(n, name) <= 2);
      problems.push(name.startsWith(spec.prefix)
        ? `env ${name} (${v.where}) is not a setting of the ${service}${near ? ` (did you mean ${near}?)` : ''}; its settings: node --import tsx services/${service}/src/main.ts --help`
        : `env ${name} (${v.where}) is not read by the ${service}: its settings start with ${spec.prefix}`);
      continue;
    }
    if (v.value !== undefined) literal[name] = v.value;
    else opaque.add(key);
  }
  // Key by key, so one bad value does not hide the others' checks.
  const config: Record<string, unknown> = {};
  const bad = new Set<string>();
  for (const [key, field] of Object.entries(spec.schema)) {
    try {
      Object.assign(config, parseConfig({ [key]: field }, { env: literal, envPrefix: spec.prefix }));
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      for (const p of err.problems) problems.push(`env: ${p}`);
      bad.add(key);
    }
  }
  for (const key of spec.required) {
    const name = toEnv(spec.prefix, key);
    if (!opaque.has(key) && !(literal[name] ?? '').trim()) problems.push(`env ${name} is required: the ${service} cannot start without it`);
  }
  problems.push(...serviceRules(service, config, new Set([...opaque, ...bad])));
  return { service, config, opaque, bad };
}

/** What each service's main.ts (and packages/common/src/connections.ts) refuse or silently ignore. */
function serviceRules(service: ServiceName, cfg: Record<string, unknown>, opaque: Set<string>): string[] {
  const p: string[] = [];
  const e = (key: string): string => toEnv(SERVICES[service].prefix, key);
  const set = (key: string): boolean => opaque.has(key) || (typeof cfg[key] === 'string' && cfg[key] !== '');
  if (service === 'harvester' && !opaque.has('vmId') && !/^[A-Za-z0-9._:-]{1,200}$/.test(String(cfg.vmId))) p.push(`env ${e('vmId')} "${String(cfg.vmId)}" may only use A-Z a-z 0-9 . _ : - (1-200 characters)`);
  if (service !== 'restorer') {
    if (cfg.kafkaSaslMechanism !== undefined && cfg.kafkaSaslMechanism !== 'none' && (!set('kafkaSaslUsername') || !set('kafkaSaslPasswordFile'))) p.push(`SASL ${str(cfg.kafkaSaslMechanism) ?? ''} needs ${e('kafkaSaslUsername')} and ${e('kafkaSaslPasswordFile')}`);
    for (const k of ['kafkaTlsCaFile', 'kafkaTlsCertFile', 'kafkaTlsKeyFile']) if (set(k) && cfg.kafkaTls === false) p.push(`${e(k)} is ignored: ${e('kafkaTls')} is not true`);
  }
  if (service !== 'harvester') {
    const url = str(cfg.redisUrl) ?? '';
    if (!opaque.has('redisUrl') && url && !/^rediss?:\/\//.test(url)) p.push(`env ${e('redisUrl')} must start with redis:// or rediss://, got "${url}"`);
    if (set('redisTlsCaFile') && !opaque.has('redisUrl') && !url.startsWith('rediss://')) p.push(`${e('redisTlsCaFile')} is ignored: ${e('redisUrl')} is not rediss://`);
  }
  if (service === 'restorer') {
    const resume = Number(cfg.resumeMs);
    if (!set('out') && resume === 0 && !opaque.has('resumeMs')) p.push(`say where the image goes: ${e('out')} or ${e('resumeMs')}`);
    if (set('out') && resume > 0) p.push(`${e('out')} and ${e('resumeMs')} exclude each other`);
    if (cfg.keepRunning === true && resume === 0) p.push(`${e('keepRunning')} needs ${e('resumeMs')}`);
  }
  return p;
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
  }
  return d[a.length]![b.length]!;
}

/** Each *File setting (an input file) must be inside a volume mount that provides that key. */
function checkFileSettings(cc: ContainerConfig, c: Obj, ps: Obj, namespace: string | undefined, ov: Overlay, problems: string[]): void {
  const spec = SERVICES[cc.service];
  for (const key of Object.keys(spec.schema)) {
    if (!key.endsWith('File') || key === 'metricsFile') continue;
    const path = cc.config[key];
    if (typeof path !== 'string' || path === '') continue;
    const name = toEnv(spec.prefix, key);
    const mount = objs(c.volumeMounts).filter((m) => typeof m.mountPath === 'string' && (path === m.mountPath || path.startsWith(`${m.mountPath}/`)))
      .sort((a, b) => String(b.mountPath).length - String(a.mountPath).length)[0];
    if (!mount) {
      problems.push(`${name}=${path} is on no volume mount of the container`);
      continue;
    }
    const vol = objs(ps.volumes).find((v) => v.name === mount.name);
    if (!vol) continue; // reported by the reference check
    const rel = path === mount.mountPath ? str(mount.subPath) ?? '' : path.slice(String(mount.mountPath).length + 1);
    for (const [kind, holder, field] of [['Secret', vol.secret, 'secretName'], ['ConfigMap', vol.configMap, 'name']] as const) {
      if (!isObject(holder)) continue;
      const items = objs(holder.items);
      const keys = items.length ? items.map((i) => str(i.path) ?? '') : ov.keysOf(kind, namespace, str(holder[field]) ?? '');
      if (keys && !keys.includes(rel)) problems.push(`${name}=${path}: the ${kind} volume ${String(vol.name)} has no file ${rel} (it has ${keys.join(', ') || 'none'})`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Ports, probes, selectors

const imageCache = new Map<ServiceName, { expose: number[]; env: Record<string, string> }>();

/** What a service's image declares in its final stage (services/<service>/Dockerfile): EXPOSEd ports and ENV. */
export function imageDeclarations(service: ServiceName): { expose: number[]; env: Record<string, string> } {
  let d = imageCache.get(service);
  if (!d) {
    d = dockerfileDeclarations(readFileSync(join(ROOT, `services/${service}/Dockerfile`), 'utf8'));
    imageCache.set(service, d);
  }
  return d;
}

const LONG_RUNNING = new Set(['Deployment', 'DaemonSet', 'StatefulSet', 'ReplicaSet', 'Pod']);

function checkPortsAndProbes(o: K8sObject, cc: ContainerConfig, c: Obj, problems: string[]): void {
  if (cc.bad.has('metricsPort')) return;
  const port = Number(cc.config.metricsPort);
  const portName = toEnv(SERVICES[cc.service].prefix, 'metricsPort');
  const metrics = objs(c.ports).find((p) => p.name === 'metrics');
  const expose = imageDeclarations(cc.service).expose;
  if (Number.isFinite(port) && port >= 0) {
    if (!metrics) problems.push(`serves metrics on ${port} (${portName}) but has no container port named metrics`);
    else if (metrics.containerPort !== port) problems.push(`container port metrics is ${String(metrics.containerPort)} but ${portName} is ${port}`);
    if (!expose.includes(port)) problems.push(`${portName} ${port} is not what services/${cc.service}/Dockerfile EXPOSEs (${expose.join(', ') || 'nothing'})`);
  } else if (metrics) {
    problems.push(`has a container port named metrics but ${portName} turns the metrics server off`);
  }
  if (!LONG_RUNNING.has(o.kind)) return;
  if (!(Number.isFinite(port) && port >= 0)) {
    problems.push(`a long-running ${o.kind} must serve /metrics, /healthz and /readyz: set ${portName} (the image EXPOSEs ${expose.join(', ')})`);
    return;
  }
  for (const [probe, path] of [['livenessProbe', '/healthz'], ['readinessProbe', '/readyz']] as const) {
    const get = isObject(c[probe]) && isObject(c[probe].httpGet) ? c[probe].httpGet : null;
    if (!get) problems.push(`${probe} must be an httpGet of ${path} on port metrics`);
    else if (get.path !== path || (get.port !== 'metrics' && get.port !== port)) problems.push(`${probe} is ${String(get.path)} on port ${String(get.port)}: expected ${path} on port metrics (${port})`);
  }
}

interface PodTemplate {
  owner: K8sObject;
  namespace: string | undefined;
  labels: Record<string, string>;
  spec: Obj;
}

function podTemplates(ov: Overlay): PodTemplate[] {
  const out: PodTemplate[] = [];
  for (const o of ov.objects) {
    for (const spec of podSpecsOf(o)) {
      const meta = o.kind === 'Pod' ? o.metadata
        : o.kind === 'CronJob' ? ((((o.spec as Obj).jobTemplate as Obj).spec as Obj).template as Obj).metadata
          : ((o.spec as Obj).template as Obj).metadata;
      const labels = isObject(meta) && isObject(meta.labels) ? meta.labels as Record<string, string> : {};
      out.push({ owner: o, namespace: o.metadata.namespace, labels, spec });
    }
  }
  return out;
}

const portNamesOf = (ps: Obj): string[] => [...objs(ps.containers), ...objs(ps.initContainers)].flatMap((c) => objs(c.ports).map((p) => str(p.name) ?? ''));

function checkMonitorsAndServices(ov: Overlay, pods: PodTemplate[], report: (o: K8sObject, msg: string) => void): void {
  for (const pm of ov.kind('PodMonitor')) {
    const spec = isObject(pm.spec) ? pm.spec : {};
    const nsSel = isObject(spec.namespaceSelector) ? spec.namespaceSelector : {};
    const inNs = (ns: string | undefined): boolean => nsSel.any === true || (Array.isArray(nsSel.matchNames) ? nsSel.matchNames.includes(ns) : ns === pm.metadata.namespace);
    const matched = pods.filter((p) => inNs(p.namespace) && selectorMatches(spec.selector, p.labels));
    if (matched.length === 0) {
      report(pm, 'selects no pod rendered in this overlay');
      continue;
    }
    for (const ep of objs(spec.podMetricsEndpoints)) {
      const port = str(ep.port);
      if (!port) report(pm, 'a podMetricsEndpoint has no port name');
      else if (!matched.some((p) => portNamesOf(p.spec).includes(port))) report(pm, `port ${port} is named by none of the pods it selects (${matched.map((p) => p.owner.metadata.name).join(', ')})`);
      if ((str(ep.path) ?? '/metrics') !== '/metrics') report(pm, `path ${String(ep.path)}: the services serve /metrics`);
    }
    const jobLabel = str(spec.jobLabel);
    for (const p of matched) if (jobLabel && !(jobLabel in p.labels)) report(pm, `jobLabel ${jobLabel} is not a label of ${describe(p.owner)}'s pods`);
  }
  for (const svc of ov.kind('Service')) {
    const spec = isObject(svc.spec) ? svc.spec : {};
    if (!isObject(spec.selector)) continue;
    const matched = pods.filter((p) => p.namespace === svc.metadata.namespace && selectorMatches({ matchLabels: spec.selector }, p.labels));
    if (matched.length === 0) {
      report(svc, 'selects no pod rendered in this overlay');
      continue;
    }
    for (const port of objs(spec.ports)) {
      if (typeof port.targetPort === 'string' && !matched.some((p) => portNamesOf(p.spec).includes(port.targetPort as string))) report(svc, `targetPort ${port.targetPort} is named by none of its pods`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 4. Security

function checkSecurity(p: PodTemplate, ov: Overlay): string[] {
  const out: string[] = [];
  const ps = p.spec;
  const psc = isObject(ps.securityContext) ? ps.securityContext : {};
  for (const f of ['hostNetwork', 'hostPID', 'hostIPC']) if (ps[f] === true) out.push(`${f}: true`);
  for (const v of objs(ps.volumes)) if (v.hostPath !== undefined) out.push(`volume ${String(v.name)} is a hostPath (use a device plugin or a PVC)`);
  const sa = ov.find('ServiceAccount', p.namespace, str(ps.serviceAccountName) ?? 'default');
  if (ps.automountServiceAccountToken !== false && sa?.automountServiceAccountToken !== false) out.push('mounts a service-account token: set automountServiceAccountToken: false');
  const seccompPod = isObject(psc.seccompProfile) ? psc.seccompProfile.type : undefined;
  for (const c of [...objs(ps.initContainers), ...objs(ps.containers)]) {
    const at = `container ${String(c.name)}`;
    const sc = isObject(c.securityContext) ? c.securityContext : {};
    if ((sc.runAsNonRoot ?? psc.runAsNonRoot) !== true) out.push(`${at}: runAsNonRoot is not true`);
    if ((sc.runAsUser ?? psc.runAsUser) === 0) out.push(`${at}: runAsUser is 0 (root)`);
    if (sc.readOnlyRootFilesystem !== true) out.push(`${at}: readOnlyRootFilesystem is not true`);
    if (sc.allowPrivilegeEscalation !== false) out.push(`${at}: allowPrivilegeEscalation is not false`);
    if (sc.privileged === true) out.push(`${at}: privileged`);
    const caps = isObject(sc.capabilities) ? sc.capabilities : {};
    if (!asArray(caps.drop).includes('ALL')) out.push(`${at}: capabilities do not drop ALL`);
    if (asArray(caps.add).length) out.push(`${at}: adds capabilities ${asArray(caps.add).map(String).join(', ')}`);
    const seccomp = isObject(sc.seccompProfile) ? sc.seccompProfile.type : seccompPod;
    if (seccomp !== 'RuntimeDefault' && seccomp !== 'Localhost') out.push(`${at}: no RuntimeDefault seccomp profile`);
    const res = isObject(c.resources) ? c.resources : {};
    const req = isObject(res.requests) ? res.requests : {};
    const lim = isObject(res.limits) ? res.limits : {};
    for (const r of ['cpu', 'memory']) if (req[r] === undefined) out.push(`${at}: no ${r} request`);
    if (lim.memory === undefined) out.push(`${at}: no memory limit`);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// 5. References

function checkReferences(p: PodTemplate, ov: Overlay): string[] {
  const out: string[] = [];
  const ps = p.spec;
  const refs = podSpecReferences(ps);
  for (const r of refs) {
    const name = String(r.holder[r.field]);
    if (r.holder.optional === true) continue;
    const keys = ov.keysOf(r.kind, p.namespace, name);
    if (!keys) {
      out.push(`${r.where}: ${r.kind} ${name} is not rendered in this overlay${r.kind === 'Secret' ? ', not created by Strimzi for a resource here, nor listed in OPERATOR_SECRETS for it (deploy/src/manifests.ts)' : ''}`);
      continue;
    }
    const key = str(r.holder.key);
    if (key !== undefined && !keys.includes(key)) out.push(`${r.where}: ${r.kind} ${name} has no key ${key} (it has ${keys.join(', ')})`);
    for (const item of objs(r.holder.items)) if (!keys.includes(str(item.key) ?? '')) out.push(`${r.where}: ${r.kind} ${name} has no key ${String(item.key)} (it has ${keys.join(', ')})`);
  }
  const claimTemplates = p.owner.kind === 'StatefulSet' ? objs((p.owner.spec as Obj).volumeClaimTemplates).map((t) => str((t.metadata as Obj | undefined)?.name)) : [];
  const volumes = new Set<string>(claimTemplates.filter((x): x is string => !!x));
  for (const v of objs(ps.volumes)) {
    volumes.add(str(v.name) ?? '');
    if (isObject(v.persistentVolumeClaim)) {
      const claim = str(v.persistentVolumeClaim.claimName) ?? '';
      if (!ov.find('PersistentVolumeClaim', p.namespace, claim)) out.push(`volume ${String(v.name)}: PersistentVolumeClaim ${claim} is not rendered in this overlay`);
    }
  }
  for (const c of [...objs(ps.initContainers), ...objs(ps.containers)]) {
    for (const m of objs(c.volumeMounts)) if (!volumes.has(str(m.name) ?? '')) out.push(`container ${String(c.name)}: volumeMount ${String(m.name)} names no volume of the pod`);
  }
  const sa = str(ps.serviceAccountName);
  if (sa && sa !== 'default' && !ov.find('ServiceAccount', p.namespace, sa)) out.push(`ServiceAccount ${sa} is not rendered in this overlay`);
  return out;
}

// ---------------------------------------------------------------------------------------------
// 6. Kafka

interface KafkaUse {
  owner: K8sObject;
  service: ServiceName;
  config: Record<string, unknown>;
}

function topicConfig(t: K8sObject): Obj {
  return isObject(t.spec) && isObject(t.spec.config) ? t.spec.config : {};
}

/** True when an ACL of the user allows `op` on every resource named `name` (or starting with it, for prefix). */
function aclAllows(user: K8sObject, type: string, name: string, op: string, prefix = false): boolean {
  const acls = objs(isObject(user.spec) && isObject(user.spec.authorization) ? user.spec.authorization.acls : []);
  return acls.some((a) => {
    const r = isObject(a.resource) ? a.resource : {};
    if ((str(a.type) ?? 'allow') !== 'allow' || r.type !== type) return false;
    const ops = [...asArray(a.operations), ...(a.operation ? [a.operation] : [])];
    if (!ops.includes(op) && !ops.includes('All')) return false;
    if (type === 'cluster') return true;
    const rn = str(r.name) ?? '';
    if ((str(r.patternType) ?? 'literal') === 'prefix') return name.startsWith(rn);
    return rn === '*' || (!prefix && rn === name);
  });
}

/** Each address of a service's KAFKA_BROKERS, its port, and the rendered Kafka it names (`<name>-kafka-bootstrap...:<port>`), if any. */
function kafkaAddresses(ov: Overlay, config: Record<string, unknown>): { address: string; port: string; kafka: K8sObject | undefined }[] {
  return (str(config.kafkaBrokers) ?? '').split(',').map((a) => a.trim()).filter(Boolean).map((address) => {
    const [host = '', port = ''] = address.split(':');
    return { address, port, kafka: ov.kind('Kafka').find((k) => host.startsWith(`${k.metadata.name}-kafka-bootstrap`)) };
  });
}

/**
 * The bootstrap addresses that name a rendered Kafka (`<name>-kafka-bootstrap...:<port>`) must be one of
 * its listeners, with the client's TLS and SASL settings, and the listener's networkPolicyPeers (if any)
 * must admit the client's pods.
 */
function checkListener(ov: Overlay, u: KafkaUse, report: (o: K8sObject, msg: string) => void): void {
  const e = (key: string): string => toEnv(SERVICES[u.service].prefix, key);
  const pod = podTemplates(ov).find((p) => p.owner === u.owner);
  for (const { address, port, kafka } of kafkaAddresses(ov, u.config)) {
    if (!kafka) continue;
    const listeners = objs(isObject(kafka.spec) && isObject(kafka.spec.kafka) ? kafka.spec.kafka.listeners : []);
    const listener = listeners.find((l) => l.port === Number(port));
    if (!listener) {
      report(u.owner, `${e('kafkaBrokers')} ${address}: the Kafka ${kafka.metadata.name} has no listener on port ${port} (it has ${listeners.map((l) => String(l.port)).join(', ')})`);
      continue;
    }
    if ((listener.tls === true) !== (u.config.kafkaTls === true)) report(u.owner, `${e('kafkaTls')} is ${String(u.config.kafkaTls)} but the listener ${String(listener.name)} has tls: ${String(listener.tls)}`);
    const auth = isObject(listener.authentication) ? listener.authentication.type : undefined;
    if (auth === 'scram-sha-512' && u.config.kafkaSaslMechanism !== 'scram-sha-512') report(u.owner, `the listener ${String(listener.name)} wants SCRAM-SHA-512 but ${e('kafkaSaslMechanism')} is ${String(u.config.kafkaSaslMechanism)}`);
    const peers = objs(listener.networkPolicyPeers);
    if (pod && peers.length && !peers.some((peer) => isObject(peer.podSelector) && peer.namespaceSelector === undefined && selectorMatches(peer.podSelector, pod.labels))) {
      report(kafka, `the listener ${String(listener.name)}'s networkPolicyPeers do not admit the ${u.service}'s pods (${describe(u.owner)})`);
    }
  }
}

function checkKafka(ov: Overlay, uses: KafkaUse[], report: (o: K8sObject, msg: string) => void): void {
  for (const kind of ['KafkaTopic', 'KafkaUser', 'KafkaNodePool']) {
    for (const o of ov.kind(kind)) {
      const cluster = o.metadata.labels?.['strimzi.io/cluster'];
      if (!cluster) report(o, 'has no strimzi.io/cluster label: no Strimzi operator picks it up');
      else if (!ov.find('Kafka', o.metadata.namespace, cluster)) report(o, `strimzi.io/cluster ${cluster} names no Kafka rendered in its namespace`);
    }
  }
  if (ov.kind('Kafka').length === 0) return;
  const topic = (name: string): K8sObject | undefined => ov.kind('KafkaTopic').find((t) => (isObject(t.spec) && str(t.spec.topicName) ? t.spec.topicName : t.metadata.name) === name);
  const maxBytes = (t: K8sObject | undefined): number => Number(topicConfig(t ?? ({} as K8sObject))['max.message.bytes'] ?? 1048588);
  const harvesterRecord = Math.max(0, ...uses.filter((u) => u.service === 'harvester').map((u) => Number(u.config.maxRecordBytes)));
  for (const u of uses) {
    const c = u.config;
    const e = (key: string): string => toEnv(SERVICES[u.service].prefix, key);
    const used = u.service === 'harvester' ? ['pagesTopic', 'controlTopic'] : ['pagesTopic', 'controlTopic', 'deadLetterTopic'];
    for (const key of used) if (!topic(String(c[key]))) report(u.owner, `${e(key)} ${String(c[key])}: no KafkaTopic of that name is rendered`);
    const pages = topic(String(c.pagesTopic));
    if (u.service === 'harvester' && pages) {
      const retention = Number(topicConfig(pages)['retention.bytes'] ?? -1);
      const window = Number(c.windowBytes);
      if (retention > 0 && window > retention) report(u.owner, `${e('windowBytes')} ${window} exceeds ${String(c.pagesTopic)}'s retention.bytes ${retention} per partition: records would be deleted before the replicator applies them`);
      const request = Math.max(Number(c.maxRequestBytes), Number(c.maxRecordBytes));
      const need = request + RECORD_OVERHEAD_BYTES;
      if (maxBytes(pages) < need) report(pages, `max.message.bytes ${maxBytes(pages)} is below ${need}: the harvester sends up to ${request} bytes of one VM's records as one record batch (${e('maxRequestBytes')})`);
    }
    if (u.service === 'replicator') {
      if (Number(c.maxRecordBytes) < harvesterRecord) report(u.owner, `${e('maxRecordBytes')} ${String(c.maxRecordBytes)} is below the harvester's ${harvesterRecord}: its records would be dead-lettered as oversize`);
      const dead = topic(String(c.deadLetterTopic));
      if (dead && pages && maxBytes(dead) < maxBytes(pages)) report(dead, `max.message.bytes ${maxBytes(dead)} is below ${String(c.pagesTopic)}'s ${maxBytes(pages)}: a parked record could not be written`);
    }
    checkListener(ov, u, report);
    if (c.kafkaSaslMechanism === 'none') continue;
    const username = str(c.kafkaSaslUsername) ?? '';
    const user = ov.find('KafkaUser', u.owner.metadata.namespace, username);
    if (!user) {
      report(u.owner, `${e('kafkaSaslUsername')} ${username}: no KafkaUser of that name is rendered`);
      continue;
    }
    const auth = isObject(user.spec) && isObject(user.spec.authentication) ? user.spec.authentication.type : undefined;
    if (c.kafkaSaslMechanism === 'scram-sha-512' && auth !== 'scram-sha-512') report(user, `authentication is ${String(auth)} but the ${u.service} uses SASL scram-sha-512`);
    const need: [string, string, string, boolean][] = u.service === 'harvester'
      ? [['topic', String(c.pagesTopic), 'Write', false], ['topic', String(c.controlTopic), 'Read', false], ['group', 'ckpt-harvester-', 'Read', true], ['group', 'ckpt-harvester-', 'Delete', true],
        ...(c.writerHeartbeatMs === 0 ? [] : [['topic', String(c.controlTopic), 'Write', false] as [string, string, string, boolean]])]
      : [['topic', String(c.pagesTopic), 'Read', false], ['topic', String(c.controlTopic), 'Write', false], ['topic', String(c.deadLetterTopic), 'Write', false], ['group', String(c.groupId), 'Read', false]];
    if (c.kafkaIdempotent === true) need.push(['cluster', 'kafka-cluster', 'IdempotentWrite', false]);
    for (const [type, name, op, prefix] of need) {
      if (!aclAllows(user, type, name, op, prefix)) report(user, `no ACL allows ${op} on ${type} ${name}${prefix ? '* (the harvester\'s groups are ckpt-harvester-<uuid>)' : ''}, which the ${u.service} needs`);
    }
  }
}

/** Kafka's default segment.bytes: a partition holds up to retention.bytes plus its open segment. */
const KAFKA_SEGMENT_BYTES = 1 << 30;
/** Share of a broker volume the retained topics may fill (Kafka stops when its disk is full). */
const KAFKA_DISK_FILL = 0.9;
const GIB = 2 ** 30;

/**
 * Each broker's volumes must hold its share of what the byte-capped topics retain: partitions ×
 * replicas × (retention.bytes + segment.bytes) ÷ brokers, with KAFKA_DISK_FILL to spare. Topics capped
 * only by time (ckpt.control: a few small records per epoch) are not counted.
 */
function checkKafkaDisks(ov: Overlay, report: (o: K8sObject, msg: string) => void): void {
  for (const kafka of ov.kind('Kafka')) {
    const ns = kafka.metadata.namespace;
    const inCluster = (o: K8sObject): boolean => o.metadata.namespace === ns && o.metadata.labels?.['strimzi.io/cluster'] === kafka.metadata.name;
    const pools = ov.kind('KafkaNodePool').filter((p) => inCluster(p) && asArray(obj(p.spec).roles).includes('broker'));
    const brokers = pools.reduce((n, p) => n + Number(obj(p.spec).replicas ?? 0), 0);
    if (brokers === 0) continue;
    let need = 0;
    const parts: string[] = [];
    for (const t of ov.kind('KafkaTopic').filter(inCluster)) {
      const cfg = topicConfig(t);
      const retention = Number(cfg['retention.bytes'] ?? -1);
      if (!(retention > 0)) continue;
      const partitions = Number(obj(t.spec).partitions ?? 1);
      const replicas = Math.min(Number(obj(t.spec).replicas ?? 1), brokers);
      const perBroker = (partitions * replicas * (retention + Number(cfg['segment.bytes'] ?? KAFKA_SEGMENT_BYTES))) / brokers;
      need += perBroker;
      parts.push(`${str(obj(t.spec).topicName) ?? t.metadata.name} ${(perBroker / GIB).toFixed(1)} GiB`);
    }
    for (const pool of pools) {
      const storage = obj(obj(pool.spec).storage);
      const volumes = storage.type === 'jbod' ? objs(storage.volumes) : [storage];
      if (volumes.some((v) => v.type !== 'persistent-claim')) continue; // ephemeral: sized by the node, not here
      const size = volumes.reduce((n, v) => n + (memoryBytes(v.size) ?? 0), 0);
      if (size * KAFKA_DISK_FILL < need) {
        report(pool, `its volumes (${(size / GIB).toFixed(1)} GiB per broker) do not hold what the topics retain per broker with ${Math.round((1 - KAFKA_DISK_FILL) * 100)}% to spare: ${(need / GIB).toFixed(1)} GiB (${parts.join(', ')}; partitions × replicas × (retention.bytes + segment.bytes) ÷ brokers (${brokers})); a full disk stops the broker`);
      }
    }
  }
}

/** A PVC a restorer writes its image to must hold the largest guest's memory (the image files are that long). */
function checkRestoreVolumes(ov: Overlay, uses: ServiceUse[], report: (o: K8sObject, msg: string) => void): void {
  const guests = uses.filter((u) => u.service === 'harvester' && typeof u.config.memMib === 'number');
  if (guests.length === 0) return;
  const largest = Math.max(...guests.map((u) => u.config.memMib as number));
  for (const u of uses.filter((x) => x.service === 'restorer')) {
    for (const v of objs(u.pod.spec.volumes)) {
      const claim = str(obj(v.persistentVolumeClaim).claimName);
      const pvc = claim ? ov.find('PersistentVolumeClaim', u.pod.namespace, claim) : undefined;
      if (!pvc) continue;
      const requested = obj(obj(obj(pvc.spec).resources).requests).storage;
      const size = memoryBytes(requested);
      if (size !== null && size < largest * 2 ** 20) {
        report(pvc, `requests ${String(requested)} but the restorer (${describe(u.pod.owner)}) writes images of up to ${largest} MiB there (the largest HARVESTER_MEM_MIB)`);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 7. Network policies: the connections each service opens, and its metrics port, are allowed

interface ServiceUse {
  pod: PodTemplate;
  service: ServiceName;
  config: Record<string, unknown>;
}

const endpointOf = (p: PodTemplate): PodEndpoint => ({
  namespace: p.namespace ?? 'default',
  labels: p.labels,
  ports: [...objs(p.spec.containers), ...objs(p.spec.initContainers)].flatMap((c) => objs(c.ports).map((q) => ({
    name: str(q.name), containerPort: Number(q.containerPort), protocol: str(q.protocol) ?? 'TCP',
  }))),
});
const labelText = (labels: Record<string, string>): string => Object.entries(labels).map(([k, v]) => `${k}=${v}`).join(',');

/** One connection a service opens, resolved to its far end: rendered pods, a Kafka's brokers, or outside (null). */
interface Connection { what: string; peer: Peer | null; owner: K8sObject | null; port: number; protocol: 'TCP' | 'UDP' }

/** Strimzi's broker pods of the Kafka an address names (kafkaAddresses()), by the labels Strimzi gives them. */
function kafkaConnection({ address, port, kafka }: ReturnType<typeof kafkaAddresses>[number]): Connection {
  const peer = kafka ? {
    namespace: kafka.metadata.namespace ?? 'default',
    labels: { 'strimzi.io/cluster': kafka.metadata.name, 'strimzi.io/kind': 'Kafka', 'strimzi.io/name': `${kafka.metadata.name}-kafka`, 'strimzi.io/broker-role': 'true' },
  } : null;
  return { what: `Kafka ${address}`, peer, owner: kafka ?? null, port: Number(port), protocol: 'TCP' };
}

/**
 * The Redis pods a URL names through a rendered Service (`<service>[.<namespace>...]`), and the
 * container port its Service port leads to (policies see the pod's port, not the Service's).
 */
function redisConnection(ov: Overlay, pods: PodTemplate[], from: PodTemplate, url: string, report: (msg: string) => void): Connection | null {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return null; // reported by the settings check
  }
  const [name = '', ns = from.namespace ?? 'default'] = u.hostname.split('.');
  const port = Number(u.port || 6379);
  const svc = ov.find('Service', ns, name);
  if (!svc) return { what: `Redis ${u.host}`, peer: null, owner: null, port, protocol: 'TCP' };
  const svcSpec = obj(svc.spec);
  const entry = objs(svcSpec.ports).find((p) => p.port === port);
  if (!entry) {
    report(`REDIS_URL ${u.host}: the Service ${ns}/${name} has no port ${port} (it has ${objs(svcSpec.ports).map((p) => String(p.port)).join(', ')})`);
    return null;
  }
  const target = pods.find((p) => (p.namespace ?? 'default') === ns && selectorMatches(svcSpec.selector !== undefined ? { matchLabels: svcSpec.selector } : undefined, p.labels));
  if (!target) return { what: `Redis ${u.host}`, peer: null, owner: null, port, protocol: 'TCP' };
  const peer = endpointOf(target);
  const tp = entry.targetPort ?? entry.port;
  const containerPort = typeof tp === 'string' ? peer.ports.find((c) => c.name === tp)?.containerPort : Number(tp);
  if (containerPort === undefined) {
    report(`REDIS_URL ${u.host}: the Service ${ns}/${name}'s targetPort ${String(tp)} names no container port of ${describe(target.owner)}`);
    return null;
  }
  return { what: `Redis ${u.host} (${describe(target.owner)}, port ${containerPort})`, peer, owner: target.owner, port: containerPort, protocol: 'TCP' };
}

/**
 * Every connection a service's pods open (Kafka, Redis, and DNS to find them) must be allowed out of the
 * client by the policies that select it and into a rendered server by those that select the server;
 * its metrics port must be open to some scraper. (Kafka's own ingress comes from Strimzi: checkListener.)
 */
function checkNetworkPolicies(ov: Overlay, pods: PodTemplate[], uses: ServiceUse[], report: (o: K8sObject, msg: string) => void): void {
  const policies = new NetworkPolicies(ov.objects);
  const refused = (names: string[], direction: string, whose: string): string => `the NetworkPolicies that select ${whose} for ${direction} (${[...names].sort().join(', ')}) allow no such flow`;
  for (const { pod, service, config } of uses) {
    const at = (msg: string): void => report(pod.owner, `${service}: ${msg}`);
    const client = endpointOf(pod);
    const connections: Connection[] = [];
    if (service !== 'restorer') connections.push(...kafkaAddresses(ov, config).map(kafkaConnection));
    if (service !== 'harvester' && typeof config.redisUrl === 'string' && config.redisUrl) {
      const c = redisConnection(ov, pods, pod, config.redisUrl, at);
      if (c) connections.push(c);
    }
    if (connections.length > 0) connections.push({ what: 'DNS (UDP 53), to resolve those names', peer: null, owner: null, port: 53, protocol: 'UDP' });
    for (const c of connections) {
      const { protocol } = c;
      const out = policies.egressRefused(client, { peer: c.peer, port: c.port, protocol });
      if (out) at(`no egress to ${c.what}: ${refused(out, 'egress', `its pods (${labelText(pod.labels)})`)}`);
      if (c.owner && c.peer?.ports) {
        const into = policies.ingressRefused(c.peer, { peer: client, port: c.port, protocol });
        if (into) report(c.owner, `no ingress from the ${service} (${describe(pod.owner)}) on port ${c.port}: ${refused(into, 'ingress', 'its pods')}`);
      }
    }
    const metrics = client.ports.find((p) => p.name === 'metrics');
    if (metrics) {
      const into = policies.ingressRefused(client, { peer: null, port: metrics.containerPort, protocol: 'TCP' });
      if (into) at(`nothing can scrape its metrics port ${metrics.containerPort}: ${refused(into, 'ingress', `its pods (${labelText(pod.labels)})`)}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Putting it together

/** A Kubernetes memory quantity in bytes (`768Mi`, `5Gi`, `500M`, `1073741824`), or null. */
export function memoryBytes(q: unknown): number | null {
  const m = typeof q === 'string' || typeof q === 'number' ? /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(String(q)) : null;
  if (!m) return null;
  const unit: Record<string, number> = { '': 1, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, M: 1e6, G: 1e9, T: 1e12 };
  return Number(m[1]) * unit[m[2] ?? '']!;
}

/**
 * Headroom the harvester needs above its guest: Node.js (about 150 MiB), the 256 MB initial heap it
 * fills before its first full collection, rings and records in flight. Measured 2026-11-25: 668-679 MB
 * resident with a 256 MiB guest, so about 420 MiB over the guest; the rule keeps some margin.
 */
export const HARVESTER_HEADROOM_MIB = 512;

/** The harvester's memory limit must hold its guest plus HARVESTER_HEADROOM_MIB (else the kernel kills it, and its guest with it). */
function checkGuestMemory(cc: ContainerConfig, c: Obj): string[] {
  if (cc.service !== 'harvester' || typeof cc.config.memMib !== 'number') return [];
  const limited = obj(obj(c.resources).limits).memory;
  const limit = memoryBytes(limited);
  const needMib = cc.config.memMib + HARVESTER_HEADROOM_MIB;
  if (limit === null) return [`no memory limit: give it at least the guest (HARVESTER_MEM_MIB ${cc.config.memMib}) plus ${HARVESTER_HEADROOM_MIB} MiB`];
  if (limit < needMib * 2 ** 20) {
    return [`memory limit ${String(limited)} is below the guest (HARVESTER_MEM_MIB ${cc.config.memMib} MiB) plus ${HARVESTER_HEADROOM_MIB} MiB for Node.js and its 256 MB initial heap: ${needMib} MiB; the kernel would kill the harvester and its guest`];
  }
  return [];
}

/** Every problem in one overlay's rendered objects, as `<overlay>: <Kind ns/name>: <problem>`. */
export function checkObjects(overlayName: string, objects: readonly K8sObject[]): string[] {
  const ov = new Overlay(overlayName, objects);
  const problems: string[] = [];
  const report = (o: K8sObject, msg: string): void => void problems.push(`${overlayName}: ${describe(o)}: ${msg}`);
  for (const o of objects) for (const p of schemaProblems(o)) report(o, p);

  const pods = podTemplates(ov);
  const kafkaUses: KafkaUse[] = [];
  const uses: ServiceUse[] = [];
  for (const p of pods) {
    for (const msg of checkSecurity(p, ov)) report(p.owner, msg);
    for (const msg of checkReferences(p, ov)) report(p.owner, msg);
    for (const c of objs(p.spec.containers)) {
      const service = serviceOfImage(str(c.image) ?? '');
      if (!service) continue;
      const local: string[] = [];
      const cc = checkServiceEnv(service, c, p.namespace, ov, local);
      checkFileSettings(cc, c, p.spec, p.namespace, ov, local);
      checkPortsAndProbes(p.owner, cc, c, local);
      local.push(...checkGuestMemory(cc, c));
      for (const msg of local) report(p.owner, `container ${String(c.name)} (${service}): ${msg}`);
      if (service !== 'restorer' && (cc.config.kafkaBrokers || cc.opaque.has('kafkaBrokers'))) kafkaUses.push({ owner: p.owner, service, config: cc.config });
      uses.push({ pod: p, service, config: cc.config });
    }
  }
  checkMonitorsAndServices(ov, pods, report);
  checkKafka(ov, kafkaUses, report);
  checkNetworkPolicies(ov, pods, uses, report);
  checkKafkaDisks(ov, report);
  checkRestoreVolumes(ov, uses, report);
  return problems;
}

/** The overlays under `dir` (each directory with a kustomization). */
export function overlayNames(dir = OVERLAYS_DIR): string[] {
  return readdirSync(dir).filter((n) => statSync(join(dir, n)).isDirectory()).sort();
}

/**
 * `npm run validate:deploy`'s manifest check: renders every overlay and checks every object. `count` is
 * the number of Kubernetes objects rendered over all overlays. Never throws: problems (a render that
 * fails included) are `invalid` lines.
 */
export async function validateManifests(dir = OVERLAYS_DIR): Promise<CheckResult> {
  const invalid: string[] = [];
  let count = 0;
  try {
    const names = overlayNames(dir);
    if (names.length === 0) invalid.push(`${dir}: no overlay`);
    for (const name of names) {
      let objects: K8sObject[];
      try {
        objects = renderWithSources(join(dir, name)).map((r) => r.object);
      } catch (err) {
        invalid.push(`${name}: cannot render: ${(err as Error).message}`);
        continue;
      }
      count += objects.length;
      invalid.push(...checkObjects(name, objects));
    }
  } catch (err) {
    invalid.push(`manifests: the check failed: ${(err as Error).stack ?? String(err)}`);
  }
  return Promise.resolve({ count, invalid, unknownMetricRefs: [] });
}
