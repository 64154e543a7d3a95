import { sql, type SQL } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import type { AffinityStore, AllocationStore } from '../domain/ipam-store.js';
import type { Page, PageKey } from '../domain/paging.js';
import type { AffinityChange, BlockAffinity, HistoryEntry, HistoryQuery } from '../domain/types.js';
import type { blockEvents } from './schema.js';
import {
  ALLOCATION_COLUMNS,
  ALLOCATION_JOINS,
  rows,
  toAllocation,
  type AllocationRow,
  type AllocationView,
  type BlockRow,
} from './sql.js';

/** Reading allocations (live and past) and the affinity log; nothing here writes. */
type EventRow = Pick<typeof blockEvents.$inferSelect, 'cidr' | 'pool' | 'node'> & { revision: string | number };

export function createHistoryRepository(db: Database) {
  async function listAllocations(
    filter: { pool?: string; node?: string },
    page: { after: PageKey | null; limit: number },
  ) {
    const [aFamily, aAddress] = page.after ? [Number(page.after[0]), String(page.after[1])] : [null, null];
    const r = await rows<AllocationView>(
      db,
      sql`SELECT ${ALLOCATION_COLUMNS} FROM ipam.allocations a ${ALLOCATION_JOINS}
      WHERE a.released_at IS NULL
        AND (${filter.pool ?? null}::text IS NULL OR p.name = ${filter.pool ?? null})
        AND (${filter.node ?? null}::text IS NULL OR a.node = ${filter.node ?? null})
        AND (${aFamily}::int IS NULL OR (a.family, a.address) > (${aFamily}::int, ${aAddress}::inet))
      ORDER BY a.family, a.address LIMIT ${page.limit + 1}`,
    );
    const items = r.slice(0, page.limit).map(toAllocation);
    return { items, next: r.length > page.limit ? [items.at(-1)!.family, items.at(-1)!.address] : null };
  }

  /** The node and pools of the handle's live addresses (who may release it), or null when it holds none. */
  async function holderOfHandle(handle: string): Promise<{ node: string; pools: string[] } | null> {
    const r = await rows<Pick<AllocationRow, 'node'> & { pool: string }>(
      db,
      sql`SELECT a.node, p.name AS pool FROM ipam.allocations a JOIN ipam.pools p ON p.id = a.pool_id
      WHERE a.handle = ${handle} AND a.released_at IS NULL ORDER BY a.family`,
    );
    return r.length === 0 ? null : { node: r[0]!.node, pools: [...new Set(r.map((x) => x.pool))] };
  }

  /** The node's live allocations: the live counters of its blocks (a few rows on blocks_node_idx, never allocation rows). */
  async function liveAllocationsOfNode(node: string): Promise<number> {
    const r = await rows<{ n: string }>(
      db,
      sql`SELECT coalesce(sum(live_count), 0)::bigint AS n FROM ipam.blocks WHERE node = ${node} AND released_at IS NULL`,
    );
    return Number(r[0]?.n ?? 0);
  }

  async function history(q: HistoryQuery, after: PageKey | null = null): Promise<Page<HistoryEntry>> {
    let where: SQL;
    switch (q.kind) {
      case 'address':
        where = sql`a.address = ${q.address}::inet AND a.allocated_at <= ${q.at.toISOString()}::timestamptz
          AND (a.released_at IS NULL OR a.released_at > ${q.at.toISOString()}::timestamptz)
          AND (${q.routingDomain}::text IS NULL OR a.routing_domain_id = (SELECT id FROM ipam.routing_domains WHERE name = ${q.routingDomain}))`;
        break;
      case 'pod':
        where = sql`a.pod_namespace = ${q.podNamespace} AND a.pod_name = ${q.podName}`;
        break;
      case 'node':
        where = sql`a.node = ${q.node} AND a.allocated_at < ${q.until.toISOString()}::timestamptz
          AND (a.released_at IS NULL OR a.released_at > ${(q.from ?? new Date(0)).toISOString()}::timestamptz)`;
        break;
      case 'handle':
        where = sql`a.handle = ${q.handle}`;
        break;
    }
    const [aAt, aId] = after ? [String(after[0]), Number(after[1])] : [null, null];
    type HistoryRow = AllocationView & Pick<AllocationRow, 'releasedAt'> & { atKey: string; idKey: string | number };
    const r = await rows<HistoryRow>(
      db,
      sql`SELECT ${ALLOCATION_COLUMNS}, a.released_at AS "releasedAt", a.allocated_at::text AS "atKey", a.id AS "idKey"
      FROM ipam.allocations a ${ALLOCATION_JOINS}
      WHERE ${where} AND (${aAt}::timestamptz IS NULL OR (a.allocated_at, a.id) < (${aAt}::timestamptz, ${aId}::bigint))
      ORDER BY a.allocated_at DESC, a.id DESC LIMIT ${q.limit + 1}`,
    );
    const items = r
      .slice(0, q.limit)
      .map((x) => ({ allocation: toAllocation(x), releasedAt: x.releasedAt ? new Date(x.releasedAt) : null }));
    const last = r[q.limit - 1];
    return { items, next: r.length > q.limit && last ? [last.atKey, Number(last.idKey)] : null };
  }

  const affinity: AffinityStore = {
    /** A consistent snapshot of all affinities and the revision it reflects. */
    async affinitySnapshot() {
      return db.transaction(
        async (tx) => {
          const [rev] = await rows<{ revision: string | number }>(
            tx,
            sql`SELECT coalesce(max(revision), 0) AS revision FROM ipam.block_events`,
          );
          const blocks = await rows<Pick<BlockRow, 'cidr' | 'node'> & { pool: string }>(
            tx,
            sql`SELECT b.cidr::text AS cidr, p.name AS pool, b.node FROM ipam.blocks b
            JOIN ipam.pools p ON p.id = b.pool_id WHERE b.released_at IS NULL ORDER BY b.cidr`,
          );
          return {
            revision: Number(rev!.revision),
            reset: true,
            upserts: blocks.map((b) => ({ cidr: b.cidr, pool: b.pool, node: b.node })),
            deletes: [],
          };
        },
        { isolationLevel: 'repeatable read', accessMode: 'read only' },
      );
    },
    /** Affinity changes after a revision, in revision order. */
    async affinityChangesSince(revision: number): Promise<AffinityChange[]> {
      const r = await rows<EventRow>(
        db,
        sql`SELECT revision, cidr::text AS cidr, pool, node FROM ipam.block_events
        WHERE revision > ${revision} ORDER BY revision LIMIT 10000`,
      );
      return r.map((e) => {
        const block: BlockAffinity = { cidr: e.cidr, pool: e.pool, node: e.node ?? '' };
        return {
          revision: Number(e.revision),
          reset: false,
          upserts: e.node ? [block] : [],
          deletes: e.node ? [] : [block.cidr],
        };
      });
    },
  };

  const queries: Pick<AllocationStore, 'listAllocations' | 'holderOfHandle' | 'liveAllocationsOfNode'> = {
    listAllocations,
    holderOfHandle,
    liveAllocationsOfNode,
  };
  return { ...queries, ...affinity, history };
}
