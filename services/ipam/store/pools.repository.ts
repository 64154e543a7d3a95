import { sql, type SQL } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import { formatCidr } from '../../../lib/net/ip.js';
import type { PoolCatalog, PoolStore } from '../domain/ipam-store.js';
import { ipamErrors } from '../domain/ipam.errors.js';
import type { Page, PageKey } from '../domain/paging.js';
import type { PoolSpec } from '../domain/pool.js';
import type { Pool, PoolChanges, Reservation } from '../domain/types.js';
import { PG, pgErrorOf } from './pg-errors.js';
import type { namespaceLabels, nodeLabels, reservations } from './schema.js';
import {
  CLAIM_LOCK,
  LIVE_COUNT,
  POOL_COLUMNS,
  rows,
  textArray,
  toPoolRecord,
  type PoolRow,
  type PoolView,
  type Tx,
} from './sql.js';

/** Pools, their reservations, and the labels stored for pool selection. */
type ReservationView = Pick<typeof reservations.$inferSelect, 'id' | 'first' | 'last' | 'reason' | 'createdAt'> & {
  pool: string;
};
type LabelsRow = Pick<typeof nodeLabels.$inferSelect | typeof namespaceLabels.$inferSelect, 'labels'>;
type PoolKeys = Pick<PoolRow, 'id' | 'routingDomainId' | 'blockPrefixLength'>;

const toPool = (r: PoolView): Pool => {
  const { id: _id, routingDomainId: _domain, ...pool } = toPoolRecord(r);
  return pool;
};

function toReservation(r: ReservationView): Reservation {
  return {
    id: Number(r.id),
    pool: r.pool,
    first: r.first,
    last: r.last,
    reason: r.reason,
    createdAt: new Date(r.createdAt),
  };
}

/**
 * Adds `sign` times each reservation's overlap to the reserved counters of the pool's live blocks it overlaps (found
 * by address range on the live-block index). The caller holds the claim lock, so no block is claimed meanwhile with a
 * count that misses or doubles the change.
 */
async function countReservation(tx: Tx, pool: PoolKeys, first: string, last: string, sign: 1 | -1): Promise<void> {
  await tx.execute(sql`UPDATE ipam.blocks b SET reserved = b.reserved + ${sign}::int * ((least(${last}::inet, host(broadcast(b.cidr))::inet) - greatest(${first}::inet, host(network(b.cidr))::inet)) + 1)::int
    WHERE b.routing_domain_id = ${pool.routingDomainId} AND b.pool_id = ${pool.id} AND b.released_at IS NULL
      AND b.cidr >= network(set_masklen(${first}::inet, ${pool.blockPrefixLength}::int))::cidr
      AND b.cidr <= network(set_masklen(${last}::inet, ${pool.blockPrefixLength}::int))::cidr`);
}

