import { formatIPv4, parseCidr4 } from '../../lib/net/ip.js';

/**
 * Pure desired-state computation and planning for the VXLAN overlay. Keys are stable so that the plan is a
 * minimal difference: an entry that is already right is never touched.
 */
export interface RemoteNode {
  node: string;
  underlayAddress: string;
  vtepMac: string;
  blockCidrs: string[];
}

export interface NeighbourEntry { kind: 'neighbour'; key: string; ip: string; mac: string }
export interface FdbEntry { kind: 'fdb'; key: string; mac: string; dst: string }
export interface RouteEntry { kind: 'route'; key: string; cidr: string; gateway: string }
export type KernelEntry = NeighbourEntry | FdbEntry | RouteEntry;

export interface KernelState {
  neighbours: Map<string, NeighbourEntry>;
  fdb: Map<string, FdbEntry>;
  routes: Map<string, RouteEntry>;
}

export const emptyState = (): KernelState => ({ neighbours: new Map(), fdb: new Map(), routes: new Map() });

/** The next hop of a block's route: the block's first address, resolved by a permanent neighbour entry to the VTEP MAC. */
export function gatewayOf(blockCidr: string): string {
  return formatIPv4(parseCidr4(blockCidr).base);
}

export function computeDesired(self: string, nodes: Iterable<RemoteNode>): KernelState {
  const s = emptyState();
  for (const n of nodes) {
    if (n.node === self || n.blockCidrs.length === 0) continue;
    const mac = n.vtepMac.toLowerCase();
    s.fdb.set(mac, { kind: 'fdb', key: mac, mac, dst: n.underlayAddress });
    for (const cidr of n.blockCidrs) {
      const gw = gatewayOf(cidr);
      s.neighbours.set(gw, { kind: 'neighbour', key: gw, ip: gw, mac });
      s.routes.set(cidr, { kind: 'route', key: cidr, cidr, gateway: gw });
    }
  }
  return s;
}

export interface Plan {
  /** In kernel dependency order: neighbours and FDB before routes on add; routes first on delete. */
  phases: { op: 'add' | 'delete'; entries: KernelEntry[] }[];
}

function same(a: KernelEntry, b: KernelEntry): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function changed<T extends KernelEntry>(desired: Map<string, T>, actual: Map<string, T>) {
  const add: T[] = [];
  const del: T[] = [];
  for (const [k, d] of desired) {
    const a = actual.get(k);
    if (!a || !same(a, d)) add.push(d);
  }
  for (const [k, a] of actual) if (!desired.has(k)) del.push(a);
  return { add, del };
}

export function planChanges(desired: KernelState, actual: KernelState): Plan {
  const n = changed(desired.neighbours, actual.neighbours);
  const f = changed(desired.fdb, actual.fdb);
  const r = changed(desired.routes, actual.routes);
  const phases: Plan['phases'] = [
    { op: 'delete', entries: r.del },
    { op: 'delete', entries: f.del },
    { op: 'delete', entries: n.del },
    { op: 'add', entries: n.add },
    { op: 'add', entries: f.add },
    { op: 'add', entries: r.add },
  ];
  return { phases: phases.filter((p) => p.entries.length > 0) };
}

export const planSize = (p: Plan) => p.phases.reduce((s, ph) => s + ph.entries.length, 0);

/**
 * Entries a plan adds back that the kernel held, exactly so, after the previous pass: drift that someone or
 * something else caused (a hand-made delete, a flushed table, a deleted device). `previous` is what the kernel
 * held at the end of the previous pass, or null when that is unknown (first pass, or a pass with failures).
 */
export function driftRepairs(plan: Plan, previous: KernelState | null): KernelEntry[] {
  if (!previous) return [];
  const out: KernelEntry[] = [];
  for (const phase of plan.phases) {
    if (phase.op !== 'add') continue;
    for (const e of phase.entries) {
      const before = e.kind === 'neighbour' ? previous.neighbours.get(e.key) : e.kind === 'fdb' ? previous.fdb.get(e.key) : previous.routes.get(e.key);
      if (before && same(before, e)) out.push(e);
    }
  }
  return out;
}
