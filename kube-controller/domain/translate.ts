/**
 * What the controller makes of Kubernetes objects: pure functions from the API's objects (in the API's JSON shape, as
 * the informers hold them) to what Weft's services take. No I/O.
 */

/** The parts of Kubernetes objects the controller reads. */
export interface KubeMeta {
  name?: string;
  namespace?: string;
  uid?: string;
  labels?: Record<string, string>;
  resourceVersion?: string;
  deletionTimestamp?: Date | string;
}
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: KubeMeta;
}
export interface KubeContainerPort {
  name?: string;
  containerPort: number;
  protocol?: string;
}
export interface KubePod extends KubeObject {
  spec?: {
    nodeName?: string;
    hostNetwork?: boolean;
    containers?: { ports?: KubeContainerPort[] }[];
    initContainers?: { ports?: KubeContainerPort[]; restartPolicy?: string }[];
  };
  status?: { phase?: string };
}
export interface KubeCondition {
  type: string;
  status: string;
  reason?: string;
  message?: string;
}
export interface KubeNode extends KubeObject {
  status?: { conditions?: KubeCondition[] };
}

export interface NamedPort {
  name: string;
  port: number;
  protocol: string;
}

/** A pod as the policy service is told of it: who it is and what selects it; its addresses come from the agents. */
export interface PodDescription {
  namespace: string;
  name: string;
  uid: string;
  node: string;
  labels: Record<string, string>;
  ports: NamedPort[];
}

/** The key of a namespaced object: "namespace/name". */
export function objectKey(o: KubeObject): string {
  return `${o.metadata?.namespace ?? ''}/${o.metadata?.name ?? ''}`;
}

/**
 * The pod as policy sees it, or null for a host-network pod (it has the node's addresses, which pod policy never
 * selects). Named ports come from every container, and from init containers that keep running (sidecars); the first
 * container to name a port wins, as the API server's own name resolution for a Service's targetPort does.
 */
export function describePod(pod: KubePod): PodDescription | null {
  if (pod.spec?.hostNetwork) return null;
  const ports: NamedPort[] = [];
  const seen = new Set<string>();
  const containers = [
    ...(pod.spec?.containers ?? []),
    ...(pod.spec?.initContainers ?? []).filter((c) => c.restartPolicy === 'Always'),
  ];
  for (const c of containers) {
    for (const p of c.ports ?? []) {
      if (!p.name || seen.has(p.name)) continue;
      seen.add(p.name);
      ports.push({ name: p.name, port: p.containerPort, protocol: (p.protocol ?? 'TCP').toUpperCase() });
    }
  }
  return {
    namespace: pod.metadata?.namespace ?? '',
    name: pod.metadata?.name ?? '',
    uid: pod.metadata?.uid ?? '',
    node: pod.spec?.nodeName ?? '',
    labels: { ...(pod.metadata?.labels ?? {}) },
    ports,
  };
}

/**
 * Whether a pod may still hold a pod network address: not host-network, and not finished (a Succeeded or Failed pod's
 * sandbox is torn down by the kubelet, and its address with it).
 */
export function podMayHoldAddress(pod: KubePod): boolean {
  if (pod.spec?.hostNetwork) return false;
  const phase = pod.status?.phase;
  return phase !== 'Succeeded' && phase !== 'Failed';
}

export type PolicyKind = 'NetworkPolicy' | 'AdminNetworkPolicy' | 'BaselineAdminNetworkPolicy';
export const POLICY_KINDS: readonly PolicyKind[] = [
  'NetworkPolicy',
  'AdminNetworkPolicy',
  'BaselineAdminNetworkPolicy',
];

const API_VERSION: Record<PolicyKind, string> = {
  NetworkPolicy: 'networking.k8s.io/v1',
  AdminNetworkPolicy: 'policy.networking.k8s.io/v1alpha1',
  BaselineAdminNetworkPolicy: 'policy.networking.k8s.io/v1alpha1',
};

/**
 * The policy object as the policy service takes it (ApplyPolicies): kind, apiVersion, name, namespace and spec. The
 * rest (status, managed fields, annotations) says nothing about what is allowed and would only make every status
 * write look like a policy change.
 */
export function policyObjectJson(kind: PolicyKind, o: KubeObject & { spec?: unknown }): string {
  const metadata: Record<string, string> = { name: o.metadata?.name ?? '' };
  if (kind === 'NetworkPolicy') metadata.namespace = o.metadata?.namespace ?? '';
  return JSON.stringify({ apiVersion: API_VERSION[kind], kind, metadata, spec: o.spec ?? {} });
}

export const NETWORK_UNAVAILABLE = 'NetworkUnavailable';
export const WEFT_UP_REASON = 'WeftIsUp';

/**
 * The node status patch that sets `NetworkUnavailable` to False, or null when the node already says so. The controller
 * calls this only for a node whose agent holds a live registration (it has joined the overlay and renews its lease);
 * it never sets the condition True itself: a control plane that cannot be reached must not take every node out of
 * scheduling.
 */
export function networkAvailablePatch(node: KubeNode, now: Date): object | null {
  const c = (node.status?.conditions ?? []).find((x) => x.type === NETWORK_UNAVAILABLE);
  if (c && c.status === 'False' && c.reason === WEFT_UP_REASON) return null;
  const t = now.toISOString().replace(/\.\d{3}Z$/, 'Z');
  return {
    status: {
      conditions: [
        {
          type: NETWORK_UNAVAILABLE,
          status: 'False',
          reason: WEFT_UP_REASON,
          message: "Weft's agent on this node is registered and renews its lease",
          lastTransitionTime: t,
          lastHeartbeatTime: t,
        },
      ],
    },
  };
}
