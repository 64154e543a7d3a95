import { sql } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import { cidrSize, parseAddress, type Family } from '../../../lib/net/ip.js';
import type { UtilizationKey } from '../domain/ipam-store.js';
import { ipamErrors } from '../domain/ipam.errors.js';
import type { PoolUsage, UsageCounts } from '../domain/types.js';
import type { nodeUsage } from './schema.js';
import { POOL_COLUMNS, rows, type BlockRow, type PoolView } from './sql.js';

type UtilizationPool = PoolView & { len: number; reservations: [string, string][] };
type NodeUsageView = Pick<typeof nodeUsage.$inferSelect, 'node' | 'blocks'> & {
  live: string;
  reserved: string;
  cooling: string;
};
type BlockUsageView = Pick<BlockRow, 'cidr' | 'node' | 'liveCount' | 'reserved'> & { cooling: string };

/**
 * Per node from its usage row (blocks, live, reserved: kept by triggers on blocks, see README.md), cooling from
 * the addresses released within the cool-down or held for an owner (each on its own index, so expired resting
 * addresses are never read). Nothing scans live allocations or a pool's blocks: a pool with a million live
 * allocations on 15,000 blocks reads its 500 node rows. Blocks are listed only when asked for.
 *
 * With `page`, at most `limit` node and block rows in all, after the key `after`: each pool's nodes then its blocks,
 * pools in name order, each page listing the pools its rows belong to with their totals (counted when the page is
 * read). `next` is the key to continue from, null on the last page.
 */
