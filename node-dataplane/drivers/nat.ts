import { createKernelTable } from '../kernel-table/table.js';
import type { Driver, KernelAccess } from '../kernel-table/dataplane.js';
import type { DriverModule } from './driver-module.js';
import { MASQUERADE_CHAIN, masqueradeRules, type NatChain } from '../domain/masquerade.js';

/**
 * Weft's masquerade chain in the nat table of one family (`nat4`: iptables, `nat6`: ip6tables): one entry, keyed by
 * the chain's name, that holds the chain's rules and one jump from POSTROUTING. No pools of the family: no entry.
 * IPv6 is optional (a node without IPv6 NAT): its failures are logged and retried at the next resync.
 */
export const natKind = (family: 4 | 6) => `nat${family}`;

/** Independent of the rest. Made by reconciler.ts (its manager: the pools, `desiredNat`). */
export const natModule: DriverModule = { placements: [{ kind: natKind(4) }, { kind: natKind(6) }] };

export function createNatDriver(access: KernelAccess<NatChain>, family: 4 | 6): Driver<NatChain> {
  return { kind: natKind(family), table: createKernelTable<NatChain>(), access, optional: family === 6 };
}

/** The nat table's desired entries for the pools (null: pools not known yet, the chain is left as it is). */
export function desiredNat(pools: readonly string[], family: 4 | 6): Map<string, NatChain> {
  const rules = masqueradeRules([...pools], MASQUERADE_CHAIN, family);
  return new Map(rules.length > 0 ? [[MASQUERADE_CHAIN, { rules, jumps: 1 }]] : []);
}
