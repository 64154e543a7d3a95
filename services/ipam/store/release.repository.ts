import { sql, type SQL } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import type { AllocationStore } from '../domain/ipam-store.js';
import type { Allocation } from '../domain/types.js';
import { ALLOCATION_COLUMNS, ALLOCATION_JOINS, rows, toAllocation, type AllocationView } from './sql.js';

/**
 * Releases. They name handles (or a node's handles), never addresses, so a late release cannot free an address since
 * given to another handle. Each is one statement: the caller retries one that lost a race (a deadlock on block
 * counters with a concurrent release rolls it back whole).
 */
export function createReleaseRepository(
  db: Database,
): Pick<AllocationStore, 'fenceAttempt' | 'releaseHandle' | 'releaseInvalidHandles' | 'releaseNodeAllocationsBefore'> {
  /** Releases the live allocations matched by `where`; each released address starts its cool-down. */
  async function releaseWhere(where: SQL): Promise<Allocation[]> {
    const r = await rows<AllocationView>(
      db,
      sql`WITH rel AS (
        UPDATE ipam.allocations a SET released_at = now() WHERE a.released_at IS NULL AND ${where} RETURNING a.*),
      freed AS (
        INSERT INTO ipam.free_addresses (address, routing_domain_id, block_id, owner, hold_until)
        SELECT rel.address, rel.routing_domain_id, rel.block_id, rel.owner,
               CASE WHEN rel.owner <> '' THEN now() + make_interval(secs => pp.sticky_seconds) END
        FROM rel JOIN ipam.pools pp ON pp.id = rel.pool_id
        ON CONFLICT (routing_domain_id, address) DO UPDATE SET free_since = now(), block_id = excluded.block_id, owner = excluded.owner, hold_until = excluded.hold_until),
      counted AS (
        UPDATE ipam.blocks b SET live_count = b.live_count - x.n FROM (SELECT block_id, count(*) AS n FROM rel GROUP BY block_id) x
        WHERE b.id = x.block_id)
      SELECT ${ALLOCATION_COLUMNS} FROM rel a ${ALLOCATION_JOINS} ORDER BY a.family`,
    );
    return r.map(toAllocation);
  }

  return {
    /**
     * The fence commits in a statement of its own: it waits for an Allocate of the attempt that is running to commit,
     * so the release after it (a new statement, so a new snapshot) frees what that Allocate made; an Allocate of the
     * attempt that has not started yet allocates nothing. No Release holds an attempt's row while it waits for a block.
     */
    async fenceAttempt(handle, attemptId) {
      await db.execute(sql`INSERT INTO ipam.allocation_attempts (handle, attempt_id, fenced_at) VALUES (${handle}, ${attemptId}, now())
        ON CONFLICT (handle, attempt_id) DO UPDATE SET fenced_at = coalesce(ipam.allocation_attempts.fenced_at, now())`);
    },
    releaseHandle(handle, only = {}) {
      const node = only.node !== undefined ? sql` AND a.node = ${only.node}` : sql``;
      const pools =
        only.pools !== undefined
          ? sql` AND a.pool_id IN (SELECT id FROM ipam.pools WHERE name IN (SELECT jsonb_array_elements_text(${JSON.stringify(only.pools)}::jsonb)))`
          : sql``;
      return releaseWhere(sql`a.handle = ${handle}${node}${pools}`);
    },
    releaseInvalidHandles(node, validHandles, allocatedBefore) {
      const before = allocatedBefore ? sql` AND a.allocated_at < ${allocatedBefore.toISOString()}::timestamptz` : sql``;
      return releaseWhere(
        sql`a.node = ${node} AND a.handle NOT IN (SELECT jsonb_array_elements_text(${JSON.stringify(validHandles)}::jsonb))${before}`,
      );
    },
    releaseNodeAllocationsBefore: (node, before) =>
      releaseWhere(sql`a.node = ${node} AND a.allocated_at < ${before.toISOString()}::timestamptz`),
  };
}
