import { DomainError } from '../../../lib/errors.js';
import { isMac, parseIPv4 } from '../../../lib/net/ip.js';

/** Pure route-table rules: which node's pods live behind which underlay address. No I/O. */
export interface NodeRecord {
  name: string;
  underlayAddress: string;
  vtepMac: string;
  registeredAt: Date;
  /** The node is in the route table only until then, unless it renews. */
  leaseExpiresAt: Date;
}

export interface NodeRoutes {
  node: string;
  underlayAddress: string;
  vtepMac: string;
  blockCidrs: string[];
}

export interface RoutesChange {
  revision: number;
  reset: boolean;
  upserts: NodeRoutes[];
  deletes: string[];
  /** No change: only the stream's current revision, sent on idle streams. */
  bookmark: boolean;
}

/** One logged change (a node's whole entry, or null when it left the table) as a stream message. */
export function changeMessage(c: { revision: number; node: string; routes: NodeRoutes | null }): RoutesChange {
  return c.routes ? { revision: c.revision, reset: false, upserts: [c.routes], deletes: [], bookmark: false }
    : { revision: c.revision, reset: false, upserts: [], deletes: [c.node], bookmark: false };
}

export function validateRegistration(input: { name: string; underlayAddress: string; vtepMac: string }) {
  if (!/^[a-zA-Z0-9]([-a-zA-Z0-9.]{0,251}[a-zA-Z0-9])?$/.test(input.name))
    throw new DomainError('routes.invalid_node', 'invalid_argument', `node name ${JSON.stringify(input.name)} must be a DNS name (letters, digits, '-', '.')`);
  try {
    parseIPv4(input.underlayAddress, 'underlay address');
  } catch {
    throw new DomainError('routes.invalid_underlay_address', 'invalid_argument', `underlay address ${JSON.stringify(input.underlayAddress)} is not an IPv4 address`);
  }
  if (!isMac(input.vtepMac))
    throw new DomainError('routes.invalid_vtep_mac', 'invalid_argument', `VTEP MAC ${JSON.stringify(input.vtepMac)} is not a MAC address (e.g. 02:00:c0:00:02:0b)`);
  return { name: input.name, underlayAddress: input.underlayAddress, vtepMac: input.vtepMac.toLowerCase() };
}

/** The table every agent should see (the store computes the same in SQL, store/route-log.repository.ts): registered nodes with the blocks affine to them (sorted, for stable diffs). */
export function buildRouteTable(nodes: Pick<NodeRecord, 'name' | 'underlayAddress' | 'vtepMac'>[], affinities: Map<string, string>): Map<string, NodeRoutes> {
  const byNode = new Map<string, string[]>();
  for (const [cidr, node] of affinities) {
    let list = byNode.get(node);
    if (!list) byNode.set(node, (list = []));
    list.push(cidr);
  }
  const out = new Map<string, NodeRoutes>();
  for (const n of nodes) {
    out.set(n.name, { node: n.name, underlayAddress: n.underlayAddress, vtepMac: n.vtepMac, blockCidrs: (byNode.get(n.name) ?? []).sort() });
  }
  return out;
}

function sameRoutes(a: NodeRoutes, b: NodeRoutes): boolean {
  return a.underlayAddress === b.underlayAddress && a.vtepMac === b.vtepMac && a.blockCidrs.join(',') === b.blockCidrs.join(',');
}

/** The change from one table to the next; empty when nothing differs. */
export function diffRouteTables(before: Map<string, NodeRoutes>, after: Map<string, NodeRoutes>): { upserts: NodeRoutes[]; deletes: string[] } {
  const upserts: NodeRoutes[] = [];
  const deletes: string[] = [];
  for (const [name, r] of after) {
    const old = before.get(name);
    if (!old || !sameRoutes(old, r)) upserts.push(r);
  }
  for (const name of before.keys()) if (!after.has(name)) deletes.push(name);
  return { upserts, deletes };
}
