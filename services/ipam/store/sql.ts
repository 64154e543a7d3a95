import { sql, type SQL } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import type { Family } from '../../../lib/net/ip.js';
import { BLOCKS_CHANNEL, type PoolRecord } from '../domain/ipam-store.js';
import type { Allocation } from '../domain/types.js';
import type { allocations, blocks, pools } from './schema.js';

/**
 * What the IPAM repositories share: the session type, typed rows (drawn from the drizzle schema in `schema.ts`), and
 * the SQL fragments more than one repository uses.
 */
export type Tx = Pick<Database, 'execute'>;

export type PoolRow = typeof pools.$inferSelect;
export type BlockRow = typeof blocks.$inferSelect;
export type AllocationRow = typeof allocations.$inferSelect;

/** Runs a query whose columns are aliased to the row type's keys. */
export async function rows<T extends Record<string, unknown>>(db: Tx, query: SQL): Promise<T[]> {
  return (await db.execute<T>(query)).rows as T[];
}

export { BLOCKS_CHANNEL } from '../domain/ipam-store.js';

/** Serializes block claims and releases: block_events revisions commit in revision order (DESIGN.md, Order). */
export const CLAIM_LOCK = sql`SELECT pg_advisory_xact_lock(hashtext('ipam.block_claims'))`;

/** A text[] parameter (drizzle would expand a JS array into a list of parameters). */
export const textArray = (values: string[]) =>
  sql`(SELECT coalesce(array_agg(v), '{}'::text[]) FROM jsonb_array_elements_text(${JSON.stringify(values)}::jsonb) AS v)`;

/** An allocation with its pool, block and routing domain named (ALLOCATION_COLUMNS over ALLOCATION_JOINS, alias a). */
export type AllocationView = Pick<
  AllocationRow,
  | 'handle'
  | 'address'
  | 'family'
  | 'node'
  | 'podNamespace'
  | 'podName'
  | 'containerId'
  | 'owner'
  | 'cluster'
  | 'podUid'
  | 'allocatedAt'
> & { pool: string; blockCidr: string; routingDomain: string };

export const ALLOCATION_COLUMNS = sql`a.handle, host(a.address) AS address, a.family, p.name AS pool, b.cidr::text AS "blockCidr", a.node,
  a.pod_namespace AS "podNamespace", a.pod_name AS "podName", a.container_id AS "containerId", a.owner, a.cluster, d.name AS "routingDomain",
  a.pod_uid AS "podUid", a.allocated_at AS "allocatedAt"`;
export const ALLOCATION_JOINS = sql`JOIN ipam.pools p ON p.id = a.pool_id JOIN ipam.blocks b ON b.id = a.block_id JOIN ipam.routing_domains d ON d.id = a.routing_domain_id`;

export function toAllocation(r: AllocationView): Allocation {
  return {
    handle: r.handle,
    address: r.address,
    family: Number(r.family) as Family,
    pool: r.pool,
    blockCidr: r.blockCidr,
    node: r.node,
    podNamespace: r.podNamespace,
    podName: r.podName,
    containerId: r.containerId,
    owner: r.owner ?? '',
    cluster: r.cluster ?? '',
    routingDomain: r.routingDomain,
    podUid: r.podUid ?? '',
    // A Date from a row, a string from a JSON object (the group-commit statement's 'existing').
    allocatedAt: new Date(r.allocatedAt),
  };
}

/** A pool row with its routing domain's name (POOL_COLUMNS, alias pools), and its live allocations where asked. */
export type PoolView = Pick<
  PoolRow,
  | 'id'
  | 'name'
  | 'cidr'
  | 'family'
  | 'blockPrefixLength'
  | 'cooldownSeconds'
  | 'stickySeconds'
  | 'disabled'
  | 'nodeSelector'
  | 'namespaceSelector'
  | 'allowedUses'
  | 'maxBlocksPerNode'
  | 'version'
  | 'createdAt'
  | 'routingDomainId'
> & { routingDomain: string; live?: string | number };

export const POOL_COLUMNS = sql`id, name, cidr::text AS cidr, family, block_prefix_length AS "blockPrefixLength", cooldown_seconds AS "cooldownSeconds",
  sticky_seconds AS "stickySeconds", disabled, node_selector AS "nodeSelector", namespace_selector AS "namespaceSelector",
  allowed_uses AS "allowedUses", max_blocks_per_node AS "maxBlocksPerNode", version, created_at AS "createdAt", routing_domain_id AS "routingDomainId",
  (SELECT d.name FROM ipam.routing_domains d WHERE d.id = pools.routing_domain_id) AS "routingDomain"`;
/** A pool's live allocations, from its per-node counters (one row per node, never a count of allocation rows). */
export const LIVE_COUNT = sql`(SELECT coalesce(sum(u.live), 0) FROM ipam.node_usage u WHERE u.pool_id = pools.id) AS live`;

export function toPoolRecord(r: PoolView): PoolRecord {
  return {
    id: r.id,
    routingDomainId: r.routingDomainId,
    name: r.name,
    cidr: r.cidr,
    family: Number(r.family) as Family,
    blockPrefixLength: r.blockPrefixLength,
    cooldownSeconds: r.cooldownSeconds,
    stickySeconds: r.stickySeconds,
    disabled: r.disabled,
    nodeSelector: r.nodeSelector,
    namespaceSelector: r.namespaceSelector,
    allowedUses: r.allowedUses,
    maxBlocksPerNode: r.maxBlocksPerNode ?? 0,
    routingDomain: r.routingDomain,
    etag: `"${r.id}.${r.version}"`,
    liveAllocations: Number(r.live ?? 0),
    createdAt: new Date(r.createdAt),
  };
}

/** Reserved addresses of pool `poolId` inside block `cidr` (each reservation clamped to the block). */
export const reservedInBlock = (
  cidr: SQL,
  poolId: SQL,
) => sql`(SELECT coalesce(sum((least(r.last, host(broadcast(${cidr}))::inet) - greatest(r.first, host(network(${cidr}))::inet)) + 1), 0)
  FROM ipam.reservations r WHERE r.pool_id = ${poolId} AND r.first <= host(broadcast(${cidr}))::inet AND r.last >= host(network(${cidr}))::inet)`;

/** Logs a block's new affinity (node null: it left its node) and wakes the watchers. The caller holds the claim lock. */
export async function logAffinity(tx: Tx, pool: string, cidr: string, node: string | null): Promise<void> {
  await tx.execute(sql`INSERT INTO ipam.block_events (revision, cidr, pool, node)
    VALUES (nextval('ipam.revision_seq'), ${cidr}::cidr, ${pool}, ${node})`);
  await tx.execute(sql`SELECT pg_notify(${BLOCKS_CHANNEL}, '')`);
}
