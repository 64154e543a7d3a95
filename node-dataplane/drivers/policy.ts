import type { NodeRules, PolicyPlan } from '../domain/network-policy.js';
import type { PolicyProgrammer } from '../policy-programmer.js';

/**
 * Network policy of one family (the filter chains and the ipsets, written together by `policy-programmer.ts`), with
 * the same contract as a table driver: it writes when its desired input (the node's rules) is not the one last
 * applied, and reads the kernel back (chains, sets and the pods' veths) only when marked for resync: at start, at
 * the periodic resync, after a failure, and when pods come or go (their veths enter the dispatch chains).
 */
export interface NetworkPolicyDriver {
  readonly family: 4 | 6;
  readonly needsResync: boolean;
  markForResync(): void;
  /** Whether `rules` still need applying. */
  pending(rules: NodeRules | null): boolean;
  /** Applies `rules` (null: none held yet, fail closed) if pending; null when nothing was to do. */
  apply(rules: NodeRules | null): Promise<{ plan: PolicyPlan; veths: number; readBack: boolean } | null>;
}

export function createNetworkPolicyDriver(programmer: PolicyProgrammer, family: 4 | 6): NetworkPolicyDriver {
  let needsResync = true;
  /** The rules in force (undefined: none applied yet). */
  let applied: NodeRules | null | undefined;
  const driver: NetworkPolicyDriver = {
    family,
    get needsResync() {
      return needsResync;
    },
    markForResync() {
      needsResync = true;
    },
    pending: (rules) => needsResync || rules !== applied,
    async apply(rules) {
      if (!driver.pending(rules)) return null;
      const readBack = needsResync;
      needsResync = false;
      applied = undefined;
      try {
        const out = await programmer.program(rules, { readBack });
        applied = rules;
        return out;
      } catch (err) {
        needsResync = true;
        throw err;
      }
    },
  };
  return driver;
}
