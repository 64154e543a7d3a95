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

export const toPod = (r: PodRecord): Pod => ({
  namespace: r.namespace,
  name: r.name,
  labels: r.labels,
  addresses: r.addresses.map((a) => parseIp(a, 'address')),
  ports: r.ports,
});

export const placedPods = (s: Snapshot): PlacedPod[] => s.pods.map((r) => ({ ...toPod(r), node: r.node }));

/**
 * worldOf and placedPods for a stream that compiles again and again: a policy or pod whose row has the revision it
 * had at the previous snapshot is the same object as then (not parsed again), which is what lets the compiler's cache
 * (`CompileCache`) reuse the entries of every pod a change does not concern.
 */
export function createWorldCache() {
  let policies = new Map<string, ReturnType<typeof parsePolicyObject>>();
  let pods = new Map<string, PlacedPod>();
  return {
    world(s: Snapshot): World {
      const next = new Map<string, ReturnType<typeof parsePolicyObject>>();
      const parsed = s.policies.map((p) => {
        const key = p.revision === undefined ? null : `${p.kind}/${p.namespace}/${p.name}@${p.revision}`;
        const policy = (key ? policies.get(key) : undefined) ?? parsePolicyObject(p.object, p.namespace || 'default');
        if (key) next.set(key, policy);
        return policy;
      });
      policies = next;
      return {
        namespaces: s.namespaces,
        networkPolicies: parsed.filter((p): p is NetworkPolicy => p.kind === 'NetworkPolicy'),
        adminPolicies: parsed.filter((p): p is AdminPolicy => p.kind === 'AdminNetworkPolicy'),
        baseline: (parsed.find((p) => p.kind === 'BaselineAdminNetworkPolicy') as AdminPolicy | undefined) ?? null,
      };
    },
    placedPods(s: Snapshot): PlacedPod[] {
      const next = new Map<string, PlacedPod>();
      const out = s.pods.map((r) => {
        const key = r.revision === undefined ? null : `${r.namespace}/${r.name}@${r.revision}`;
        const pod = (key ? pods.get(key) : undefined) ?? { ...toPod(r), node: r.node };
        if (key) next.set(key, pod);
        return pod;
      });
      pods = next;
      return out;
    },
  };
}
