/**
 * NetworkPolicy semantics for `validate:deploy`: does the rendered set of policies let a pod open a
 * connection, and let a pod accept one? Policies add up (a flow is allowed when any policy selecting the
 * pod for that direction allows it), a pod no policy selects for a direction is open in it, and a
 * namespaceSelector-less peer means the policy's own namespace (the Kubernetes rules). ipBlock peers
 * cannot be judged offline and count as not matching a pod.
 */
import type { K8sObject } from './kustomize.ts';
import { asObjects as objs, isObject, type JsonObject as Obj } from './json-shape.ts';
import { selectorMatches } from './selectors.ts';

/** A pod template as a flow's end: its namespace, labels and container ports. */
export interface PodEndpoint {
  namespace: string;
  labels: Record<string, string>;
  ports: { name?: string; containerPort: number; protocol: string }[];
}

/** A connection's far end as far as it is known: pods that are rendered, or just a namespace and labels (Strimzi's brokers). */
export type Peer = PodEndpoint | { namespace: string; labels: Record<string, string>; ports?: undefined };

export interface Flow {
  /** The peer pods, or null for a destination outside the rendered objects (only the port is judged). */
  peer: Peer | null;
  port: number;
  protocol: 'TCP' | 'UDP';
}

export class NetworkPolicies {
  private readonly policies: K8sObject[];
  private readonly namespaceLabels = new Map<string, Record<string, string>>();

  constructor(objects: readonly K8sObject[]) {
    this.policies = objects.filter((o) => o.kind === 'NetworkPolicy');
    for (const o of objects) if (o.kind === 'Namespace') this.namespaceLabels.set(o.metadata.name, o.metadata.labels ?? {});
  }

  /** The policies that select a pod for a direction (empty: the pod is open in that direction). */
  selecting(pod: { namespace: string; labels: Record<string, string> }, direction: 'Ingress' | 'Egress'): K8sObject[] {
    return this.policies.filter((p) => (p.metadata.namespace ?? 'default') === pod.namespace && selectorMatches(spec(p).podSelector ?? {}, pod.labels) && policyTypes(p).includes(direction));
  }

  /** Whether `pod` may open `flow`: null when some policy allows it, else the names of the policies that select it. */
  egressRefused(pod: PodEndpoint, flow: Flow): string[] | null {
    return this.refused(pod, flow, 'Egress');
  }

  /** Whether `pod` accepts `flow` (its peer the client; a null peer: from anywhere some rule admits). */
  ingressRefused(pod: PodEndpoint, flow: Flow): string[] | null {
    return this.refused(pod, flow, 'Ingress');
  }

  /** A null peer is judged by the ports alone. A rule's named ports are the destination's: the peer's for egress, the pod's own for ingress. */
  private refused(pod: PodEndpoint, flow: Flow, direction: 'Ingress' | 'Egress'): string[] | null {
    const selecting = this.selecting(pod, direction);
    if (selecting.length === 0) return null;
    const egress = direction === 'Egress';
    const portOwner = egress ? flow.peer : pod;
    const allowed = selecting.some((p) => objs(egress ? spec(p).egress : spec(p).ingress).some((rule) => {
      const peers = objs(egress ? rule.to : rule.from);
      const peerOk = peers.length === 0 || flow.peer === null || peers.some((peer) => this.peerMatches(peer, p, flow.peer!));
      return peerOk && portAllowed(rule.ports, flow, portOwner);
    }));
    return allowed ? null : selecting.map((p) => p.metadata.name);
  }

  private peerMatches(peer: Obj, policy: K8sObject, pod: { namespace: string; labels: Record<string, string> }): boolean {
    if (peer.ipBlock !== undefined) return false;
    if (peer.namespaceSelector !== undefined) {
      const labels = { ...this.namespaceLabels.get(pod.namespace), 'kubernetes.io/metadata.name': pod.namespace };
      if (!selectorMatches(peer.namespaceSelector, labels)) return false;
    } else if ((policy.metadata.namespace ?? 'default') !== pod.namespace) {
      return false;
    }
    return peer.podSelector === undefined || selectorMatches(peer.podSelector, pod.labels);
  }
}

const spec = (p: K8sObject): Obj => (isObject(p.spec) ? p.spec : {});

/** policyTypes as written, or Kubernetes's default: Ingress, plus Egress when the policy has egress rules. */
function policyTypes(p: K8sObject): string[] {
  const s = spec(p);
  if (Array.isArray(s.policyTypes)) return s.policyTypes.map(String);
  return s.egress !== undefined ? ['Ingress', 'Egress'] : ['Ingress'];
}

/** A rule's ports against the flow's port; a named port is looked up in the pods that own it (`owner`). */
function portAllowed(ports: unknown, flow: Flow, owner: Peer | null): boolean {
  const list = objs(ports);
  if (list.length === 0) return true;
  return list.some((p) => {
    if ((typeof p.protocol === 'string' ? p.protocol : 'TCP') !== flow.protocol) return false;
    if (p.port === undefined) return true;
    if (typeof p.port === 'string') return owner?.ports?.some((c) => c.name === p.port && c.containerPort === flow.port && c.protocol === flow.protocol) ?? false;
    const first = Number(p.port);
    const last = typeof p.endPort === 'number' ? p.endPort : first;
    return flow.port >= first && flow.port <= last;
  });
}
