import {
  createRenderCache,
  desiredBeforeRules,
  desiredPolicy,
  planPodChanges,
  planPolicy,
  podChanges,
  recordPodChanges,
  type NodeRules,
  type PodRules,
  type PolicyActual,
  type PolicyFamily,
  type PolicyPlan,
} from './domain/network-policy.js';
import type { PolicyDriver } from './kernel/iptables-policy.js';

/**
 * The agent's network-policy step, between the rules held and the kernel: render (only the pods whose rules changed,
 * through the render cache), plan, apply. It trusts what it last applied: a pass that only follows new rules plans
 * against its own record of what it wrote instead of reading `iptables-save` and `ipset save` back, and reuses the
 * pods' veths it last read unless the rules name a pod address it has no veth for. It reads the kernel back at the
 * first pass, after a failure (the record is dropped), and whenever asked (`readBack`: the periodic resync, kernel
 * events, retries, anything but new rules), so drift is still repaired at the next resync. One programmer serves one
 * family (4: iptables, 6: ip6tables; its driver must be of the same family).
 *
 * When the new rules differ from the ones it last applied only in a few pods' rules (the same pods on the same
 * addresses: a label or policy change, the common case), a trusting pass renders and plans only those pods
 * (`planPodChanges`): their anchors, entries chains and sets, against its record; nothing else is looked at.
 */
export interface PolicyProgrammer {
  /** Makes the kernel match `rules` (null: none held yet, fail closed); returns the plan applied (empty: nothing written). */
  program(
    rules: NodeRules | null,
    opts: { readBack: boolean; inForce?: () => void },
  ): Promise<{ plan: PolicyPlan; veths: number; readBack: boolean }>;
}

/** More changed pods than this in one pass: the whole node is rendered and planned. */
const MAX_POD_CHANGES = 64;

export function createPolicyProgrammer(
  driver: PolicyDriver,
  vxlanDevice?: string,
  family: PolicyFamily = 4,
): PolicyProgrammer {
  /** What the kernel holds, as this agent last wrote or read it; null: unknown (start, after a failure). */
  let record: PolicyActual | null = null;
  /** The rules and veths the record was planned from (null: rules not known, or no record). */
  let applied: { rules: NodeRules; veths: Map<string, string> } | null = null;
  let veths: Map<string, string> | null = null;
  const cache = createRenderCache();
  const missingVeth = (pods: readonly PodRules[], known: Map<string, string>) =>
    pods.some((p) => p.addresses.some((a) => a.includes(':') === (family === 6) && !known.has(a)));
  return {
    async program(rules, opts) {
      const trust = !opts.readBack && record !== null && rules !== null && veths !== null;
      // Only a few pods' rules changed since the last pass: only they are rendered and planned.
      const changes =
        trust && applied && applied.veths === veths
          ? podChanges(applied.rules.pods, rules!.pods, MAX_POD_CHANGES)
          : null;
      if (
        changes &&
        !missingVeth(
          changes.map((c) => c.after),
          veths!,
        )
      ) {
        const { plan, record: changed } = planPodChanges(
          changes,
          { before: applied!.rules.sets, after: rules!.sets },
          veths!,
          record!,
          vxlanDevice,
          cache,
          family,
        );
        if (plan.changed.length > 0) {
          const held = record!;
          record = null;
          applied = null;
          await driver.apply(plan, { inForce: opts.inForce });
          recordPodChanges(held, changed);
          record = held;
        }
        applied = { rules: rules!, veths: veths! };
        return { plan, veths: veths!.size, readBack: false };
      }
      // The veths and the kernel's rules are read side by side (two programs each).
      const [readVeths, actual] = await Promise.all([
        !trust || missingVeth(rules!.pods, veths!) ? driver.podVeths() : null,
        trust ? record! : driver.read(),
      ]);
      if (readVeths) veths = readVeths;
      const desired = rules
        ? desiredPolicy(rules, veths!, vxlanDevice, cache, family)
        : desiredBeforeRules(actual, veths!, vxlanDevice);
      const plan = planPolicy(desired, actual, family);
      if (plan.changed.length > 0) {
        record = null;
        applied = null;
        await driver.apply(plan, { inForce: opts.inForce });
      }
      // What the kernel holds now: the plan leaves exactly one jump from FORWARD.
      record = { chains: desired.chains, jumps: 1, sets: desired.sets };
      applied = rules ? { rules, veths: veths! } : null;
      return { plan, veths: veths!.size, readBack: !trust };
    },
  };
}
