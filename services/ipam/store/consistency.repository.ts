import { sql, type SQL } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import { reservedInBlock, rows } from './sql.js';

/**
 * `weft ipam check`: each invariant of IPAM's tables as a query that returns its violations (at most 20 each). The
 * counters kept by triggers (README.md) are recounted from the rows here.
 */
/** Each invariant as a query that returns its violations (at most 20 each). */
const CHECKS: { kind: string; query: SQL }[] = [
  {
    kind: 'address_live_twice',
    query: sql`SELECT host(address) || ' is live ' || count(*) || ' times in one routing domain' AS detail FROM ipam.allocations WHERE released_at IS NULL GROUP BY routing_domain_id, address HAVING count(*) > 1 LIMIT 20`,
  },
  {
    kind: 'allocation_outside_block',
    query: sql`SELECT a.handle || ' holds ' || host(a.address) || ' outside its block ' || b.cidr AS detail FROM ipam.allocations a JOIN ipam.blocks b ON b.id = a.block_id WHERE a.released_at IS NULL AND NOT a.address <<= b.cidr LIMIT 20`,
  },
  {
    kind: 'allocation_node_mismatch',
    query: sql`SELECT a.handle || ' on node ' || a.node || ' holds ' || host(a.address) || ' in block ' || b.cidr || ' of node ' || b.node AS detail FROM ipam.allocations a JOIN ipam.blocks b ON b.id = a.block_id WHERE a.released_at IS NULL AND a.node <> b.node LIMIT 20`,
  },
  {
    kind: 'routing_domain_mismatch',
    query: sql`SELECT a.handle || ' holds ' || host(a.address) || ' in another routing domain than its block ' || b.cidr AS detail FROM ipam.allocations a JOIN ipam.blocks b ON b.id = a.block_id JOIN ipam.pools p ON p.id = b.pool_id WHERE a.released_at IS NULL AND (a.routing_domain_id <> b.routing_domain_id OR b.routing_domain_id <> p.routing_domain_id) LIMIT 20`,
  },
  {
    kind: 'block_outside_pool',
    query: sql`SELECT 'block ' || b.cidr || ' lies outside pool ' || p.name AS detail FROM ipam.blocks b JOIN ipam.pools p ON p.id = b.pool_id WHERE NOT b.cidr <<= p.cidr LIMIT 20`,
  },
  {
    kind: 'live_count_mismatch',
    query: sql`SELECT 'block ' || b.cidr || ' counts ' || b.live_count || ' live, holds ' || (SELECT count(*) FROM ipam.allocations a WHERE a.address BETWEEN host(network(b.cidr))::inet AND host(broadcast(b.cidr))::inet AND a.routing_domain_id = b.routing_domain_id AND a.released_at IS NULL) AS detail FROM ipam.blocks b WHERE b.released_at IS NULL AND b.live_count <> (SELECT count(*) FROM ipam.allocations a WHERE a.address BETWEEN host(network(b.cidr))::inet AND host(broadcast(b.cidr))::inet AND a.routing_domain_id = b.routing_domain_id AND a.released_at IS NULL) LIMIT 20`,
  },
  {
    kind: 'reserved_count_mismatch',
    query: sql`SELECT 'block ' || b.cidr || ' counts ' || b.reserved || ' reserved, holds ' || x.n AS detail FROM ipam.blocks b
      CROSS JOIN LATERAL (SELECT ${reservedInBlock(sql`b.cidr`, sql`b.pool_id`)} AS n) x WHERE b.released_at IS NULL AND b.reserved <> x.n LIMIT 20`,
  },
  // The per-node counters utilization reads, recounted from the rows: live blocks and their reserved addresses, live allocations.
  {
    kind: 'usage_count_mismatch',
    query: sql`WITH b AS (SELECT pool_id, node, count(*) AS blocks, sum(reserved) AS reserved FROM ipam.blocks WHERE released_at IS NULL GROUP BY pool_id, node),
      a AS (SELECT pool_id, node, count(*) AS live FROM ipam.allocations WHERE released_at IS NULL GROUP BY pool_id, node)
    SELECT 'pool ' || p.name || ', node ' || k.node || ': counts ' || coalesce(u.blocks, 0) || ' blocks, ' || coalesce(u.live, 0) || ' live, ' || coalesce(u.reserved, 0)
        || ' reserved; holds ' || coalesce(b.blocks, 0) || ' blocks, ' || coalesce(a.live, 0) || ' live, ' || coalesce(b.reserved, 0) || ' reserved' AS detail
    FROM (SELECT pool_id, node FROM ipam.node_usage UNION SELECT pool_id, node FROM b UNION SELECT pool_id, node FROM a) k
      LEFT JOIN ipam.node_usage u ON u.pool_id = k.pool_id AND u.node = k.node LEFT JOIN b ON b.pool_id = k.pool_id AND b.node = k.node
      LEFT JOIN a ON a.pool_id = k.pool_id AND a.node = k.node JOIN ipam.pools p ON p.id = k.pool_id
    WHERE coalesce(u.blocks, 0) <> coalesce(b.blocks, 0) OR coalesce(u.live, 0) <> coalesce(a.live, 0) OR coalesce(u.reserved, 0) <> coalesce(b.reserved, 0)
    ORDER BY p.name, k.node LIMIT 20`,
  },
  {
    kind: 'free_but_live',
    query: sql`SELECT host(f.address) || ' is listed free but held by ' || a.handle AS detail FROM ipam.free_addresses f JOIN ipam.allocations a ON a.address = f.address AND a.routing_domain_id = f.routing_domain_id AND a.released_at IS NULL LIMIT 20`,
  },
  {
    kind: 'allocation_in_reservation',
    query: sql`SELECT a.handle || ' holds reserved ' || host(a.address) AS detail FROM ipam.allocations a JOIN ipam.reservations r ON r.pool_id = a.pool_id AND a.address >= r.first AND a.address <= r.last WHERE a.released_at IS NULL AND a.allocated_at > r.created_at LIMIT 20`,
  },
  {
    kind: 'release_before_allocation',
    query: sql`SELECT a.handle || ' released before it was allocated' AS detail FROM ipam.allocations a WHERE a.released_at < a.allocated_at LIMIT 20`,
  },
];

export async function checkConsistency(
  db: Database,
): Promise<{ problems: { kind: string; detail: string }[]; checks: number }> {
  const problems: { kind: string; detail: string }[] = [];
  for (const c of CHECKS)
    for (const r of await rows<{ detail: string }>(db, c.query)) problems.push({ kind: c.kind, detail: r.detail });
  return { problems, checks: CHECKS.length };
}
