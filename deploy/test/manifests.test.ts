/**
 * The Kubernetes manifests (deploy/k8s) and their offline validation: every overlay renders and
 * validates; the validator catches each kind of mistake (checked on mutated in-memory copies of the
 * rendered dev overlay, never on files in the repo); the kustomize renderer behaves like kustomize on
 * small fixtures in a temporary directory.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { KustomizeError, nameHash, renderKustomization, type K8sObject } from '../src/kustomize.ts';
import { OPERATOR_SECRETS, OVERLAYS_DIR, checkObjects, overlayNames, serviceOfImage, validateManifests } from '../src/manifests.ts';

/** A rendered object, walked with get/node/nodes below (plain JSON, so every step is checked at run time). */
type Node = Record<string, unknown>;

/** The value at a dotted path (`spec.template.spec.containers.0.image`). */
const get = (o: unknown, path: string): unknown => {
  let cur = o;
  for (const k of path.split('.')) cur = (cur as Node | undefined)?.[k];
  return cur;
};
/** The object at a path; fails the test when there is none. */
const node = (o: unknown, path: string): Node => {
  const v = get(o, path);
  assert.ok(typeof v === 'object' && v !== null && !Array.isArray(v), `${path} is an object`);
  return v as Node;
};
/** The list of objects at a path; fails the test when there is none. */
const nodes = (o: unknown, path: string): Node[] => {
  const v = get(o, path);
  assert.ok(Array.isArray(v), `${path} is a list`);
  return v as Node[];
};

const render = (name: string): K8sObject[] => renderKustomization(join(OVERLAYS_DIR, name));
const countKinds = (objects: readonly K8sObject[], namespace: string): Record<string, number> => {
  const out: Record<string, number> = {};
  for (const o of objects) if ((o.metadata.namespace ?? namespace) === namespace) out[o.kind] = (out[o.kind] ?? 0) + 1;
  return out;
};
/** The object of that kind and name (generated names match without their hash suffix). */
const find = (objects: readonly unknown[], kind: string, name: string): Node => {
  const o = (objects as K8sObject[]).find((x) => x.kind === kind && (x.metadata.name === name || x.metadata.name.replace(/-[a-z0-9]{10}$/, '') === name));
  assert.ok(o, `${kind} ${name} is rendered`);
  return o;
};
const podSpec = (o: Node): Node => node(o, o.kind === 'CronJob' ? 'spec.jobTemplate.spec.template.spec' : 'spec.template.spec');
const container = (o: Node): Node => nodes(podSpec(o), 'containers')[0]!;
const envOf = (c: Node, name: string): Node => {
  const e = nodes(c, 'env').find((x) => x.name === name);
  assert.ok(e, `env ${name} is set`);
  return e;
};

