import { sql, type SQL } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import { cidrSize, formatCidr, type Family } from '../../../lib/net/ip.js';
import { ipamErrors } from '../domain/ipam.errors.js';
import type { AllocationRequest, PoolSpec } from '../domain/pool.js';
import type { AffinityChange, Allocation, BlockAffinity, HistoryEntry, HistoryQuery, Pool, PoolUsage, UsageCounts } from '../domain/types.js';
import { PG, pgErrorOf } from './pg-errors.js';

/**
 * The only queries on IPAM's tables. Every allocation is one transaction and never scans a range: a block hands out
 * its never-used addresses in order (next_offset), then the longest-free released address past its pool's
 * cool-down; a new block is found by a gap search over the pool's existing blocks. See services/ipam/DESIGN.md.
 */
export const BLOCKS_CHANNEL = 'ipam_blocks';

type Row = Record<string, unknown>;
type Tx = Pick<Database, 'execute'>;

const ALLOCATION_COLUMNS = sql`a.handle, host(a.address) AS address, a.family, p.name AS pool, b.cidr::text AS block_cidr, a.node,
  a.pod_namespace, a.pod_name, a.container_id, a.allocated_at`;
const ALLOCATION_JOINS = sql`JOIN ipam.pools p ON p.id = a.pool_id JOIN ipam.blocks b ON b.id = a.block_id`;

function toAllocation(r: Row): Allocation {
  return {
    handle: String(r.handle),
    address: String(r.address),
    family: Number(r.family) as Family,
    pool: String(r.pool),
    blockCidr: String(r.block_cidr),
    node: String(r.node),
    podNamespace: String(r.pod_namespace),
    podName: String(r.pod_name),
    containerId: String(r.container_id),
    allocatedAt: new Date(r.allocated_at as string),
  };
}

function toPool(r: Row): Pool {
  return {
    name: String(r.name), cidr: String(r.cidr), family: Number(r.family) as Family, blockPrefixLength: Number(r.block_prefix_length),
    cooldownSeconds: Number(r.cooldown_seconds), createdAt: new Date(r.created_at as string),
  };
}

async function rows(db: Tx, query: SQL): Promise<Row[]> {
  return (await db.execute(query)).rows as Row[];
}

const POOL_COLUMNS = sql`id, name, cidr::text AS cidr, family, block_prefix_length, cooldown_seconds, created_at`;

