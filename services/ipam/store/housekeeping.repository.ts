import { sql, type SQL } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import type { HousekeepingStore } from '../domain/ipam-store.js';
import type { BlockAffinity } from '../domain/types.js';
import { BLOCKS_CHANNEL, CLAIM_LOCK, rows, type BlockRow, type Tx } from './sql.js';

/** What the sweeper and GarbageCollect.release_blocks do: blocks back to their pools, old attempts forgotten. */
type ReleasedBlock = Pick<BlockRow, 'id' | 'cidr' | 'node'> & { pool: string };

/**
 * Releases the live, empty blocks matched by `where` (alias b). The caller holds the claim lock. The row stays for
 * history; its resting addresses whose rest is over go, the withdrawal is logged like a claim (node null), so routes
 * follow, and the pool's claim hint moves down to it.
 */
async function releaseBlocks(tx: Tx, where: SQL): Promise<BlockAffinity[]> {
  // Row locks: a concurrent allocation that committed into the block makes it fail live_count = 0 on the re-check.
  const released = await rows<ReleasedBlock>(
    tx,
    sql`UPDATE ipam.blocks b SET released_at = now()
    WHERE b.released_at IS NULL AND b.live_count = 0
      AND NOT EXISTS (SELECT 1 FROM ipam.allocations a WHERE a.address BETWEEN host(network(b.cidr))::inet AND host(broadcast(b.cidr))::inet
                        AND a.routing_domain_id = b.routing_domain_id AND a.released_at IS NULL)
      AND ${where}
    RETURNING b.id, b.cidr::text AS cidr, b.node, (SELECT name FROM ipam.pools WHERE id = b.pool_id) AS pool`,
  );
  if (released.length === 0) return [];
  const ids = sql`(SELECT jsonb_array_elements_text(${JSON.stringify(released.map((b) => b.id))}::jsonb)::int)`;
  // A released block is free again: the next claim in its pool looks from there.
  await tx.execute(sql`UPDATE ipam.pools p SET claim_hint = least(p.claim_hint, r.low)
    FROM (SELECT b.pool_id, min(b.cidr) AS low FROM ipam.blocks b WHERE b.id IN ${ids} GROUP BY b.pool_id) r
    WHERE p.id = r.pool_id AND p.claim_hint IS NOT NULL`);
  await tx.execute(sql`DELETE FROM ipam.free_addresses f USING ipam.blocks b, ipam.pools p
    WHERE f.block_id IN ${ids} AND b.id = f.block_id AND p.id = b.pool_id
      AND f.free_since <= now() - make_interval(secs => p.cooldown_seconds) AND (f.hold_until IS NULL OR f.hold_until <= now())`);
  for (const b of released) {
    await tx.execute(
      sql`INSERT INTO ipam.block_events (revision, cidr, pool, node) VALUES (nextval('ipam.revision_seq'), ${b.cidr}::cidr, ${b.pool}, NULL)`,
    );
  }
  await tx.execute(sql`SELECT pg_notify(${BLOCKS_CHANNEL}, '')`);
  return released.map((b) => ({ cidr: b.cidr, pool: b.pool, node: b.node }));
}

export function createHousekeepingRepository(db: Database): HousekeepingStore {
  return {
    /**
     * Returns empty blocks to their pools: no live allocation, claimed longer ago than the grace period, and no
     * address freed within it or the pool's cool-down (so nothing is still cooling down or held for an owner).
     */
    releaseEmptyBlocks(graceSeconds) {
      return db.transaction(async (tx) => {
        await tx.execute(CLAIM_LOCK);
        return releaseBlocks(
          tx,
          sql`b.claimed_at < now() - make_interval(secs => ${graceSeconds})
            AND NOT EXISTS (SELECT 1 FROM ipam.free_addresses f WHERE f.block_id = b.id
                              AND (f.free_since > now() - make_interval(secs => greatest(${graceSeconds}, (SELECT cooldown_seconds FROM ipam.pools WHERE id = b.pool_id)))
                                   OR f.hold_until > now()))`,
        );
      });
    },
    /**
     * The node's blocks that hold no live allocation go back at once (GarbageCollect.release_blocks: the node is
     * gone). Addresses still resting keep their rows: the next claim of the block adopts them.
     */
    releaseNodeBlocks(node) {
      return db.transaction(async (tx) => {
        await tx.execute(CLAIM_LOCK);
        return releaseBlocks(tx, sql`b.node = ${node}`);
      });
    },
    /** Drops attempt rows: fenced ones after `retentionSeconds`, others after ten minutes (they matter only while their Allocate runs). */
    async pruneAttempts(retentionSeconds) {
      const r = await db.execute(sql`DELETE FROM ipam.allocation_attempts
        WHERE (fenced_at IS NULL AND created_at < now() - interval '10 minutes') OR fenced_at < now() - make_interval(secs => ${retentionSeconds}::int)`);
      return r.rowCount ?? 0;
    },
    /** Nodes that hold blocks (and so any live allocation). */
    async nodesHoldingAddresses() {
      return (
        await rows<Pick<BlockRow, 'node'>>(
          db,
          sql`SELECT DISTINCT node FROM ipam.blocks WHERE released_at IS NULL ORDER BY node`,
        )
      ).map((r) => r.node);
    },
  };
}