export async function utilization(
  db: Database,
  poolName: string | null,
  includeBlocks: boolean,
  page: { after: UtilizationKey | null; limit: number } | null = null,
): Promise<{ pools: PoolUsage[]; next: UtilizationKey | null }> {
  const after = page?.after ?? null;
  const pools = await rows<UtilizationPool>(
    db,
    sql`SELECT ${POOL_COLUMNS}, masklen(cidr) AS len,
      (SELECT coalesce(json_agg(json_build_array(host(r.first), host(r.last))), '[]') FROM ipam.reservations r WHERE r.pool_id = pools.id) AS reservations
    FROM ipam.pools WHERE (${poolName}::text IS NULL OR name = ${poolName}) AND (${after?.[0] ?? null}::text IS NULL OR name >= ${after?.[0] ?? null})
    ORDER BY name`,
  );
  if (poolName && pools.length === 0 && !after) throw ipamErrors.poolNotFound(poolName);
  const counts = (total: bigint, allocated: number, coolingDown: number, reserved: bigint): UsageCounts => ({
    total,
    allocated,
    coolingDown,
    reserved,
    free: total - BigInt(allocated + coolingDown) - reserved,
  });
  /** One pool's usage: its nodes after `nodesAfter` (false: none), its blocks after `blocksAfter`, at most `limit` rows. */
  const usageOf = async (
    p: UtilizationPool,
    nodesAfter: string | null | false,
    blocksAfter: string | null,
    limit: number | null,
  ) => {
    const family = p.family as Family;
    const blockSize = cidrSize(family, p.blockPrefixLength);
    const cutoff = sql`now() - make_interval(secs => ${p.cooldownSeconds}::int)`;
    const cap = limit === null ? sql`` : sql`LIMIT ${limit + 1}`;
    // Addresses cooling down per live block of the pool: released within the cool-down, or held for an owner.
    const cooling = sql`SELECT c.block_id, b.node, c.n FROM (
        SELECT block_id, count(*) AS n FROM (
          SELECT block_id FROM ipam.free_addresses WHERE free_since > ${cutoff}
          UNION ALL
          SELECT block_id FROM ipam.free_addresses WHERE hold_until > now() AND free_since <= ${cutoff}) f
        GROUP BY block_id) c
      JOIN ipam.blocks b ON b.id = c.block_id WHERE b.pool_id = ${p.id} AND b.released_at IS NULL`;
    const [[totals], nodeRows] = await Promise.all([
      rows<{ live: string; cooling: string }>(
        db,
        sql`WITH cooling AS (${cooling})
        SELECT (SELECT coalesce(sum(live), 0) FROM ipam.node_usage WHERE pool_id = ${p.id} AND blocks > 0) AS live,
          (SELECT coalesce(sum(n), 0) FROM cooling) AS cooling`,
      ),
      nodesAfter === false
        ? Promise.resolve([])
        : rows<NodeUsageView>(
            db,
            sql`WITH cooling AS (${cooling})
        SELECT u.node, u.blocks, u.live, u.reserved, coalesce(c.n, 0) AS cooling FROM ipam.node_usage u
          LEFT JOIN (SELECT node, sum(n) AS n FROM cooling GROUP BY node) c ON c.node = u.node
        WHERE u.pool_id = ${p.id} AND u.blocks > 0 AND (${nodesAfter}::text IS NULL OR u.node > ${nodesAfter}) ORDER BY u.node ${cap}`,
          ),
    ]);
    let left = limit === null ? null : limit - Math.min(nodeRows.length, limit);
    let next: UtilizationKey | null = null;
    if (limit !== null && nodeRows.length > limit) {
      nodeRows.length = limit;
      next = [String(p.name), 0, String(nodeRows[limit - 1]!.node)];
    }
    // A page that is full after the nodes continues with the blocks (a pool with node rows has blocks).
    if (includeBlocks && !next && left === 0) next = [String(p.name), 1, ''];
    const blockRows =
      !includeBlocks || next
        ? []
        : await rows<BlockUsageView>(
            db,
            sql`WITH cooling AS (${cooling})
          SELECT b.cidr::text AS cidr, b.node, b.live_count AS "liveCount", b.reserved, coalesce(c.n, 0) AS cooling FROM ipam.blocks b
            LEFT JOIN cooling c ON c.block_id = b.id
          WHERE b.pool_id = ${p.id} AND b.released_at IS NULL AND (${blocksAfter}::cidr IS NULL OR b.cidr > ${blocksAfter}::cidr)
          ORDER BY b.cidr ${left === null ? sql`` : sql`LIMIT ${left + 1}`}`,
          );
    if (left !== null && blockRows.length > left) {
      blockRows.length = left;
      next = [String(p.name), 1, String(blockRows[left - 1]!.cidr)];
    }
    if (left !== null) left -= blockRows.length;
    const nodes = nodeRows.map((n) => ({
      node: String(n.node),
      counts: counts(blockSize * BigInt(n.blocks), Number(n.live), Number(n.cooling), BigInt(n.reserved)),
    }));
    const blocks = blockRows.map((b) => ({
      cidr: String(b.cidr),
      node: String(b.node),
      counts: counts(blockSize, Number(b.liveCount), Number(b.cooling), BigInt(b.reserved)),
    }));
    // Reserved in the whole pool, in 128-bit arithmetic (an IPv6 reservation can pass 2^63).
    let poolReserved = 0n;
    for (const [first, last] of p.reservations)
      poolReserved += parseAddress(last).value - parseAddress(first).value + 1n;
    const usage: PoolUsage = {
      pool: String(p.name),
      cidr: String(p.cidr),
      counts: counts(cidrSize(family, Number(p.len)), Number(totals!.live), Number(totals!.cooling), poolReserved),
      blocks,
      nodes,
    };
    return { usage, next, left };
  };
  if (!includeBlocks) return usageOfPools(db, pools, after, page?.limit ?? null, counts);
  if (!page) {
    const all = await Promise.all(pools.map((p) => usageOf(p, null, null, null)));
    return { pools: all.map((u) => u.usage), next: null };
  }
  const out: PoolUsage[] = [];
  let left = page.limit;
  for (const p of pools) {
    if (left === 0) return { pools: out, next: [String(p.name), 0, ''] };
    const here = after && after[0] === String(p.name) ? after : null;
    const nodesAfter = here ? (here[1] === 0 ? here[2] || null : false) : null;
    const blocksAfter = here && here[1] === 1 ? here[2] || null : null;
    const u = await usageOf(p, nodesAfter, blocksAfter, left);
    out.push(u.usage);
    if (u.next) return { pools: out, next: u.next };
    left = u.left!;
  }
  return { pools: out, next: null };
}

/**
 * Pools without their blocks (every pool, the common question, or one): one statement whatever the number of pools.
 * Per pool (in name order) it reads its usage rows in node order on the usage key's index, after `after`, at most a
 * page and one: its totals (live summed over its usage rows, cooling) and its node rows as one text ("node blocks live
 * reserved", comma-separated; node names are DNS names, so neither separator occurs in them), with the counts of its
 * cooling nodes beside it. At 5,000 nodes the shape is the cost: the driver parses 5,000 rows of six fields value by
 * value in about 10 ms of CPU (JSON costs PostgreSQL 4 ms more to build), where 20 texts cost under 1 ms to split, and
 * rows read in index order need no sort (sorting 5,000 names took PostgreSQL 5 ms).
 * Cooling is counted per pool with its own cool-down: the addresses released within the longest cool-down or held
 * for an owner are read once (each on its index) and kept where their block's pool still counts them.
 */