describe('the overlays', () => {
  let dev: K8sObject[];
  let production: K8sObject[];
  before(() => {
    dev = render('dev');
    production = render('production');
  });

  test('validateManifests: every overlay renders and validates, nothing invalid, every object counted', async () => {
    assert.deepEqual(overlayNames(), ['dev', 'production']);
    const r = await validateManifests();
    assert.deepEqual(r.invalid, []);
    assert.deepEqual(r.unknownMetricRefs, []);
    assert.equal(r.count, dev.length + production.length);
  });

  test('dev: the main kinds in the namespace ckpt', () => {
    assert.deepEqual(countKinds(dev, 'ckpt'), {
      Namespace: 1, ServiceAccount: 4, ConfigMap: 3, Secret: 1, Service: 1, PersistentVolumeClaim: 1,
      DaemonSet: 1, Deployment: 2, StatefulSet: 1, CronJob: 1, PodDisruptionBudget: 1, PodMonitor: 3, NetworkPolicy: 8,
      Kafka: 1, KafkaNodePool: 1, KafkaTopic: 3, KafkaUser: 2,
    });
    // Dashboards and rules go where Grafana and Prometheus run.
    for (const o of dev.filter((x) => x.kind === 'PrometheusRule' || x.metadata.labels?.grafana_dashboard === '1')) assert.equal(o.metadata.namespace, 'monitoring');
  });

  test('production: no Secret rendered (the operator and Strimzi create them), the rest as in dev', () => {
    const kinds = countKinds(production, 'ckpt');
    assert.equal(kinds.Secret, undefined);
    const { Secret: _secret, ...devKinds } = countKinds(dev, 'ckpt');
    assert.deepEqual(kinds, devKinds);
    assert.deepEqual(OPERATOR_SECRETS.map((x) => x.name).sort(), ['ckpt-redis-auth', 'ckpt-redis-tls']);
  });

  test('dev: the generated Redis password Secret is hashed and every reference follows it', () => {
    const secret = find(dev, 'Secret', 'ckpt-redis-auth') as unknown as K8sObject;
    assert.match(secret.metadata.name, /^ckpt-redis-auth-[a-z0-9]{10}$/);
    assert.equal(secret.metadata.name, `ckpt-redis-auth-${nameHash({ ...secret, metadata: { name: 'ckpt-redis-auth' } })}`);
    for (const [kind, name] of [['StatefulSet', 'ckpt-redis'], ['Deployment', 'ckpt-replicator'], ['Deployment', 'ckpt-restorer-failover'], ['CronJob', 'ckpt-restore-drill']] as const) {
      const volumes = nodes(podSpec(find(dev, kind, name)), 'volumes');
      assert.ok(volumes.some((v) => get(v, 'secret.secretName') === secret.metadata.name), `${kind} ${name} mounts ${secret.metadata.name}`);
    }
  });

  test('the harvester: one per KVM node, least privilege, its guest id from the node name', () => {
    const ds = find(dev, 'DaemonSet', 'ckpt-harvester');
    const c = container(ds);
    assert.equal(node(podSpec(ds), 'nodeSelector')['ckpt.io/kvm'], 'true');
    assert.equal(node(c, 'resources.limits')['devices.kubevirt.io/kvm'], '1');
    assert.deepEqual(c.securityContext, { privileged: false, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
    assert.equal(get(podSpec(ds), 'securityContext.runAsUser'), 10001);
    assert.equal(get(envOf(c, 'HARVESTER_VM_ID'), 'valueFrom.fieldRef.fieldPath'), 'spec.nodeName');
    assert.ok(nodes(podSpec(ds), 'volumes').some((v) => v.name === 'tmp' && v.emptyDir));
    assert.equal(get(ds, 'spec.updateStrategy.type'), 'OnDelete');
  });

  test('production: registry images, 3 replicators, bigger guests, replicated topics, Redis over TLS', () => {
    const harvester = container(find(production, 'DaemonSet', 'ckpt-harvester'));
    assert.equal(harvester.image, 'registry.example.com/ckpt/ckpt-harvester:0.1.0');
    assert.equal(envOf(harvester, 'HARVESTER_MEM_MIB').value, '4096');
    // The patch merged into the base's resources rather than replacing them: the KVM device stays.
    assert.equal(node(harvester, 'resources.requests')['devices.kubevirt.io/kvm'], '1');
    assert.equal(get(find(production, 'Deployment', 'ckpt-replicator'), 'spec.replicas'), 3);
    const pages = find(production, 'KafkaTopic', 'ckpt-pages');
    assert.equal(get(pages, 'spec.partitions'), 12);
    assert.equal(get(pages, 'spec.replicas'), 3);
    assert.equal(node(pages, 'spec.config')['max.message.bytes'], 5242880);
    assert.equal(get(find(production, 'KafkaNodePool', 'dual'), 'spec.replicas'), 3);
    assert.equal(get(find(production, 'ConfigMap', 'ckpt-redis-client'), 'data.REDIS_URL'), 'rediss://ckpt-redis.ckpt.svc:6379');
  });

  test('the restorer: a suspended drill CronJob and a failover Deployment at 0 replicas', () => {
    const drill = find(dev, 'CronJob', 'ckpt-restore-drill');
    assert.equal(get(drill, 'spec.suspend'), true);
    assert.equal(envOf(container(drill), 'RESTORER_OUT').value, '/restore');
    const failover = find(dev, 'Deployment', 'ckpt-restorer-failover');
    assert.equal(get(failover, 'spec.replicas'), 0);
    assert.equal(get(failover, 'spec.strategy.type'), 'Recreate');
    assert.equal(envOf(container(failover), 'RESTORER_KEEP_RUNNING').value, 'true');
  });

  test('PodMonitors: job label from app.kubernetes.io/name, port metrics', () => {
    for (const svc of ['ckpt-harvester', 'ckpt-replicator', 'ckpt-restorer']) {
      const pm = find(dev, 'PodMonitor', svc);
      assert.equal(get(pm, 'spec.jobLabel'), 'app.kubernetes.io/name');
      assert.equal(node(pm, 'spec.selector.matchLabels')['app.kubernetes.io/name'], svc);
      assert.equal(get(pm, 'spec.podMetricsEndpoints.0.port'), 'metrics');
    }
  });

  test('images are recognised after a registry override', () => {
    assert.equal(serviceOfImage('registry.example.com/ckpt/ckpt-replicator:0.1.0'), 'replicator');
    assert.equal(serviceOfImage('ckpt-restorer@sha256:0123'), 'restorer');
    assert.equal(serviceOfImage('redis:7.4.2'), null);
  });
});

describe('the validator catches', () => {
  let dev: K8sObject[];
  before(() => {
    dev = render('dev');
  });
  /** Problems in a mutated copy of the rendered dev overlay (or of `base`, checked as `overlay`). */
  const problems = (mutate: (objects: Node[]) => void, overlay = 'dev', base?: K8sObject[]): string[] => {
    const copy = structuredClone(base ?? dev) as unknown as Node[];
    mutate(copy);
    return checkObjects(overlay, copy as unknown as K8sObject[]);
  };
  const expectOne = (found: string[], pattern: RegExp): void => {
    assert.equal(found.length, 1, found.join('\n'));
    assert.match(found[0]!, pattern);
  };
  const expectSome = (found: string[], pattern: RegExp): void => assert.ok(found.some((p) => pattern.test(p)), `${String(pattern)} in:\n${found.join('\n')}`);

  test('nothing in the unmodified overlay', () => {
    assert.deepEqual(problems(() => undefined), []);
  });

  test('an unknown env var (with a suggestion), and one outside the service prefix', () => {
    const found = problems((o) => {
      nodes(container(find(o, 'Deployment', 'ckpt-replicator')), 'env').push({ name: 'REPLICATOR_GROUPID', value: 'x' }, { name: 'KAFKA_BROKERS', value: 'x:9092' });
    });
    assert.equal(found.length, 2, found.join('\n'));
    assert.match(found[0]!, /Deployment ckpt\/ckpt-replicator: container replicator \(replicator\): env REPLICATOR_GROUPID .*not a setting of the replicator \(did you mean REPLICATOR_GROUP_ID\?\)/);
    assert.match(found[1]!, /env KAFKA_BROKERS .*not read by the replicator: its settings start with REPLICATOR_/);
  });

  test('an env value that does not parse, from env and from an envFrom ConfigMap', () => {
    const found = problems((o) => {
      envOf(container(find(o, 'DaemonSet', 'ckpt-harvester')), 'HARVESTER_MEM_MIB').value = '256MiB';
      node(find(o, 'ConfigMap', 'ckpt-kafka-client'), 'data').KAFKA_SASL_MECHANISM = 'scram-sha-1';
    });
    expectSome(found, /ckpt-harvester.*HARVESTER_MEM_MIB: "256MiB" is not a number/);
    expectSome(found, /ckpt-harvester.*HARVESTER_KAFKA_SASL_MECHANISM: "scram-sha-1" is not one of none, plain, scram-sha-256, scram-sha-512/);
    expectSome(found, /ckpt-replicator.*REPLICATOR_KAFKA_SASL_MECHANISM: "scram-sha-1"/);
  });

  test('a harvester memory limit that does not hold its guest plus Node.js and its initial heap (production had about 90 MiB of headroom)', () => {
    expectOne(problems((o) => {
      node(node(container(find(o, 'DaemonSet', 'ckpt-harvester')), 'resources'), 'limits').memory = '700Mi'; // guest 256 MiB + 512 needed
    }), /ckpt-harvester: container harvester \(harvester\): memory limit 700Mi is below the guest \(HARVESTER_MEM_MIB 256 MiB\) plus 512 MiB .*: 768 MiB/);
    assert.deepEqual(problems((o) => {
      node(node(container(find(o, 'DaemonSet', 'ckpt-harvester')), 'resources'), 'limits').memory = '700Mi';
      envOf(container(find(o, 'DaemonSet', 'ckpt-harvester')), 'HARVESTER_MEM_MIB').value = '128';
    }), [], 'a smaller guest fits the same limit');
    expectOne(problems((o) => {
      envOf(container(find(o, 'DaemonSet', 'ckpt-harvester')), 'HARVESTER_MEM_MIB').value = '1024';
    }), /memory limit 1Gi is below the guest \(HARVESTER_MEM_MIB 1024 MiB\)/);
  });

  test('a required setting missing', () => {
    expectOne(problems((o) => {
      const c = container(find(o, 'Deployment', 'ckpt-restorer-failover'));
      c.env = nodes(c, 'env').filter((e) => e.name !== 'RESTORER_VM');
    }), /ckpt-restorer-failover.*env RESTORER_VM is required/);
  });

  test('a wrong metrics port: container port, *_METRICS_PORT and the Dockerfile disagree', () => {
    expectOne(problems((o) => {
      nodes(container(find(o, 'Deployment', 'ckpt-replicator')), 'ports')[0]!.containerPort = 9090;
    }), /ckpt-replicator.*container port metrics is 9090 but REPLICATOR_METRICS_PORT is 9465/);
    expectOne(problems((o) => {
      const c = container(find(o, 'DaemonSet', 'ckpt-harvester'));
      envOf(c, 'HARVESTER_METRICS_PORT').value = '9100';
      nodes(c, 'ports')[0]!.containerPort = 9100;
    }), /HARVESTER_METRICS_PORT 9100 is not what services\/harvester\/Dockerfile EXPOSEs \(9464\)/);
  });

  test('a probe on the wrong path', () => {
    expectOne(problems((o) => {
      node(container(find(o, 'Deployment', 'ckpt-replicator')), 'readinessProbe.httpGet').path = '/healthz';
    }), /readinessProbe is \/healthz on port metrics: expected \/readyz/);
  });

  test('a schema violation: a misspelled field in a Deployment, and a wrong type', () => {
    expectOne(problems((o) => {
      container(find(o, 'Deployment', 'ckpt-replicator')).imagePullPolicyy = 'Always';
    }), /Deployment ckpt\/ckpt-replicator: schema: unknown field spec\.template\.spec\.containers\[0\]\.imagePullPolicyy/);
    expectOne(problems((o) => {
      node(find(o, 'Deployment', 'ckpt-replicator'), 'spec').replicas = 'three';
    }), /Deployment ckpt\/ckpt-replicator: schema: .*spec\/replicas must be integer/);
  });

  test('a Strimzi misspelling (and a value outside the CRD\'s enum)', () => {
    expectOne(problems((o) => {
      const spec = node(find(o, 'KafkaTopic', 'ckpt-dead'), 'spec');
      spec.partition = spec.partitions;
    }), /KafkaTopic ckpt\/ckpt-dead: schema: \/spec must NOT have additional properties "partition"/);
    expectOne(problems((o) => {
      node(find(o, 'KafkaNodePool', 'dual'), 'spec').roles = ['controller', 'brokers'];
    }), /KafkaNodePool ckpt\/dual: schema: \/spec\/roles\/1 must be equal to one of the allowed values/);
  });

  test('a privileged container, and other security regressions', () => {
    expectOne(problems((o) => {
      node(container(find(o, 'DaemonSet', 'ckpt-harvester')), 'securityContext').privileged = true;
    }), /DaemonSet ckpt\/ckpt-harvester: container harvester: privileged/);
    const found = problems((o) => {
      const ps = podSpec(find(o, 'StatefulSet', 'ckpt-redis'));
      node(ps, 'securityContext').runAsNonRoot = false;
      nodes(ps, 'volumes').push({ name: 'dev', hostPath: { path: '/dev' } });
      delete node(container(find(o, 'StatefulSet', 'ckpt-redis')), 'resources.requests').cpu;
    });
    assert.deepEqual(found.map((p) => p.replace(/^.*StatefulSet ckpt\/ckpt-redis: /, '')).sort(), [
      'container redis: no cpu request',
      'container redis: runAsNonRoot is not true',
      'volume dev is a hostPath (use a device plugin or a PVC)',
    ]);
  });

  test('a dangling Secret reference, a missing key, and a Secret only the production overlay may assume', () => {
    expectOne(problems((o) => {
      node(nodes(podSpec(find(o, 'DaemonSet', 'ckpt-harvester')), 'volumes').find((v) => v.name === 'kafka-user'), 'secret').secretName = 'ckpt-harvestr';
    }), /DaemonSet ckpt\/ckpt-harvester: volume kafka-user: Secret ckpt-harvestr is not rendered in this overlay/);
    expectOne(problems((o) => {
      nodes(nodes(podSpec(find(o, 'Deployment', 'ckpt-replicator')), 'volumes').find((v) => v.name === 'kafka-ca'), 'secret.items')[0]!.key = 'ca.pem';
    }), /volume kafka-ca: Secret ckpt-cluster-ca-cert has no key ca\.pem/);
    // Production's objects under another overlay name: the operator's Secrets are not assumed there.
    const found = problems(() => undefined, 'staging', render('production'));
    assert.ok(found.length > 0 && found.every((p) => /Secret ckpt-redis-(auth|tls) is not rendered in this overlay/.test(p)), found.join('\n'));
  });

  test('a *_FILE setting whose file no volume provides', () => {
    expectOne(problems((o) => {
      envOf(container(find(o, 'DaemonSet', 'ckpt-harvester')), 'HARVESTER_KAFKA_SASL_PASSWORD_FILE').value = '/etc/ckpt/kafka-user/pass';
    }), /HARVESTER_KAFKA_SASL_PASSWORD_FILE=\/etc\/ckpt\/kafka-user\/pass: the Secret volume kafka-user has no file pass \(it has password\)/);
  });

  test('PodMonitors that select no pod or a port no pod names', () => {
    expectOne(problems((o) => {
      node(find(o, 'PodMonitor', 'ckpt-restorer'), 'spec.selector.matchLabels')['app.kubernetes.io/component'] = 'restore';
    }), /PodMonitor ckpt\/ckpt-restorer: selects no pod rendered in this overlay/);
    expectOne(problems((o) => {
      nodes(find(o, 'PodMonitor', 'ckpt-harvester'), 'spec.podMetricsEndpoints')[0]!.port = 'http-metrics';
    }), /port http-metrics is named by none of the pods it selects \(ckpt-harvester\)/);
  });

  test('Kafka: a missing ACL, a topic too small for a produce request, a topic that does not exist', () => {
    expectOne(problems((o) => {
      const acls = nodes(find(o, 'KafkaUser', 'ckpt-replicator'), 'spec.authorization.acls');
      acls.splice(acls.findIndex((a) => get(a, 'resource.name') === 'ckpt.dead'), 1);
    }), /KafkaUser ckpt\/ckpt-replicator: no ACL allows Write on topic ckpt\.dead/);
    expectOne(problems((o) => {
      node(find(o, 'KafkaTopic', 'ckpt-pages'), 'spec.config')['max.message.bytes'] = 1048588;
    }), /KafkaTopic ckpt\/ckpt-pages: max\.message\.bytes 1048588 is below 4259840/);
    const found = problems((o) => {
      node(find(o, 'ConfigMap', 'ckpt-kafka-client'), 'data').CONTROL_TOPIC = 'ckpt.ctl';
    });
    expectSome(found, /DaemonSet ckpt\/ckpt-harvester: HARVESTER_CONTROL_TOPIC ckpt\.ctl: no KafkaTopic/);
    expectSome(found, /KafkaUser ckpt\/ckpt-harvester: no ACL allows Read on topic ckpt\.ctl/);
  });

  test('Kafka: a listener that does not match the clients (TLS, port, admitted pods)', () => {
    const found = problems((o) => {
      const listener = nodes(find(o, 'Kafka', 'ckpt'), 'spec.kafka.listeners')[0]!;
      listener.tls = false;
      nodes(listener, 'networkPolicyPeers').splice(1, 1);
    });
    assert.deepEqual(found.sort(), [
      'dev: DaemonSet ckpt/ckpt-harvester: HARVESTER_KAFKA_TLS is true but the listener tls has tls: false',
      'dev: Deployment ckpt/ckpt-replicator: REPLICATOR_KAFKA_TLS is true but the listener tls has tls: false',
      "dev: Kafka ckpt/ckpt: the listener tls's networkPolicyPeers do not admit the replicator's pods (Deployment ckpt/ckpt-replicator)",
    ]);
    expectSome(problems((o) => {
      nodes(find(o, 'Kafka', 'ckpt'), 'spec.kafka.listeners')[0]!.port = 9094;
    }), /HARVESTER_KAFKA_BROKERS ckpt-kafka-bootstrap\.ckpt\.svc:9093: the Kafka ckpt has no listener on port 9093 \(it has 9094\)/);
  });

  test('NetworkPolicies: each service\'s connections (Kafka, Redis, DNS) and its metrics port are allowed', () => {
    const policy = (o: Node[], name: string): Node => find(o, 'NetworkPolicy', name);
    // The replicator's egress to Redis on a port Redis does not listen on.
    expectOne(problems((o) => {
      nodes(nodes(node(policy(o, 'ckpt-replicator-egress'), 'spec'), 'egress')[1]!, 'ports')[0]!.port = 6380;
    }), /Deployment ckpt\/ckpt-replicator: replicator: no egress to Redis ckpt-redis\.ckpt\.svc:6379 \(StatefulSet ckpt\/ckpt-redis, port 6379\): the NetworkPolicies that select its pods \(app\.kubernetes\.io\/name=ckpt-replicator.*\) for egress \(allow-dns, ckpt-replicator-egress, default-deny-all\) allow no such flow/);
    // The same rule by the port's name on the Redis pods is fine; a name the pods do not have is not.
    assert.deepEqual(problems((o) => {
      nodes(nodes(node(policy(o, 'ckpt-replicator-egress'), 'spec'), 'egress')[1]!, 'ports')[0]!.port = 'redis';
    }), []);
    expectOne(problems((o) => {
      nodes(nodes(node(policy(o, 'ckpt-replicator-egress'), 'spec'), 'egress')[1]!, 'ports')[0]!.port = 'resp';
    }), /ckpt-replicator: replicator: no egress to Redis/);
    // The harvester's egress to the brokers on the plain listener's port, not the TLS one it uses.
    expectOne(problems((o) => {
      nodes(nodes(node(policy(o, 'ckpt-harvester-egress'), 'spec'), 'egress')[0]!, 'ports')[0]!.port = 9092;
    }), /DaemonSet ckpt\/ckpt-harvester: harvester: no egress to Kafka ckpt-kafka-bootstrap\.ckpt\.svc:9093/);
    // Redis's ingress without the restorer: both restorers are refused, reported on Redis.
    const ingress = problems((o) => {
      node(nodes(nodes(node(policy(o, 'ckpt-redis-ingress'), 'spec'), 'ingress')[0]!, 'from')[0]!, 'podSelector.matchExpressions.0').values = ['ckpt-replicator'];
    });
    assert.deepEqual(ingress.map((p) => p.replace(/:.*/, '')), ['dev', 'dev'], ingress.join('\n'));
    for (const owner of ['CronJob ckpt/ckpt-restore-drill', 'Deployment ckpt/ckpt-restorer-failover']) {
      expectSome(ingress, new RegExp(`StatefulSet ckpt/ckpt-redis: no ingress from the restorer \\(${owner}\\) on port 6379: the NetworkPolicies that select its pods for ingress \\(ckpt-redis-ingress, default-deny-all\\)`));
    }
    // No DNS: every service that connects by name is cut off.
    const dns = problems((o) => o.splice(o.indexOf(policy(o, 'allow-dns')), 1));
    assert.equal(dns.length, 4, dns.join('\n'));
    for (const p of dns) assert.match(p, /no egress to DNS \(UDP 53\), to resolve those names/);
    // The scrape rule on a port the services do not name.
    const scrape = problems((o) => {
      nodes(nodes(node(policy(o, 'allow-metrics-from-prometheus'), 'spec'), 'ingress')[0]!, 'ports')[0]!.port = 'prometheus';
    });
    expectSome(scrape, /DaemonSet ckpt\/ckpt-harvester: harvester: nothing can scrape its metrics port 9464/);
    expectSome(scrape, /Deployment ckpt\/ckpt-replicator: replicator: nothing can scrape its metrics port 9465/);
    // A Redis URL on a port its Service does not have.
    expectOne(problems((o) => {
      node(find(o, 'ConfigMap', 'ckpt-redis-client'), 'data').REDIS_URL = 'redis://ckpt-redis.ckpt.svc:6380';
    }).filter((p) => /ckpt-replicator/.test(p)), /REDIS_URL ckpt-redis\.ckpt\.svc:6380: the Service ckpt\/ckpt-redis has no port 6380 \(it has 6379\)/);
  });

  test('disks: a Kafka volume that cannot hold the retained topics, a restore volume smaller than the guest', () => {
    // ckpt.dead's 10 GiB cap alone outgrew the dev brokers' 10 GiB volume (found by this check).
    expectOne(problems((o) => {
      nodes(node(find(o, 'KafkaNodePool', 'dual'), 'spec.storage'), 'volumes')[0]!.size = '10Gi';
    }), /KafkaNodePool ckpt\/dual: its volumes \(10\.0 GiB per broker\) do not hold what the topics retain per broker with 10% to spare: 14\.8 GiB \(ckpt\.dead 11\.0 GiB, ckpt\.pages 3\.8 GiB; .*÷ brokers \(1\)\)/);
    // More brokers share the partitions; the same topics then fit.
    assert.deepEqual(problems((o) => {
      const pool = find(o, 'KafkaNodePool', 'dual');
      nodes(node(pool, 'spec.storage'), 'volumes')[0]!.size = '10Gi';
      node(pool, 'spec').replicas = 3;
    }), []);
    expectOne(problems((o) => {
      node(find(o, 'KafkaTopic', 'ckpt-pages'), 'spec.config')['retention.bytes'] = 8 * 2 ** 30;
    }), /do not hold .*: 35\.8 GiB \(ckpt\.dead 11\.0 GiB, ckpt\.pages 24\.8 GiB/);
    expectOne(problems((o) => {
      envOf(container(find(o, 'DaemonSet', 'ckpt-harvester')), 'HARVESTER_MEM_MIB').value = '4096';
      node(node(container(find(o, 'DaemonSet', 'ckpt-harvester')), 'resources'), 'limits').memory = '5Gi';
    }), /PersistentVolumeClaim ckpt\/ckpt-restore: requests 2Gi but the restorer \(CronJob ckpt\/ckpt-restore-drill\) writes images of up to 4096 MiB there/);
  });

  test('an unknown kind', () => {
    expectOne(problems((o) => {
      o.push({ apiVersion: 'cert-manager.io/v1', kind: 'Certificate', metadata: { name: 'ckpt-redis', namespace: 'ckpt' }, spec: {} });
    }), /Certificate ckpt\/ckpt-redis: unknown kind cert-manager\.io\/v1\/Certificate/);
  });

  test('validateManifests reports a render failure as an invalid line, without throwing', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ckpt-overlays-'));
    try {
      mkdirSync(join(dir, 'broken'));
      writeFileSync(join(dir, 'broken', 'kustomization.yaml'), 'resources:\n  - missing.yaml\n');
      const r = await validateManifests(dir);
      assert.equal(r.count, 0);
      assert.equal(r.invalid.length, 1);
      assert.match(r.invalid[0]!, /^broken: cannot render: .*resource "missing\.yaml" does not exist/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('kustomize renderer', () => {
  let root: string;
  before(() => {
    root = mkdtempSync(join(tmpdir(), 'ckpt-kustomize-'));
  });
  after(() => {
    rmSync(root, { recursive: true, force: true });
  });
  let n = 0;
  /** Writes files (path -> content) under a fresh directory; returns it. */
  const fixture = (files: Record<string, string>): string => {
    const dir = join(root, String(n++));
    for (const [p, text] of Object.entries(files)) {
      mkdirSync(dirname(join(dir, p)), { recursive: true });
      writeFileSync(join(dir, p), text);
    }
    return dir;
  };
  const build = (dir: string): Node[] => renderKustomization(dir);
  const DEPLOYMENT = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: { app: web }
  template:
    metadata:
      labels: { app: web }
    spec:
      containers:
        - name: app
          image: example/app:1.0
          env:
            - { name: A, value: "1" }
            - { name: B, value: "2" }
          volumeMounts:
            - { name: conf, mountPath: /etc/app }
        - name: sidecar
          image: example/sidecar
      volumes:
        - name: conf
          configMap:
            name: app-config
`;
  const expectError = (fn: () => unknown, code: string, message: RegExp): void => {
    assert.throws(fn, (err: unknown) => {
      assert.ok(err instanceof KustomizeError, String(err));
      assert.equal(err.code, code);
      assert.match(err.message, message);
      return true;
    });
  };

  test('namespace: set on namespaced objects, not on cluster-scoped ones', () => {
    const dir = fixture({
      'kustomization.yaml': 'namespace: team\nresources:\n  - all.yaml\n',
      'all.yaml': `${DEPLOYMENT}---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: reader\nrules: []\n`,
    });
    assert.deepEqual(build(dir).map((o) => [o.kind, get(o, 'metadata.namespace')]), [['Namespace', undefined], ['ClusterRole', undefined], ['Deployment', 'team']]);
  });

  test('images: newName and newTag, digest, only the named image', () => {
    const dir = fixture({
      'kustomization.yaml': 'resources:\n  - deploy.yaml\nimages:\n  - name: example/app\n    newName: registry.local/app\n    newTag: "2.0"\n  - name: example/sidecar\n    digest: sha256:abc\n',
      'deploy.yaml': DEPLOYMENT,
    });
    assert.deepEqual(nodes(build(dir)[0], 'spec.template.spec.containers').map((c) => c.image), ['registry.local/app:2.0', 'example/sidecar@sha256:abc']);
  });

  test('strategic-merge patch: containers, env and volumeMounts merge by key; $patch: delete; an overlay over a base', () => {
    const dir = fixture({
      'base/kustomization.yaml': 'resources:\n  - deploy.yaml\n',
      'base/deploy.yaml': DEPLOYMENT,
      'overlay/kustomization.yaml': 'resources:\n  - ../base\npatches:\n  - path: patch.yaml\n',
      'overlay/patch.yaml': `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  template:
    spec:
      containers:
        - name: app
          env:
            - { name: B, value: "20" }
            - { name: C, value: "3" }
            - { name: A, $patch: delete }
          resources:
            limits: { memory: 1Gi }
        - name: sidecar
          $patch: delete
        - name: extra
          image: example/extra
`,
    });
    const [d] = build(join(dir, 'overlay'));
    const containers = nodes(d, 'spec.template.spec.containers');
    assert.equal(get(d, 'spec.replicas'), 2);
    assert.deepEqual(containers.map((c) => c.name), ['app', 'extra']);
    assert.deepEqual(containers[0]!.env, [{ name: 'B', value: '20' }, { name: 'C', value: '3' }]);
    assert.equal(containers[0]!.image, 'example/app:1.0');
    assert.deepEqual(containers[0]!.volumeMounts, [{ name: 'conf', mountPath: '/etc/app' }]);
    assert.deepEqual(containers[0]!.resources, { limits: { memory: '1Gi' } });
  });

  test('JSON 6902 patch with a target', () => {
    const dir = fixture({
      'kustomization.yaml': 'resources:\n  - deploy.yaml\npatches:\n  - target: { kind: Deployment, name: web }\n    patch: |-\n      - op: replace\n        path: /spec/template/spec/containers/0/image\n        value: example/app:9\n      - op: add\n        path: /metadata/annotations\n        value: { note: patched }\n',
      'deploy.yaml': DEPLOYMENT,
    });
    const [d] = build(dir);
    assert.equal(get(d, 'spec.template.spec.containers.0.image'), 'example/app:9');
    assert.deepEqual(get(d, 'metadata.annotations'), { note: 'patched' });
  });

  test('configMapGenerator: disableNameSuffixHash keeps the name and applies the labels; otherwise the kustomize hash, and references follow', () => {
    const dir = fixture({
      'kustomization.yaml': `resources:
  - deploy.yaml
configMapGenerator:
  - name: dashboards
    files:
      - board.json
      - renamed.json=board.json
    options:
      labels: { grafana_dashboard: "1" }
      disableNameSuffixHash: true
  - name: app-config
    literals:
      - LEVEL=debug
      - QUOTED="a b"
`,
      'deploy.yaml': DEPLOYMENT,
      'board.json': '{"title":"x"}\n',
    });
    const out = build(dir);
    const boards = find(out, 'ConfigMap', 'dashboards');
    assert.equal(get(boards, 'metadata.name'), 'dashboards');
    assert.deepEqual(get(boards, 'metadata.labels'), { grafana_dashboard: '1' });
    assert.deepEqual(boards.data, { 'board.json': '{"title":"x"}\n', 'renamed.json': '{"title":"x"}\n' });
    const config = find(out, 'ConfigMap', 'app-config') as unknown as K8sObject;
    assert.deepEqual(config.data, { LEVEL: 'debug', QUOTED: 'a b' });
    assert.equal(config.metadata.name, `app-config-${nameHash({ ...config, metadata: { name: 'app-config' } })}`);
    assert.equal(get(find(out, 'Deployment', 'web'), 'spec.template.spec.volumes.0.configMap.name'), config.metadata.name);
  });

  test('name hashes equal kustomize\'s own test vectors (api/hasher/hasher_test.go)', () => {
    const cm = (extra: Node): K8sObject => ({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: '' }, ...extra });
    assert.equal(nameHash(cm({})), '6ct58987ht');
    assert.equal(nameHash(cm({ data: { one: '' } })), '9g67k2htb6');
    assert.equal(nameHash(cm({ data: { two: 2, one: '', three: 3 } })), '7757f9kkct');
    assert.equal(nameHash(cm({ data: { one: '' }, binaryData: { two: '' } })), '698h7c7t9m');
    assert.equal(nameHash({ apiVersion: 'v1', kind: 'Secret', type: 'my-type', metadata: { name: '' }, data: { one: '' } }), '74bd68bm66');
  });

  test('labels: metadata only by default; includeSelectors reaches selectors and templates', () => {
    const dir = fixture({
      'kustomization.yaml': 'resources:\n  - deploy.yaml\nlabels:\n  - pairs: { team: a }\n  - pairs: { tier: web }\n    includeSelectors: true\n',
      'deploy.yaml': DEPLOYMENT,
    });
    const [d] = build(dir);
    assert.deepEqual(get(d, 'metadata.labels'), { team: 'a', tier: 'web' });
    assert.deepEqual(get(d, 'spec.selector.matchLabels'), { app: 'web', tier: 'web' });
    assert.deepEqual(get(d, 'spec.template.metadata.labels'), { app: 'web', tier: 'web' });
  });

  test('unknown fields are errors, and so are kustomize fields this renderer does not implement', () => {
    expectError(() => build(fixture({ 'kustomization.yaml': 'resources: []\nnamespac: x\n' })), 'CKPT_ERR_KUSTOMIZE_UNKNOWN_FIELD', /unknown field "namespac"/);
    expectError(() => build(fixture({ 'kustomization.yaml': 'namePrefix: x-\n' })), 'CKPT_ERR_KUSTOMIZE_UNSUPPORTED', /"namePrefix" is a kustomize field this renderer does not implement/);
    expectError(() => build(fixture({ 'kustomization.yaml': 'images:\n  - name: a\n    newTage: "1"\n' })), 'CKPT_ERR_KUSTOMIZE_UNKNOWN_FIELD', /unknown field "newTage" in images entry/);
    expectError(() => build(fixture({ 'kustomization.yaml': 'configMapGenerator:\n  - name: a\n    behavior: merge\n' })), 'CKPT_ERR_KUSTOMIZE_UNSUPPORTED', /behavior "merge"/);
  });

  test('kustomize\'s load restrictor, duplicates and patches that match nothing are errors', () => {
    const dir = fixture({ 'outside.yaml': DEPLOYMENT, 'k/kustomization.yaml': 'resources:\n  - ../outside.yaml\n' });
    expectError(() => build(join(dir, 'k')), 'CKPT_ERR_KUSTOMIZE_SECURITY', /is not in or below/);
    expectError(() => build(fixture({ 'kustomization.yaml': 'resources:\n  - a.yaml\n  - b.yaml\n', 'a.yaml': DEPLOYMENT, 'b.yaml': DEPLOYMENT })), 'CKPT_ERR_KUSTOMIZE_CONFLICT', /Deployment web is defined twice/);
    expectError(() => build(fixture({
      'kustomization.yaml': 'resources:\n  - a.yaml\npatches:\n  - patch: |-\n      apiVersion: apps/v1\n      kind: Deployment\n      metadata: { name: api }\n      spec: { replicas: 2 }\n',
      'a.yaml': DEPLOYMENT,
    })), 'CKPT_ERR_KUSTOMIZE_PATCH', /no resource matches the patch for Deployment api/);
  });
});
