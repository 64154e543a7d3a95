import { matches } from '../../../lib/labels.js';
import type { Cidr } from '../../../lib/net/ip.js';
import type {
  AdminPeer,
  AdminPolicy,
  AdminPort,
  NetworkPolicy,
  Peer,
  PortRule,
  Protocol,
  Rule,
  Selector,
} from './model.js';

/**
 * Whether a connection is allowed, and which rule decided it: Kubernetes NetworkPolicy semantics exactly, with the
 * AdminNetworkPolicy tier before it and the BaselineAdminNetworkPolicy tier after it. Pure.
 *
 * A connection from A to B on port/protocol is allowed when A's egress allows it and B's ingress allows it (an
 * endpoint outside the cluster has no policy of its own). For one direction of one pod:
 *  1. Admin tier: the AdminNetworkPolicies whose subject selects the pod, by priority (lower first; equal priorities
 *     by name), each rule in order; the first rule whose peers and ports match decides: Allow and Deny are final,
 *     Pass skips the rest of the admin tier.
 *  2. NetworkPolicy tier: if any NetworkPolicy of the pod's namespace selects the pod for the direction, the
 *     connection is allowed if some rule of one of them matches, else denied (default deny once selected).
 *  3. Baseline tier: the BaselineAdminNetworkPolicy's rules in order; the first match decides.
 *  4. Otherwise allowed.
 */
export interface Pod {
  namespace: string;
  name: string;
  labels: Record<string, string>;
  addresses: { family: 4 | 6; value: bigint }[];
  /** Named container ports, for named ports in rules. */
  ports: { name: string; port: number; protocol: Protocol }[];
}

export interface World {
  namespaces: ReadonlyMap<string, Record<string, string>>;
  networkPolicies: readonly NetworkPolicy[];
  adminPolicies: readonly AdminPolicy[];
  baseline: AdminPolicy | null;
}

/** One end of a connection: a pod of the cluster, or an address outside it. */
export type Endpoint =
  | { kind: 'pod'; pod: Pod; address: { family: 4 | 6; value: bigint } }
  | { kind: 'external'; address: { family: 4 | 6; value: bigint } };

export type Tier = 'admin' | 'networkpolicy' | 'baseline' | 'default';

export interface Verdict {
  allowed: boolean;
  tier: Tier;
  /** The policy that decided ('' for the default). */
  policy: string;
  /** Its rule: "ingress[2]", "egress[0]", an admin rule's name, or '' when no rule matched (default deny). */
  rule: string;
  reason: string;
}

export interface Explanation {
  allowed: boolean;
  egress: Verdict;
  ingress: Verdict;
}

const selects = (s: Selector, labels: Record<string, string>) => matches(s.requirements, labels);
const nsLabels = (w: World, ns: string) => w.namespaces.get(ns) ?? {};

function inCidr(c: Cidr, a: { family: 4 | 6; value: bigint }): boolean {
  if (c.family !== a.family) return false;
  const shift = BigInt((c.family === 4 ? 32 : 128) - c.prefixLength);
  return a.value >> shift === c.base >> shift;
}

/** A NetworkPolicy peer against the other end (`policyNs`: the policy's namespace, for a podSelector alone). */
function peerMatches(w: World, peer: Peer, policyNs: string, other: Endpoint): boolean {
  if (peer.ipBlock) {
    // ipBlock matches any address, a pod's too.
    return inCidr(peer.ipBlock.cidr, other.address) && !peer.ipBlock.except.some((e) => inCidr(e, other.address));
  }
  if (other.kind !== 'pod') return false;
  const pod = other.pod;
  if (peer.namespaceSelector && !selects(peer.namespaceSelector, nsLabels(w, pod.namespace))) return false;
  if (!peer.namespaceSelector && pod.namespace !== policyNs) return false;
  return !peer.podSelector || selects(peer.podSelector, pod.labels);
}

/** Port number of a named port on the destination pod, if it has one by that name and protocol. */
function namedPort(dest: Endpoint, name: string, protocol: Protocol): number | null {
  if (dest.kind !== 'pod') return null;
  return dest.pod.ports.find((p) => p.name === name && p.protocol === protocol)?.port ?? null;
}

function portMatches(p: PortRule, dest: Endpoint, port: number, protocol: Protocol): boolean {
  if (p.protocol !== protocol) return false;
  if (p.port === undefined) return true;
  if (typeof p.port === 'string') return namedPort(dest, p.port, protocol) === port;
  return p.endPort === undefined ? port === p.port : port >= p.port && port <= p.endPort;
}

function ruleMatches(
  w: World,
  rule: Rule,
  policyNs: string,
  other: Endpoint,
  dest: Endpoint,
  port: number,
  protocol: Protocol,
): boolean {
  const peersOk = !rule.peers || rule.peers.length === 0 || rule.peers.some((p) => peerMatches(w, p, policyNs, other));
  const portsOk =
    !rule.ports || rule.ports.length === 0 || rule.ports.some((p) => portMatches(p, dest, port, protocol));
  return peersOk && portsOk;
}

