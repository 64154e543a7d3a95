import { createKernelTable } from '../kernel-table/table.js';
import type { Driver, KernelAccess } from '../kernel-table/dataplane.js';
import { chainReferences, finishedByRemoval, sameRules } from '../domain/network-policy.js';
import { ipsetKind } from './ipsets.js';

/**
 * Weft's chains in the filter table of one family (`filter4`: iptables, `filter6`: ip6tables), keyed by the chain's
 * name, each holding its rules as iptables-save prints them (an anchor's compared as a set); and Weft's jump from
 * FORWARD (`JUMP_KEY`). A chain needs the chains it goes to and the sets it matches (`dependsOn`): an update waits
 * for them, and they are not deleted while a chain the kernel holds still uses them and is still to change. Written
 * in batches (kernel/iptables-policy.ts): the update phase puts the new rules in force in one transaction without
 * deletions; the delete phase finishes the anchors (their old rules) and deletes stale chains in another.
 */
export const filterKind = (family: 4 | 6) => `filter${family}`;

export function createFilterDriver(
  access: KernelAccess<string[]>,
  family: 4 | 6,
  opts: { optional?: boolean } = {},
): Driver<string[]> {
  const kind = filterKind(family);
  const sets = ipsetKind(family);
  return {
    kind,
    table: createKernelTable<string[]>(sameRules),
    access,
    optional: opts.optional,
    dependsOn(key, rules) {
      const refs = chainReferences(key, rules);
      return [...refs.chains.map((c) => `${kind}/${c}`), ...refs.sets.map((s) => `${sets}/${s}`)];
    },
    finishedByRemoval: (key, want, held) => finishedByRemoval(key, want, held),
  };
}