async function usageOfPools(
  db: Database,
  pools: UtilizationPool[],
  after: UtilizationKey | null,
  limit: number | null,
  counts: (total: bigint, allocated: number, coolingDown: number, reserved: bigint) => UsageCounts,
): Promise<{ pools: PoolUsage[]; next: UtilizationKey | null }> {
  if (pools.length === 0) return { pools: [], next: null };
  const ids = pools.map((p) => Number(p.id));
  const longest = Math.max(...pools.map((p) => Number(p.cooldownSeconds)));
  const intArray = (xs: number[]) => sql.raw(`ARRAY[${xs.map((x) => Math.trunc(Number(x))).join(',')}]::int[]`);
  // The pool the page starts in (`pools` starts there) continues after its last listed node; the others from the start.
  const firstId = after && String(pools[0]!.name) === after[0] ? ids[0]! : null;
  const afterNode = after?.[2] ?? '';
  const totals = await rows<{
    id: number;
    live: string;
    cooling: string;
    coolingNodes: string | null;
    nodes: string | null;
  }>(
    db,
    sql`WITH ps AS (SELECT * FROM unnest(${intArray(ids)}, ${intArray(pools.map((p) => Number(p.cooldownSeconds)))}) AS x(id, cooldown)),
    cooling AS MATERIALIZED (
      SELECT b.pool_id, b.node, count(*) AS n FROM (
        SELECT block_id, free_since, hold_until FROM ipam.free_addresses WHERE free_since > now() - make_interval(secs => ${longest}::int)
        UNION ALL
        SELECT block_id, free_since, hold_until FROM ipam.free_addresses
          WHERE hold_until > now() AND free_since <= now() - make_interval(secs => ${longest}::int)) f
      JOIN ipam.blocks b ON b.id = f.block_id AND b.released_at IS NULL JOIN ps ON ps.id = b.pool_id
      WHERE f.free_since > now() - make_interval(secs => ps.cooldown) OR f.hold_until > now()
      GROUP BY b.pool_id, b.node)
    SELECT ps.id,
      (SELECT coalesce(sum(u.live), 0) FROM ipam.node_usage u WHERE u.pool_id = ps.id AND u.blocks > 0) AS live,
      (SELECT coalesce(sum(c.n), 0) FROM cooling c WHERE c.pool_id = ps.id) AS cooling,
      (SELECT string_agg(c.node || ' ' || c.n, ',') FROM cooling c WHERE c.pool_id = ps.id) AS "coolingNodes",
      (SELECT string_agg(concat_ws(' ', u.node, u.blocks, u.live, u.reserved), ',' ORDER BY u.node) FROM (
        SELECT u.node, u.blocks, u.live, u.reserved FROM ipam.node_usage u
        WHERE u.pool_id = ps.id AND u.blocks > 0 AND u.node > CASE WHEN ps.id = ${firstId}::int THEN ${afterNode}::text ELSE '' END
        ORDER BY u.node ${limit === null ? sql`` : sql`LIMIT ${limit + 1}`}) u) AS nodes
    FROM ps`,
  );
  const totalOf = new Map(totals.map((t) => [Number(t.id), t]));
  let left = limit === null ? Infinity : limit;
  let next: UtilizationKey | null = null;
  /** Per pool listed on the page: its node rows [node, blocks, live, reserved]. */
  const listed: [UtilizationPool, string[][]][] = [];
  for (const p of pools) {
    const nodes = (totalOf.get(Number(p.id))?.nodes?.split(',') ?? []).map((n) => n.split(' '));
    if (left === 0 && nodes.length > 0) {
      // The page is full and this pool has more: continue after the page's last row.
      const [lastPool, lastNodes] = listed.filter(([, n]) => n.length > 0).at(-1)!;
      next = [String(lastPool.name), 0, lastNodes.at(-1)![0]!];
      break;
    }
    const here = nodes.slice(0, left);
    listed.push([p, here]);
    left -= here.length;
    if (here.length < nodes.length) {
      next = [String(p.name), 0, here.at(-1)![0]!];
      break;
    }
  }
  // A full page lists the pools up to its last row's; the last page every pool left.
  if (next) while (listed.length > 0 && String(listed.at(-1)![0].name) !== next[0]) listed.pop();
  const out = listed.map(([p, nodes]): PoolUsage => {
    const blockSize = cidrSize(p.family as Family, p.blockPrefixLength);
    let poolReserved = 0n;
    for (const [first, last] of p.reservations)
      poolReserved += parseAddress(last).value - parseAddress(first).value + 1n;
    const t = totalOf.get(Number(p.id));
    const coolingOf = new Map(
      (t?.coolingNodes?.split(',') ?? []).map((c) => {
        const [node, n] = c.split(' ');
        return [node!, Number(n)];
      }),
    );
    return {
      pool: String(p.name),
      cidr: String(p.cidr),
      counts: counts(
        cidrSize(p.family as Family, Number(p.len)),
        Number(t?.live ?? 0),
        Number(t?.cooling ?? 0),
        poolReserved,
      ),
      blocks: [],
      nodes: nodes.map(([node, blocks, live, reserved]) => ({
        node: node!,
        counts: counts(blockSize * BigInt(blocks!), Number(live), coolingOf.get(node!) ?? 0, BigInt(reserved!)),
      })),
    };
  });
  return { pools: out, next };
}
