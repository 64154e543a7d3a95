import { formatCidr, parseCidr, type Family } from '../../lib/net/ip.js';

/**
 * Masquerade, purely: pods' traffic to addresses outside the cluster's pools leaves the node with the node's own
 * (underlay) address as its source; traffic between pods, on any node, keeps the pods' addresses. The rules live in
 * Weft's own chain of the `nat` table, jumped to from POSTROUTING, and are written with `iptables-restore
 * --noflush`: declaring the chain flushes and refills only it, so nobody else's rules are touched.
 *
 *   -A POSTROUTING -m comment --comment "weft: masquerade pod traffic leaving the pools" -j WEFT-POSTROUTING
 *   -A WEFT-POSTROUTING -d <pool> -j RETURN            (one per pool: to a pod, keep the source)
 *   -A WEFT-POSTROUTING -s <pool> -j MASQUERADE        (one per pool: from a pod, anywhere else)
 *
 * Rules are written in the exact form `iptables-save` prints them, so that reading the table back and comparing
 * lines tells whether anything is to do: an unchanged table is never rewritten. IPv6 pools get the same chain in
 * ip6tables' `nat` table (ULA pod addresses leave the cluster behind the node's address, as Calico's natOutgoing does).
 */
export const MASQUERADE_CHAIN = 'WEFT-POSTROUTING';
const JUMP_COMMENT = 'weft: masquerade pod traffic leaving the pools';

/** The pools of one family, normalised and sorted, so that the same pools in any order give the same rules. */
export function normalisePools(cidrs: Iterable<string>, family: Family = 4): string[] {
  return [
    ...new Set(
      [...cidrs]
        .map((c) => parseCidr(c, 'pool'))
        .filter((c) => c.family === family)
        .map(formatCidr),
    ),
  ].sort();
}

export function jumpRule(chain = MASQUERADE_CHAIN): string {
  return `-A POSTROUTING -m comment --comment "${JUMP_COMMENT}" -j ${chain}`;
}

/** The chain's rules for the pools of one family, as iptables-save (ip6tables-save) prints them. */
export function masqueradeRules(pools: string[], chain = MASQUERADE_CHAIN, family: Family = 4): string[] {
  const p = normalisePools(pools, family);
  return [...p.map((c) => `-A ${chain} -d ${c} -j RETURN`), ...p.map((c) => `-A ${chain} -s ${c} -j MASQUERADE`)];
}

/** What `iptables-save -t nat` shows of Weft's masquerade: whether the chain exists, its rules, and how often POSTROUTING jumps to it. */
export interface NatActual {
  chainExists: boolean;
  rules: string[];
  jumps: number;
}

export function readNatSave(save: string, chain = MASQUERADE_CHAIN): NatActual {
  const lines = save.split('\n').map((l) => l.trim());
  return {
    chainExists: lines.some((l) => l.startsWith(`:${chain} `)),
    rules: lines.filter((l) => l.startsWith(`-A ${chain} `)),
    jumps: lines.filter((l) => l.startsWith('-A POSTROUTING ') && l.endsWith(` -j ${chain}`)).length,
  };
}

/**
 * The `iptables-restore --noflush` input that makes the kernel match, or null when it already does. The chain is
 * declared (which flushes it) and refilled whole; the jump is added only when it is missing, and extra jumps (a
 * second one added by hand) are deleted, so exactly one remains.
 */
export function planMasquerade(
  pools: string[],
  actual: NatActual,
  chain = MASQUERADE_CHAIN,
  family: Family = 4,
): string | null {
  const rules = masqueradeRules(pools, chain, family);
  // A family with no pool and no chain of Weft's yet is left alone (a node without IPv6 pools never touches ip6tables).
  if (rules.length === 0 && !actual.chainExists && actual.jumps === 0) return null;
  return masqueradeRestore(rules, actual, chain);
}

/** The restore input that makes the chain hold exactly `rules` with one jump to it, or null when it already does. */
export function masqueradeRestore(
  rules: readonly string[],
  actual: NatActual,
  chain = MASQUERADE_CHAIN,
): string | null {
  const rulesRight =
    actual.chainExists && actual.rules.length === rules.length && actual.rules.every((r, i) => r === rules[i]);
  if (rulesRight && actual.jumps === 1) return null;
  const jump = jumpRule(chain);
  const out = ['*nat', `:${chain} - [0:0]`, ...rules];
  if (actual.jumps === 0) out.push(jump);
  for (let i = 1; i < actual.jumps; i++) out.push(jump.replace(/^-A /, '-D '));
  out.push('COMMIT', '');
  return out.join('\n');
}

/**
 * Weft's nat chain as the nat driver's table keeps it (one entry, keyed by the chain's name): its rules and the jumps
 * to it. An empty chain with its one jump is what no pools ask for, so it reads as no entry at all.
 */
export interface NatChain {
  rules: string[];
  jumps: number;
}

export function natChainOf(actual: NatActual): NatChain | null {
  if (!actual.chainExists && actual.jumps === 0) return null;
  if (actual.chainExists && actual.rules.length === 0 && actual.jumps === 1) return null;
  return { rules: actual.rules, jumps: actual.jumps };
}
