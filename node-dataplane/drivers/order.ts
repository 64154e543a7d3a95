import type { Phase } from '../kernel-table/dataplane.js';
import { FDB } from './fdb.js';
import { natKind } from './nat.js';
import { NEIGHBOUR } from './neighbours.js';
import { filterKind } from './filter.js';
import { ipsetKind } from './ipsets.js';
import { ROUTE } from './routes.js';
import { DEVICE } from './vxlan-device.js';

/**
 * The one kernel dependency order. The device first (everything of the overlay lives on it); Weft's nat chains
 * (independent of the rest); then the overlay: route deletes first, neighbour, FDB and route writes in that order, and
 * FDB and neighbour deletes last, so that every route that used them has been deleted or replaced (a node switching
 * to direct routing) by then and a switching block is never without a path. Entries that depend on one that is not
 * in place are held back (`dependsOn` of each driver; kernel-table/dataplane.ts).
 */
export const ORDER: readonly Phase[] = [
  { kind: DEVICE, op: 'update' },
  { kind: natKind(4), op: 'update' },
  { kind: natKind(4), op: 'delete' },
  { kind: natKind(6), op: 'update' },
  { kind: natKind(6), op: 'delete' },
  { kind: ROUTE, op: 'delete' },
  { kind: NEIGHBOUR, op: 'update' },
  { kind: FDB, op: 'update' },
  { kind: ROUTE, op: 'update' },
  { kind: FDB, op: 'delete' },
  { kind: NEIGHBOUR, op: 'delete' },
  // Network policy per family: sets before the chains that match them; the chains' removals (anchors' old rules, stale
  // chains) in a transaction of their own after the new rules are in force; sets destroyed once no chain uses them.
  ...([4, 6] as const).flatMap((f): Phase[] => [
    { kind: ipsetKind(f), op: 'update' },
    { kind: filterKind(f), op: 'update' },
    { kind: filterKind(f), op: 'delete' },
    { kind: ipsetKind(f), op: 'delete' },
  ]),
];

/** Kinds whose entries live on an entry of another: when it is re-made, they are read back. */
export const DEPENDENTS: Readonly<Record<string, readonly string[]>> = { [DEVICE]: [NEIGHBOUR, FDB, ROUTE] };

/** The overlay's kinds (what the route snapshot decides). */
export const OVERLAY_KINDS = [NEIGHBOUR, FDB, ROUTE] as const;
