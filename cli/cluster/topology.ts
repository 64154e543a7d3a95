/**
 * The local cluster's layout, as pure data: names carry the run's prefix so that concurrent runs and a crashed
 * run's leftovers never collide. Nodes alternate over two underlay subnets joined by a router in the fabric.
 */
export const SUBNETS = [
  { bridge: 'br-a', base: '192.0.2', router: '192.0.2.1' },
  { bridge: 'br-b', base: '198.51.100', router: '198.51.100.1' },
] as const;

export const CONTROL_PLANE_ADDRESS = '192.0.2.2';
export const CONTROL_PLANE_PORT = 7400;
/** At most this many control-plane replicas (`cluster up --replicas`): 192.0.2.2, .3, .4 (nodes start at .11). */
export const MAX_CONTROL_PLANE_REPLICAS = 3;

/** Replica i (0-based; 0 is the control plane itself, which also runs the database): its namespace and address. */
export function planControlPlaneReplica(
  prefix: string,
  index: number,
): { netns: string; address: string; fabricIfname: string } {
  if (!Number.isInteger(index) || index < 1 || index >= MAX_CONTROL_PLANE_REPLICAS)
    throw new Error(`control-plane replica ${index} out of range 1-${MAX_CONTROL_PLANE_REPLICAS - 1}`);
  return {
    netns: `${prefix}-cp${index + 1}`,
    address: `${SUBNETS[0].base}.${2 + index}`,
    fabricIfname: `cp${index + 1}`,
  };
}
export const DEFAULT_POOL = { name: 'default', cidr: '10.244.0.0/16', blockPrefixLength: 26 };
/** The IPv6 pool of a dual-stack local cluster: ULA, blocks of 64 addresses like the IPv4 pool's. */
export const DEFAULT_POOL6 = { name: 'default-v6', cidr: 'fd00:10:244::/48', blockPrefixLength: 122 };

export interface NodePlan {
  name: string;
  netns: string;
  /** Name of the fabric end of the node's veth. */
  fabricIfname: string;
  address: string;
  router: string;
  bridge: string;
}

/** Node i (1-based): nodes 3, 6, 9 ... sit on the second subnet, the rest on the first. */
export function planNode(prefix: string, index: number): NodePlan {
  if (index < 1 || index > 200) throw new Error(`node index ${index} out of range 1-200`);
  const subnet = SUBNETS[index % 3 === 0 ? 1 : 0];
  return {
    name: `node${index}`,
    netns: `${prefix}-node${index}`,
    fabricIfname: `n${index}`,
    address: `${subnet.base}.${10 + index}`,
    router: subnet.router,
    bridge: subnet.bridge,
  };
}

export const fabricNetns = (prefix: string) => `${prefix}-fabric`;
export const controlPlaneNetns = (prefix: string) => `${prefix}-cp`;
export const DEFAULT_NAMESPACE = 'default';

/**
 * A pod's network namespace: `<prefix>-pod-<name>` in the default namespace, `<prefix>-pod-<namespace>.<name>` in any
 * other. Neither part holds a '.', so two pods never share a name; at most 7 + 5 + 63 + 1 + 32 = 108 characters,
 * well within a file name's 255.
 */
export const podNetns = (prefix: string, namespace: string, pod: string) =>
  namespace === DEFAULT_NAMESPACE ? `${prefix}-pod-${pod}` : `${prefix}-pod-${namespace}.${pod}`;

export function validatePodName(pod: string): string {
  if (!/^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$/.test(pod))
    throw new Error(`pod name ${JSON.stringify(pod)} must be 1-32 lowercase letters, digits or '-'`);
  return pod;
}

/** A Kubernetes namespace name (an RFC 1123 label). */
export function validateNamespace(namespace: string): string {
  if (!/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(namespace)) {
    throw new Error(
      `namespace ${JSON.stringify(namespace)} must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit`,
    );
  }
  return namespace;
}

/**
 * A pod named as `NAMESPACE/NAME`, or `NAME` in `namespace` (default "default"), as in Kubernetes. Naming the
 * namespace both ways differently is an error.
 */
export function parsePodRef(ref: string, namespace?: string): { namespace: string; name: string } {
  const slash = ref.indexOf('/');
  if (slash < 0) return { namespace: validateNamespace(namespace ?? DEFAULT_NAMESPACE), name: validatePodName(ref) };
  const ns = ref.slice(0, slash);
  if (namespace !== undefined && namespace !== ns)
    throw new Error(`pod ${ref} is in namespace ${ns}, but --namespace says ${namespace}; give one`);
  return { namespace: validateNamespace(ns), name: validatePodName(ref.slice(slash + 1)) };
}