export function createIpamRepository(db: Database) {
  async function createPool(spec: PoolSpec): Promise<Pool> {
    const cidr = formatCidr(spec.cidr);
    try {
      const [row] = await rows(db, sql`INSERT INTO ipam.pools (name, cidr, family, block_prefix_length, cooldown_seconds)
        VALUES (${spec.name}, ${cidr}::cidr, ${spec.cidr.family}, ${spec.blockPrefixLength}, ${spec.cooldownSeconds}) RETURNING ${POOL_COLUMNS}`);
      return toPool(row!);
    } catch (err) {
      const pg = pgErrorOf(err);
      if (pg?.code === PG.exclusionViolation) {
        const [other] = await rows(db, sql`SELECT name, cidr::text AS cidr FROM ipam.pools WHERE cidr && ${cidr}::cidr LIMIT 1`);
        throw ipamErrors.poolOverlaps(cidr, other ? `${other.name} (${other.cidr})` : 'another pool');
      }
      if (pg?.code === PG.uniqueViolation) throw ipamErrors.poolExists(spec.name);
      throw err;
    }
  }

  async function listPools(): Promise<Pool[]> {
    return (await rows(db, sql`SELECT ${POOL_COLUMNS} FROM ipam.pools ORDER BY name`)).map(toPool);
  }

  async function listAllocations(filter: { pool?: string; node?: string }): Promise<Allocation[]> {
    const r = await rows(db, sql`SELECT ${ALLOCATION_COLUMNS} FROM ipam.allocations a ${ALLOCATION_JOINS}
      WHERE a.released_at IS NULL
        AND (${filter.pool ?? null}::text IS NULL OR p.name = ${filter.pool ?? null})
        AND (${filter.node ?? null}::text IS NULL OR a.node = ${filter.node ?? null})
      ORDER BY a.family, a.address`);
    return r.map(toAllocation);
  }

  /** One attempt; the caller retries on unique violations (a concurrent allocation of the same handle or address). */
  async function allocateOnce(req: AllocationRequest): Promise<Allocation[]> {
    return db.transaction(async (tx) => {
      const live = (await rows(tx, sql`SELECT ${ALLOCATION_COLUMNS} FROM ipam.allocations a ${ALLOCATION_JOINS}
        WHERE a.handle = ${req.handle} AND a.released_at IS NULL ORDER BY a.family`)).map(toAllocation);

      let pools: Row[];
      if (req.pool) {
        pools = await rows(tx, sql`SELECT ${POOL_COLUMNS} FROM ipam.pools WHERE name = ${req.pool}`);
        if (pools.length === 0) throw ipamErrors.poolNotFound(req.pool);
      } else {
        pools = await rows(tx, sql`SELECT ${POOL_COLUMNS} FROM ipam.pools ORDER BY name`);
        if (pools.length === 0) throw ipamErrors.noPools();
      }
      const available = [...new Set(pools.map((p) => Number(p.family) as Family))].sort();
      const wanted = req.pool ? available : req.families ?? available;
      const out: Allocation[] = [];
      for (const family of wanted) {
        const held = live.find((a) => a.family === family);
        if (held) {
          out.push(held);
          continue;
        }
        const candidates = pools.filter((p) => Number(p.family) === family);
        if (candidates.length === 0) throw ipamErrors.noPoolForFamily(family);
        let got: Allocation | null = null;
        for (const pool of candidates) if ((got = await allocateInPool(tx, pool, req))) break;
        // Throwing rolls back the whole transaction: a dual-stack pod gets both addresses or neither.
        if (!got) throw ipamErrors.exhausted(req.pool ? `pool ${req.pool}` : `any IPv${family} pool`);
        out.push(got);
      }
      return out;
    });
  }

  async function allocateInPool(tx: Tx, pool: Row, req: AllocationRequest): Promise<Allocation | null> {
    for (let pass = 0; pass < 2; pass++) {
      const got = await allocateFromNodeBlocks(tx, pool, req);
      if (got) return got;
      // Block claims are serialized: this keeps block_events revisions in commit order (see DESIGN.md). After
      // taking the lock, look again: a concurrent claim by the same node may have made room.
      await tx.execute(sql`SELECT pg_advisory_xact_lock(hashtext('ipam.block_claims'))`);
      if (pass === 1 || !(await claimBlock(tx, pool, req.node))) return pass === 1 ? null : allocateFromNodeBlocks(tx, pool, req);
    }
    return null;
  }

  async function insertAllocation(tx: Tx, pool: Row, blockId: unknown, address: string, req: AllocationRequest): Promise<Allocation> {
    const [row] = await rows(tx, sql`WITH a AS (
        INSERT INTO ipam.allocations (handle, address, family, pool_id, block_id, node, pod_namespace, pod_name, container_id)
        VALUES (${req.handle}, ${address}::inet, ${pool.family}, ${pool.id}, ${blockId}, ${req.node}, ${req.podNamespace}, ${req.podName}, ${req.containerId})
        RETURNING *)
      SELECT ${ALLOCATION_COLUMNS} FROM a ${ALLOCATION_JOINS}`);
    return toAllocation(row!);
  }

  async function allocateFromNodeBlocks(tx: Tx, pool: Row, req: AllocationRequest): Promise<Allocation | null> {
    // Lock this node's blocks in the pool: allocations on one node serialize, nodes proceed in parallel.
    const blocks = await rows(tx, sql`SELECT id, cidr::text AS cidr, next_offset, masklen(cidr) AS len FROM ipam.blocks
      WHERE node = ${req.node} AND pool_id = ${pool.id} ORDER BY id FOR UPDATE`);
    for (const b of blocks) {
      const size = cidrSize(Number(pool.family) as Family, Number(b.len));
      if (BigInt(b.next_offset as string | number) >= size) continue;
      const [next] = await rows(tx, sql`UPDATE ipam.blocks SET next_offset = next_offset + 1 WHERE id = ${b.id}
        RETURNING host(host(network(cidr))::inet + (next_offset - 1)) AS address`);
      return insertAllocation(tx, pool, b.id, String(next!.address), req);
    }
    if (blocks.length === 0) return null;
    // Every block has handed out each address once: reuse the longest-free address past the cool-down.
    const [reused] = await rows(tx, sql`DELETE FROM ipam.free_addresses WHERE address = (
        SELECT f.address FROM ipam.free_addresses f
        WHERE f.block_id = ANY(${sql.raw(`ARRAY[${blocks.map((b) => Number(b.id)).join(',')}]::int[]`)})
          AND f.free_since <= now() - make_interval(secs => ${pool.cooldown_seconds})
        ORDER BY f.free_since LIMIT 1)
      RETURNING host(address) AS address, block_id`);
    return reused ? insertAllocation(tx, pool, reused.block_id, String(reused.address), req) : null;
  }

  /** Claims the pool's lowest free block for the node by a gap search over existing blocks. Caller holds the claim lock. */
  async function claimBlock(tx: Tx, pool: Row, node: string): Promise<boolean> {
    const blockLen = Number(pool.block_prefix_length);
    const [free] = await rows(tx, sql`SELECT c::text AS cidr FROM (
        SELECT set_masklen(host(network(${pool.cidr}::cidr))::inet, ${blockLen})::cidr AS c
        UNION ALL
        SELECT set_masklen(host(broadcast(b.cidr))::inet + 1, ${blockLen})::cidr FROM ipam.blocks b
        WHERE b.pool_id = ${pool.id} AND host(broadcast(b.cidr)) <> host(broadcast(${pool.cidr}::cidr))
      ) cands
      WHERE c <<= ${pool.cidr}::cidr AND NOT EXISTS (SELECT 1 FROM ipam.blocks x WHERE x.cidr = cands.c)
      ORDER BY c LIMIT 1`);
    if (!free) return false;
    await tx.execute(sql`INSERT INTO ipam.blocks (pool_id, cidr, node) VALUES (${pool.id}, ${free.cidr}::cidr, ${node})`);
    await tx.execute(sql`INSERT INTO ipam.block_events (revision, cidr, pool, node)
      VALUES (nextval('ipam.revision_seq'), ${free.cidr}::cidr, ${pool.name}, ${node})`);
    await tx.execute(sql`SELECT pg_notify(${BLOCKS_CHANNEL}, '')`);
    return true;
  }

  async function withRetry<T>(fn: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        const code = pgErrorOf(err)?.code;
        const retryable = code === PG.uniqueViolation || code === PG.serializationFailure || code === PG.deadlockDetected;
        if (!retryable || attempt >= 10) throw err;
      }
    }
  }

  const allocate = (req: AllocationRequest) => withRetry(() => allocateOnce(req));

  /** Releases the live allocations matched by `where`; each released address starts its cool-down. */
  async function releaseWhere(where: SQL): Promise<Allocation[]> {
    const r = await rows(db, sql`WITH rel AS (
        UPDATE ipam.allocations a SET released_at = now() WHERE a.released_at IS NULL AND ${where} RETURNING a.*),
      freed AS (
        INSERT INTO ipam.free_addresses (address, block_id) SELECT address, block_id FROM rel
        ON CONFLICT (address) DO UPDATE SET free_since = now(), block_id = excluded.block_id)
      SELECT ${ALLOCATION_COLUMNS} FROM rel a ${ALLOCATION_JOINS} ORDER BY a.family`);
    return r.map(toAllocation);
  }

  async function release(handle: string): Promise<Allocation[]> {
    return releaseWhere(sql`a.handle = ${handle}`);
  }

  /** Releases the node's live allocations whose handles are not valid. One statement: a valid handle is never touched. */
  async function garbageCollect(node: string, validHandles: string[]): Promise<Allocation[]> {
    return releaseWhere(sql`a.node = ${node} AND a.handle NOT IN (SELECT jsonb_array_elements_text(${JSON.stringify(validHandles)}::jsonb))`);
  }

  async function history(q: HistoryQuery): Promise<HistoryEntry[]> {
    let where: SQL;
    switch (q.kind) {
      case 'address':
        where = sql`a.address = ${q.address}::inet AND a.allocated_at <= ${q.at.toISOString()}::timestamptz
          AND (a.released_at IS NULL OR a.released_at > ${q.at.toISOString()}::timestamptz)`;
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
    const r = await rows(db, sql`SELECT ${ALLOCATION_COLUMNS}, a.released_at FROM ipam.allocations a ${ALLOCATION_JOINS}
      WHERE ${where} ORDER BY a.allocated_at DESC, a.id DESC LIMIT ${q.limit}`);
    return r.map((x) => ({ allocation: toAllocation(x), releasedAt: x.released_at ? new Date(x.released_at as string) : null }));
  }

  async function utilization(poolName: string | null): Promise<PoolUsage[]> {
    const pools = await rows(db, sql`SELECT ${POOL_COLUMNS}, masklen(cidr) AS len FROM ipam.pools
      WHERE ${poolName}::text IS NULL OR name = ${poolName} ORDER BY name`);
    if (poolName && pools.length === 0) throw ipamErrors.poolNotFound(poolName);
    const out: PoolUsage[] = [];
    for (const p of pools) {
      const family = Number(p.family) as Family;
      const blocks = await rows(db, sql`SELECT b.cidr::text AS cidr, b.node, masklen(b.cidr) AS len,
          (SELECT count(*) FROM ipam.allocations a WHERE a.block_id = b.id AND a.released_at IS NULL) AS allocated,
          (SELECT count(*) FROM ipam.free_addresses f WHERE f.block_id = b.id
             AND f.free_since > now() - make_interval(secs => ${p.cooldown_seconds})) AS cooling
        FROM ipam.blocks b WHERE b.pool_id = ${p.id} ORDER BY b.cidr`);
      const counts = (total: bigint, allocated: number, coolingDown: number): UsageCounts => ({ total, allocated, coolingDown, free: total - BigInt(allocated + coolingDown) });
      const blockUsage = blocks.map((b) => ({ cidr: String(b.cidr), node: String(b.node), counts: counts(cidrSize(family, Number(b.len)), Number(b.allocated), Number(b.cooling)) }));
      const byNode = new Map<string, UsageCounts>();
      for (const b of blockUsage) {
        const n = byNode.get(b.node);
        byNode.set(b.node, n ? counts(n.total + b.counts.total, n.allocated + b.counts.allocated, n.coolingDown + b.counts.coolingDown) : b.counts);
      }
      const allocated = blockUsage.reduce((s, b) => s + b.counts.allocated, 0);
      const cooling = blockUsage.reduce((s, b) => s + b.counts.coolingDown, 0);
      out.push({
        pool: String(p.name), cidr: String(p.cidr),
        counts: counts(cidrSize(family, Number(p.len)), allocated, cooling),
        blocks: blockUsage,
        nodes: [...byNode].sort(([a], [b]) => a.localeCompare(b)).map(([node, c]) => ({ node, counts: c })),
      });
    }
    return out;
  }

  /** A consistent snapshot of all affinities and the revision it reflects. */
  async function affinitySnapshot(): Promise<AffinityChange> {
    return db.transaction(
      async (tx) => {
        const [rev] = await rows(tx, sql`SELECT coalesce(max(revision), 0) AS revision FROM ipam.block_events`);
        const blocks = await rows(tx, sql`SELECT b.cidr::text AS cidr, p.name AS pool, b.node FROM ipam.blocks b
          JOIN ipam.pools p ON p.id = b.pool_id ORDER BY b.cidr`);
        return {
          revision: Number(rev!.revision),
          reset: true,
          upserts: blocks.map((b) => ({ cidr: String(b.cidr), pool: String(b.pool), node: String(b.node) })),
          deletes: [],
        };
      },
      { isolationLevel: 'repeatable read', accessMode: 'read only' },
    );
  }

  /** Affinity changes after a revision, in revision order. */
  async function affinityChangesSince(revision: number): Promise<AffinityChange[]> {
    const r = await rows(db, sql`SELECT revision, cidr::text AS cidr, pool, node FROM ipam.block_events
      WHERE revision > ${revision} ORDER BY revision LIMIT 10000`);
    return r.map((e) => {
      const block: BlockAffinity = { cidr: String(e.cidr), pool: String(e.pool), node: String(e.node ?? '') };
      return { revision: Number(e.revision), reset: false, upserts: e.node ? [block] : [], deletes: e.node ? [] : [block.cidr] };
    });
  }

  return { createPool, listPools, listAllocations, allocate, release, garbageCollect, history, utilization, affinitySnapshot, affinityChangesSince };
}

export type IpamRepository = ReturnType<typeof createIpamRepository>;