function adminPeerMatches(w: World, peer: AdminPeer, other: Endpoint): boolean {
  if (peer.networks) return peer.networks.some((c) => inCidr(c, other.address));
  if (other.kind !== 'pod') return false;
  if (peer.namespaces) return selects(peer.namespaces, nsLabels(w, other.pod.namespace));
  return (
    !!peer.pods &&
    selects(peer.pods.namespaceSelector, nsLabels(w, other.pod.namespace)) &&
    selects(peer.pods.podSelector, other.pod.labels)
  );
}

function adminPortMatches(p: AdminPort, dest: Endpoint, port: number, protocol: Protocol): boolean {
  switch (p.kind) {
    case 'number':
      return p.protocol === protocol && p.port === port;
    case 'range':
      return p.protocol === protocol && port >= p.start && port <= p.end;
    case 'named':
      return namedPort(dest, p.name, protocol) === port;
  }
}

const describe = (e: Endpoint) => (e.kind === 'pod' ? `${e.pod.namespace}/${e.pod.name}` : 'the outside address');

/** The verdict for one direction of `subject` (a pod), with `other` the far end and `dest` the connection's destination. */
function direction(
  w: World,
  dir: 'ingress' | 'egress',
  subject: Endpoint & { kind: 'pod' },
  other: Endpoint,
  dest: Endpoint,
  port: number,
  protocol: Protocol,
): Verdict {
  const pod = subject.pod;
  const who = `${pod.namespace}/${pod.name}`;
  // 1. Admin tier.
  const admins = w.adminPolicies
    .filter((a) => adminPeerMatches(w, a.subject, subject))
    .sort((a, b) => a.priority - b.priority || a.name.localeCompare(b.name));
  adminLoop: for (const a of admins) {
    for (const r of a[dir]) {
      if (!r.peers.some((p) => adminPeerMatches(w, p, other))) continue;
      if (r.ports && !r.ports.some((p) => adminPortMatches(p, dest, port, protocol))) continue;
      if (r.action === 'Pass') break adminLoop;
      return {
        allowed: r.action === 'Allow',
        tier: 'admin',
        policy: `AdminNetworkPolicy/${a.name}`,
        rule: r.name,
        reason: `${r.action === 'Allow' ? 'allowed' : 'denied'} by ${dir} rule ${r.name} of admin policy ${a.name} (priority ${a.priority})`,
      };
    }
  }
  // 2. NetworkPolicy tier.
  const selecting = w.networkPolicies
    .filter(
      (np) =>
        np.namespace === pod.namespace &&
        (dir === 'ingress' ? np.affectsIngress : np.affectsEgress) &&
        selects(np.podSelector, pod.labels),
    )
    .sort((a, b) => a.name.localeCompare(b.name));
  if (selecting.length > 0) {
    for (const np of selecting) {
      const i = np[dir].findIndex((r) => ruleMatches(w, r, np.namespace, other, dest, port, protocol));
      if (i >= 0) {
        return {
          allowed: true,
          tier: 'networkpolicy',
          policy: `NetworkPolicy/${np.namespace}/${np.name}`,
          rule: `${dir}[${i}]`,
          reason: `allowed by ${dir}[${i}] of NetworkPolicy ${np.namespace}/${np.name}`,
        };
      }
    }
    return {
      allowed: false,
      tier: 'networkpolicy',
      policy: `NetworkPolicy/${selecting[0]!.namespace}/${selecting[0]!.name}`,
      rule: '',
      reason: `denied: ${selecting.map((p) => p.name).join(', ')} select${selecting.length === 1 ? 's' : ''} ${who} for ${dir} and no ${dir} rule admits ${describe(other)} on ${port}/${protocol}`,
    };
  }
  // 3. Baseline tier.
  if (w.baseline && adminPeerMatches(w, w.baseline.subject, subject)) {
    for (const r of w.baseline[dir]) {
      if (!r.peers.some((p) => adminPeerMatches(w, p, other))) continue;
      if (r.ports && !r.ports.some((p) => adminPortMatches(p, dest, port, protocol))) continue;
      return {
        allowed: r.action === 'Allow',
        tier: 'baseline',
        policy: 'BaselineAdminNetworkPolicy/default',
        rule: r.name,
        reason: `${r.action === 'Allow' ? 'allowed' : 'denied'} by ${dir} rule ${r.name} of the baseline admin policy`,
      };
    }
  }
  return {
    allowed: true,
    tier: 'default',
    policy: '',
    rule: '',
    reason: `allowed: no policy selects ${who} for ${dir}`,
  };
}

const OUTSIDE: Verdict = {
  allowed: true,
  tier: 'default',
  policy: '',
  rule: '',
  reason: 'outside the cluster: no policy of its own',
};

export function explain(w: World, from: Endpoint, to: Endpoint, port: number, protocol: Protocol): Explanation {
  const egress = from.kind === 'pod' ? direction(w, 'egress', from, to, to, port, protocol) : OUTSIDE;
  const ingress = to.kind === 'pod' ? direction(w, 'ingress', to, from, to, port, protocol) : OUTSIDE;
  return { allowed: egress.allowed && ingress.allowed, egress, ingress };
}
