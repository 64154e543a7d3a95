import { createKernelTable } from '../kernel-table/table.js';
import type { Driver, KernelAccess } from '../kernel-table/dataplane.js';
import type { Placement } from '../kernel-table/placement.js';

/**
 * Weft's ipsets of one family (`ipset4`: `weft-…` sets, `ipset6`: `weft6-…`), keyed by the set's name, each holding
 * its members as `ipset save` prints them, sorted. A set is named by its content's hash, so a changed selector result
 * is a new entry; a set edited by hand is refilled. Written before the filter chains that match it (their placement);
 * destroyed only when no chain the kernel holds uses it any more, the dataplane's delete hold: a chain that matches a
 * set depends on it (drivers/filter.ts).
 */
export const ipsetKind = (family: 4 | 6) => `ipset${family}`;

/** Independent of the rest; the filter chains depend on it (filter.ts). Made by policy.ts. */
export const ipsetPlacement = (family: 4 | 6): Placement => ({ kind: ipsetKind(family) });

const sameMembers = (a: readonly string[], b: readonly string[]) =>
  a === b || (a.length === b.length && a.every((x, i) => x === b[i]));

export function createIpsetDriver(
  access: KernelAccess<string[]>,
  family: 4 | 6,
  opts: { optional?: boolean } = {},
): Driver<string[]> {
  return { kind: ipsetKind(family), table: createKernelTable<string[]>(sameMembers), access, optional: opts.optional };
}
