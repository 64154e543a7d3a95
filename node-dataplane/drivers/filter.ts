import { createKernelTable } from '../kernel-table/table.js';
import type { Driver, KernelAccess } from '../kernel-table/dataplane.js';
import type { Placement } from '../kernel-table/placement.js';
import { chainReferences, dispatchWithout, finishedByRemoval, sameRules } from '../domain/network-policy.js';
import { ipsetKind } from './ipsets.js';

/**
 * Weft's chains in the filter table of one family (`filter4`: iptables, `filter6`: ip6tables), keyed by the chain's
 * name, each holding its rules as iptables-save prints them (an anchor's compared as a set); and Weft's jump from
 * FORWARD (`JUMP_KEY`). A chain's rules need the sets they match in place (`dependsOn`) and the chains they go to in
 * the kernel (`needs`: a pod whose anchor update is held keeps its old anchor and policy); neither is deleted while
 * a chain the kernel holds still uses it and is still to change. A dispatch chain is written without the pods whose
 * anchor is not there (they meet its final drop); no other chain is written in part. Written
 * in batches (kernel/iptables-policy.ts): the update phase puts the new rules in force in one transaction without
 * deletions; the delete phase finishes the anchors (their old rules) and deletes stale chains in another.
 */
/** Reference texts kept before they are all dropped and made anew (bounds what chains long gone leave behind). */
const REFERENCE_TEXTS_MAX = 1 << 16;

export const filterKind = (family: 4 | 6) => `filter${family}`;

/**
 * After the sets its chains match: sets are written before the chains, the chains' removals (anchors' old rules, stale
 * chains) go after the new rules are in force, and sets are destroyed once no chain uses them. Made by policy.ts.
 */
export const filterPlacement = (family: 4 | 6): Placement => ({
  kind: filterKind(family),
  dependsOn: [ipsetKind(family)],
});

export function createFilterDriver(
  access: KernelAccess<string[]>,
  family: 4 | 6,
  opts: { optional?: boolean } = {},
): Driver<string[]> {
  const kind = filterKind(family);
  const sets = ipsetKind(family);
  // Rules are immutable arrays, asked about several times a pass (holds, order): parsed once each.
  const parsed = new WeakMap<readonly string[], { deps: string[]; needs: string[] }>();
  // Each reference's text made once per name: thousands of chains match the same sets, and the dataplane looks every
  // reference up by its text (a string met again keeps its hash). Names of chains long gone are dropped now and then.
  const texts = new Map<string, string>();
  const text = (prefix: string, name: string) => {
    const k = prefix === sets ? `s ${name}` : `c ${name}`;
    let ref = texts.get(k);
    if (ref === undefined) {
      if (texts.size >= REFERENCE_TEXTS_MAX) texts.clear();
      texts.set(k, (ref = `${prefix}/${name}`));
    }
    return ref;
  };
  const refs = (key: string, rules: readonly string[]) => {
    let r = parsed.get(rules);
    if (!r) {
      const { chains, sets: matched } = chainReferences(key, rules);
      r = { deps: matched.map((s) => text(sets, s)), needs: chains.map((c) => text(kind, c)) };
      parsed.set(rules, r);
    }
    return r;
  };
  return {
    kind,
    table: createKernelTable<string[]>(sameRules),
    access,
    optional: opts.optional,
    dependsOn: (key, rules) => refs(key, rules).deps,
    needs: (key, rules) => refs(key, rules).needs,
    without(key, rules, missing) {
      const chains = new Set([...missing].filter((m) => m.startsWith(`${kind}/`)).map((m) => m.slice(kind.length + 1)));
      return chains.size === missing.size ? dispatchWithout(key, rules, chains) : null;
    },
    finishedByRemoval: (key, want, held) => finishedByRemoval(key, want, held),
  };
}
