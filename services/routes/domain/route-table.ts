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
  return c.routes
    ? { revision: c.revision, reset: false, upserts: [c.routes], deletes: [], bookmark: false }
    : { revision: c.revision, reset: false, upserts: [], deletes: [c.node], bookmark: false };
}

/** About how many bytes a node's entry takes in a message (its strings and their framing). */
export function entryBytes(n: NodeRoutes): number {
  return (
    n.node.length +
    n.underlayAddress.length +
    n.vtepMac.length +
    16 +
    n.blockCidrs.reduce((s, b) => s + b.length + 2, 0)
  );
}

/**
 * Consecutive logged changes (in revision order) as few messages as fit `budgetBytes` each: a message covers a run of
 * revisions and carries, for each node changed in the run, its entry as of the run's last revision (an upsert) or its
 * removal (a delete), never both; its revision is the run's last. Applying the messages in turn gives the same table
 * after each as applying every change up to its revision, and the last message's revision is the last change's. A run
 * ends before a change that would take it past the budget (a single change larger than the budget is a run alone).
 */
export function coalesceChanges(
  changes: readonly { revision: number; node: string; routes: NodeRoutes | null }[],
  budgetBytes: number,
): RoutesChange[] {
  const out: RoutesChange[] = [];
  let run = new Map<string, NodeRoutes | null>();
  let bytes = 0;
  let revision = 0;
  const close = () => {
    if (run.size === 0) return;
    const upserts: NodeRoutes[] = [];
    const deletes: string[] = [];
    for (const [node, routes] of run) {
      if (routes) upserts.push(routes);
      else deletes.push(node);
    }
    out.push({ revision, reset: false, upserts, deletes, bookmark: false });
    run = new Map();
    bytes = 0;
  };
  for (const c of changes) {
    const size = c.routes ? entryBytes(c.routes) : c.node.length + 2;
    if (run.size > 0 && bytes + size > budgetBytes) close();
    // A node changed again in the run keeps only its last change (delete and re-insert: the run's order of first
    // changes does not matter, since a message's entries are independent of each other).
    run.delete(c.node);
    run.set(c.node, c.routes);
    bytes += size;
    revision = c.revision;
  }
  close();
  return out;
}

export function validateRegistration(input: { name: string; underlayAddress: string; vtepMac: string }) {
  if (!/^[a-zA-Z0-9]([-a-zA-Z0-9.]{0,251}[a-zA-Z0-9])?$/.test(input.name))
    throw new DomainError(
      'routes.invalid_node',
      'invalid_argument',
      `node name ${JSON.stringify(input.name)} must be a DNS name (letters, digits, '-', '.')`,
    );
  try {
    parseIPv4(input.underlayAddress, 'underlay address');
  } catch {
    throw new DomainError(
      'routes.invalid_underlay_address',
      'invalid_argument',
      `underlay address ${JSON.stringify(input.underlayAddress)} is not an IPv4 address`,
    );
  }
  if (!isMac(input.vtepMac))
    throw new DomainError(
      'routes.invalid_vtep_mac',
      'invalid_argument',
      `VTEP MAC ${JSON.stringify(input.vtepMac)} is not a MAC address (e.g. 02:00:c0:00:02:0b)`,
    );
  return { name: input.name, underlayAddress: input.underlayAddress, vtepMac: input.vtepMac.toLowerCase() };
}

/** At most this many names in one ListDepartedNodes request. */
export const MAX_DEPARTED_QUERY = 10_000;

export function validateDepartedQuery(names: string[]): string[] {
  if (names.length > MAX_DEPARTED_QUERY)
    throw new DomainError(
      'routes.too_many_names',
      'invalid_argument',
      `ListDepartedNodes takes at most ${MAX_DEPARTED_QUERY} names (got ${names.length}): ask in several requests`,
    );
  return [...new Set(names)];
}