export function createPoolsRepository(db: Database): PoolStore {
  async function createPool(spec: PoolSpec): Promise<Pool> {
    const cidr = formatCidr(spec.cidr);
    try {
      const [domain] = await rows<{ id: number }>(
        db,
        sql`SELECT id FROM ipam.routing_domains WHERE name = ${spec.routingDomain}`,
      );
      if (!domain) throw ipamErrors.routingDomainNotFound(spec.routingDomain);
      const [row] = await rows<PoolView>(
        db,
        sql`INSERT INTO ipam.pools (name, cidr, family, block_prefix_length, cooldown_seconds, sticky_seconds,
          disabled, node_selector, namespace_selector, allowed_uses, max_blocks_per_node, routing_domain_id)
        VALUES (${spec.name}, ${cidr}::cidr, ${spec.cidr.family}, ${spec.blockPrefixLength}, ${spec.cooldownSeconds}, ${spec.stickySeconds},
          ${spec.disabled}, ${spec.nodeSelector}, ${spec.namespaceSelector}, ${textArray(spec.allowedUses)}, ${spec.maxBlocksPerNode}, ${domain.id})
        RETURNING ${POOL_COLUMNS}`,
      );
      return toPool(row!);
    } catch (err) {
      const pg = pgErrorOf(err);
      if (pg?.code === PG.exclusionViolation) {
        const [other] = await rows<Pick<PoolRow, 'name' | 'cidr'>>(
          db,
          sql`SELECT p.name, p.cidr::text AS cidr FROM ipam.pools p JOIN ipam.routing_domains d ON d.id = p.routing_domain_id
          WHERE p.cidr && ${cidr}::cidr AND d.name = ${spec.routingDomain} LIMIT 1`,
        );
        throw ipamErrors.poolOverlaps(
          cidr,
          `${other ? `${other.name} (${other.cidr})` : 'another pool'} in routing domain ${spec.routingDomain}`,
        );
      }
      if (pg?.code === PG.uniqueViolation) throw ipamErrors.poolExists(spec.name);
      throw err;
    }
  }

  async function listPools(page: { after: PageKey | null; limit: number }): Promise<Page<Pool>> {
    const after = page.after ? String(page.after[0]) : null;
    const r = await rows<PoolView>(
      db,
      sql`SELECT ${POOL_COLUMNS}, ${LIVE_COUNT} FROM ipam.pools
      WHERE ${after}::text IS NULL OR name > ${after} ORDER BY name LIMIT ${page.limit + 1}`,
    );
    const items = r.slice(0, page.limit).map(toPool);
    return { items, next: r.length > page.limit ? [items.at(-1)!.name] : null };
  }

  async function updatePool(name: string, etag: string, changes: PoolChanges): Promise<Pool> {
    const sets: SQL[] = [sql`version = version + 1`];
    if (changes.cooldownSeconds !== undefined) sets.push(sql`cooldown_seconds = ${changes.cooldownSeconds}`);
    if (changes.stickySeconds !== undefined) sets.push(sql`sticky_seconds = ${changes.stickySeconds}`);
    if (changes.disabled !== undefined) sets.push(sql`disabled = ${changes.disabled}`);
    if (changes.nodeSelector !== undefined) sets.push(sql`node_selector = ${changes.nodeSelector}`);
    if (changes.namespaceSelector !== undefined) sets.push(sql`namespace_selector = ${changes.namespaceSelector}`);
    if (changes.allowedUses !== undefined) sets.push(sql`allowed_uses = ${textArray(changes.allowedUses)}`);
    if (changes.maxBlocksPerNode !== undefined) sets.push(sql`max_blocks_per_node = ${changes.maxBlocksPerNode}`);
    const [row] = await rows<PoolView>(
      db,
      sql`UPDATE ipam.pools SET ${sql.join(sets, sql`, `)}
      WHERE name = ${name} AND '"' || id || '.' || version || '"' = ${etag} RETURNING ${POOL_COLUMNS}, ${LIVE_COUNT}`,
    );
    if (row) return toPool(row);
    const [exists] = await rows(db, sql`SELECT 1 FROM ipam.pools WHERE name = ${name}`);
    throw exists ? ipamErrors.staleEtag(`pool ${name}`) : ipamErrors.poolNotFound(name);
  }

  async function readPoolCatalog(): Promise<PoolCatalog> {
    const pools = (await rows<PoolView>(db, sql`SELECT ${POOL_COLUMNS} FROM ipam.pools ORDER BY name`)).map(
      toPoolRecord,
    );
    // Each cluster's routing domain; '' stands for a caller that names no cluster (the default domain).
    const domains = await rows<{ name: string; id: number }>(
      db,
      sql`SELECT c.name, c.routing_domain_id AS id FROM ipam.clusters c
      UNION ALL SELECT '', id FROM ipam.routing_domains WHERE name = 'default'`,
    );
    return { pools, domainOf: new Map(domains.map((d) => [d.name, Number(d.id)])) };
  }

  async function createReservation(
    poolName: string,
    first: string,
    last: string,
    reason: string,
  ): Promise<Reservation> {
    // Rare, and it takes the claim lock after the pool row, then blocks: a deadlock with an allocation is retried (by the caller).
    return db.transaction(async (tx) => {
      const [pool] = await rows<PoolKeys & Pick<PoolRow, 'cidr'>>(
        tx,
        sql`SELECT id, cidr::text AS cidr, routing_domain_id AS "routingDomainId",
          block_prefix_length AS "blockPrefixLength" FROM ipam.pools WHERE name = ${poolName} FOR UPDATE`,
      );
      if (!pool) throw ipamErrors.poolNotFound(poolName);
      const [inside] = await rows<{ ok: boolean }>(
        tx,
        sql`SELECT ${first}::inet <<= ${pool.cidr}::cidr AND ${last}::inet <<= ${pool.cidr}::cidr
        AND ${first}::inet <= ${last}::inet AS ok`,
      );
      if (!inside!.ok)
        throw ipamErrors.invalid(
          'reservation',
          `range ${first}..${last} must be ordered and inside pool ${poolName} (${pool.cidr})`,
        );
      const held = await rows<{ address: string; handle: string }>(
        tx,
        sql`SELECT host(address) AS address, handle FROM ipam.allocations
        WHERE released_at IS NULL AND address >= ${first}::inet AND address <= ${last}::inet AND family(address) = family(${first}::inet)
          AND routing_domain_id = ${pool.routingDomainId} LIMIT 5`,
      );
      if (held.length > 0)
        throw ipamErrors.reservedInUse(
          `${first}..${last}`,
          held.map((h) => `${h.address} (${h.handle})`),
        );
      await tx.execute(
        sql`DELETE FROM ipam.free_addresses WHERE address >= ${first}::inet AND address <= ${last}::inet AND routing_domain_id = ${pool.routingDomainId}`,
      );
      // Blocks already claimed count the new reservation now; a block claimed later counts it when it is claimed.
      await tx.execute(CLAIM_LOCK);
      await countReservation(tx, pool, first, last, 1);
      const [r] = await rows<ReservationView>(
        tx,
        sql`INSERT INTO ipam.reservations (pool_id, first, last, reason) VALUES (${pool.id}, ${first}::inet, ${last}::inet, ${reason})
        RETURNING id, ${poolName}::text AS pool, host(first) AS first, host(last) AS last, reason, created_at AS "createdAt"`,
      );
      return toReservation(r!);
    });
  }

  async function listReservations(
    poolName: string | null,
    page: { after: PageKey | null; limit: number },
  ): Promise<Page<Reservation>> {
    const [aPool, aId] = page.after ? [String(page.after[0]), Number(page.after[1])] : [null, null];
    const r = await rows<ReservationView>(
      db,
      sql`SELECT r.id, p.name AS pool, host(r.first) AS first, host(r.last) AS last, r.reason, r.created_at AS "createdAt"
      FROM ipam.reservations r JOIN ipam.pools p ON p.id = r.pool_id
      WHERE (${poolName}::text IS NULL OR p.name = ${poolName}) AND (${aPool}::text IS NULL OR (p.name, r.id) > (${aPool}, ${aId}::int))
      ORDER BY p.name, r.id LIMIT ${page.limit + 1}`,
    );
    const items = r.slice(0, page.limit).map(toReservation);
    return { items, next: r.length > page.limit ? [items.at(-1)!.pool, items.at(-1)!.id] : null };
  }

  async function deleteReservation(poolName: string, id: number): Promise<boolean> {
    return db.transaction(async (tx) => {
      await tx.execute(CLAIM_LOCK);
      const [r] = await rows<PoolKeys & { first: string; last: string }>(
        tx,
        sql`DELETE FROM ipam.reservations r USING ipam.pools p
        WHERE r.pool_id = p.id AND p.name = ${poolName} AND r.id = ${id}
        RETURNING host(r.first) AS first, host(r.last) AS last, p.id, p.routing_domain_id AS "routingDomainId", p.block_prefix_length AS "blockPrefixLength"`,
      );
      if (!r) return false;
      await countReservation(tx, r, r.first, r.last, -1);
      return true;
    });
  }

  /** Stores a node's labels (replacing what was there); none removes its row. */
  async function setNodeLabels(node: string, labels: Record<string, string>): Promise<void> {
    if (Object.keys(labels).length === 0) await db.execute(sql`DELETE FROM ipam.node_labels WHERE node = ${node}`);
    else
      await db.execute(sql`INSERT INTO ipam.node_labels (node, labels) VALUES (${node}, ${JSON.stringify(labels)}::jsonb)
      ON CONFLICT (node) DO UPDATE SET labels = excluded.labels, updated_at = now()`);
  }

  /** Stores a namespace's labels within a cluster ('' for callers naming none); none removes its row. */
  async function setNamespaceLabels(
    cluster: string | null,
    namespace: string,
    labels: Record<string, string>,
  ): Promise<void> {
    if (cluster) {
      const [known] = await rows(db, sql`SELECT 1 FROM ipam.clusters WHERE name = ${cluster}`);
      if (!known) throw ipamErrors.clusterNotFound(cluster);
    }
    if (Object.keys(labels).length === 0)
      await db.execute(
        sql`DELETE FROM ipam.namespace_labels WHERE cluster = ${cluster ?? ''} AND namespace = ${namespace}`,
      );
    else
      await db.execute(sql`INSERT INTO ipam.namespace_labels (cluster, namespace, labels) VALUES (${cluster ?? ''}, ${namespace}, ${JSON.stringify(labels)}::jsonb)
      ON CONFLICT (cluster, namespace) DO UPDATE SET labels = excluded.labels, updated_at = now()`);
  }

  /** One statement for both kinds; a kind not asked for reads nothing. */
  async function storedLabels(q: { node: string | null; cluster: string; namespace: string | null }) {
    const [r] = await rows<{ node: LabelsRow['labels'] | null; namespace: LabelsRow['labels'] | null }>(
      db,
      sql`SELECT
        (SELECT labels FROM ipam.node_labels WHERE ${q.node !== null} AND node = ${q.node ?? ''}) AS node,
        (SELECT labels FROM ipam.namespace_labels WHERE ${q.namespace !== null} AND cluster = ${q.cluster} AND namespace = ${q.namespace ?? ''}) AS namespace`,
    );
    return { node: r?.node ?? null, namespace: r?.namespace ?? null };
  }

  return {
    createPool,
    listPools,
    updatePool,
    readPoolCatalog,
    createReservation,
    listReservations,
    deleteReservation,
    setNodeLabels,
    setNamespaceLabels,
    storedLabels,
  };
}
