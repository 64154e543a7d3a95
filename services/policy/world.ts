import type { PlacedPod } from './domain/compile.js';
import type { Pod, World } from './domain/evaluate.js';
import { parseIp, parsePolicyObject, type AdminPolicy, type NetworkPolicy } from './domain/model.js';
import type { PodRecord, Snapshot } from './store/policy.repository.js';

/** The world the evaluator and the compiler see, from one consistent snapshot. Stored policies were valid when applied. */
export function worldOf(s: Snapshot): World {
  const parsed = s.policies.map((p) => parsePolicyObject(p.object, p.namespace || 'default'));
  return {
    namespaces: s.namespaces,
    networkPolicies: parsed.filter((p): p is NetworkPolicy => p.kind === 'NetworkPolicy'),
    adminPolicies: parsed.filter((p): p is AdminPolicy => p.kind === 'AdminNetworkPolicy'),
    baseline: (parsed.find((p) => p.kind === 'BaselineAdminNetworkPolicy') as AdminPolicy | undefined) ?? null,
  };
}

export const toPod = (r: PodRecord): Pod => ({ namespace: r.namespace, name: r.name, labels: r.labels, addresses: r.addresses.map((a) => parseIp(a, 'address')), ports: r.ports });

export const placedPods = (s: Snapshot): PlacedPod[] => s.pods.map((r) => ({ ...toPod(r), node: r.node }));
