import { sql } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import { ipamErrors } from '../domain/ipam.errors.js';
import type { AllocationRequest, PoolSpec } from '../domain/pool.js';
import type { AffinityChange, Allocation, BlockAffinity, Pool } from '../domain/types.js';
import { formatCidr4, sizeOf } from '../../../lib/net/ip.js';
import { PG, pgErrorOf } from './pg-errors.js';

/** The only queries on IPAM's tables. Every allocation runs in one transaction; see services/ipam/DESIGN.md. */
export const BLOCKS_CHANNEL = 'ipam_blocks';

type Row = Record<string, unknown>;

const ALLOCATION_COLUMNS = sql`a.handle, host(a.address) AS address, p.name AS pool, b.cidr::text AS block_cidr, a.node,
  a.pod_namespace, a.pod_name, a.container_id, a.allocated_at`;

function toAllocation(r: Row): Allocation {
  return {
    handle: String(r.handle),
    address: String(r.address),
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
  return { name: String(r.name), cidr: String(r.cidr), blockPrefixLength: Number(r.block_prefix_length), createdAt: new Date(r.created_at as string) };
}

async function rows(db: Pick<Database, 'execute'>, query: ReturnType<typeof sql>): Promise<Row[]> {
  const res = await db.execute(query);
  return res.rows as Row[];
}

export function createIpamRepository(db: Database) {
  async function createPool(spec: PoolSpec): Promise<Pool> {
    const cidr = formatCidr4(spec.cidr);
    try {
      const [row] = await rows(db, sql`INSERT INTO ipam.pools (name, cidr, block_prefix_length)
        VALUES (${spec.name}, ${cidr}::cidr, ${spec.blockPrefixLength}) RETURNING name, cidr::text, block_prefix_length, created_at`);
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
    return (await rows(db, sql`SELECT name, cidr::text AS cidr, block_prefix_length, created_at FROM ipam.pools ORDER BY name`)).map(toPool);
  }

  async function listAllocations(filter: { pool?: string; node?: string }): Promise<Allocation[]> {
    const r = await rows(db, sql`SELECT ${ALLOCATION_COLUMNS}
      FROM ipam.allocations a JOIN ipam.pools p ON p.id = a.pool_id JOIN ipam.blocks b ON b.id = a.block_id
      WHERE a.released_at IS NULL
        AND (${filter.pool ?? null}::text IS NULL OR p.name = ${filter.pool ?? null})
        AND (${filter.node ?? null}::text IS NULL OR a.node = ${filter.node ?? null})
      ORDER BY a.address`);
    return r.map(toAllocation);
  }

  /** One attempt; the caller retries on unique violations (a concurrent allocation of the same handle or address). */
  async function allocateOnce(req: AllocationRequest): Promise<Allocation> {
    return db.transaction(async (tx) => {
      const existing = await rows(tx, sql`SELECT ${ALLOCATION_COLUMNS}
        FROM ipam.allocations a JOIN ipam.pools p ON p.id = a.pool_id JOIN ipam.blocks b ON b.id = a.block_id
        WHERE a.handle = ${req.handle} AND a.released_at IS NULL`);
      if (existing[0]) return toAllocation(existing[0]);

      const candidates = await rows(tx, sql`SELECT id, name, cidr::text AS cidr, block_prefix_length FROM ipam.pools
        WHERE ${req.pool}::text IS NULL OR name = ${req.pool} ORDER BY name`);
      if (candidates.length === 0) throw req.pool ? ipamErrors.poolNotFound(req.pool) : ipamErrors.noPools();

      for (const pool of candidates) {
        // Twice: after taking the claim lock, a concurrent claim by the same node may already have made room.
        for (let pass = 0; pass < 2; pass++) {
          const got = await allocateFromNodeBlocks(tx, Number(pool.id), req);
          if (got) return got;
          if (pass === 0) {
            // Block claims are serialized: this keeps block_events revisions in commit order (see DESIGN.md).
            await tx.execute(sql`SELECT pg_advisory_xact_lock(hashtext('ipam.block_claims'))`);
            continue;
          }
          const claimed = await claimBlock(tx, pool, req.node);
          if (claimed) {
            const got2 = await allocateFromNodeBlocks(tx, Number(pool.id), req);
            if (got2) return got2;
          }
        }
      }
      throw ipamErrors.exhausted(req.pool ? `pool ${req.pool}` : 'any pool');
    });
  }

  async function allocateFromNodeBlocks(tx: Pick<Database, 'execute'>, poolId: number, req: AllocationRequest): Promise<Allocation | null> {
    // Lock this node's blocks in the pool: allocations on one node are serialized, nodes proceed in parallel.
    const blockRows = await rows(tx, sql`SELECT id, cidr::text AS cidr, masklen(cidr) AS len FROM ipam.blocks
      WHERE node = ${req.node} AND pool_id = ${poolId} ORDER BY id FOR UPDATE`);
    for (const b of blockRows) {
      const size = sizeOf(Number(b.len));
      // Addresses are stored as host addresses (/32), so the candidate must be one too.
      const free = await rows(tx, sql`SELECT host(host(network(${b.cidr}::cidr))::inet + g) AS address
        FROM generate_series(0, ${size - 1}::bigint) AS g
        WHERE NOT EXISTS (SELECT 1 FROM ipam.allocations a WHERE a.block_id = ${b.id} AND a.released_at IS NULL
                            AND a.address = host(network(${b.cidr}::cidr))::inet + g)
        ORDER BY g LIMIT 1`);
      if (!free[0]) continue;
      const [row] = await rows(tx, sql`WITH ins AS (
          INSERT INTO ipam.allocations (handle, address, pool_id, block_id, node, pod_namespace, pod_name, container_id)
          VALUES (${req.handle}, ${free[0].address}::inet, ${poolId}, ${b.id}, ${req.node}, ${req.podNamespace}, ${req.podName}, ${req.containerId})
          RETURNING *)
        SELECT ${ALLOCATION_COLUMNS} FROM ins a JOIN ipam.pools p ON p.id = a.pool_id JOIN ipam.blocks b ON b.id = a.block_id`);
      return toAllocation(row!);
    }
    return null;
  }

  /** Claims the pool's lowest free block for the node, logging the affinity. Caller holds the claim lock. */
  async function claimBlock(tx: Pick<Database, 'execute'>, pool: Row, node: string): Promise<boolean> {
    const poolLen = Number(String(pool.cidr).split('/')[1]);
    const blockLen = Number(pool.block_prefix_length);
    const count = 2 ** (blockLen - poolLen);
    const blockSize = sizeOf(blockLen);
    const [free] = await rows(tx, sql`SELECT set_masklen(network(${pool.cidr}::cidr) + (i * ${blockSize}::bigint), ${blockLen})::cidr::text AS cidr
      FROM generate_series(0, ${count - 1}::bigint) AS i
      WHERE NOT EXISTS (SELECT 1 FROM ipam.blocks b WHERE b.pool_id = ${pool.id}
                          AND b.cidr = set_masklen(network(${pool.cidr}::cidr) + (i * ${blockSize}::bigint), ${blockLen})::cidr)
      ORDER BY i LIMIT 1`);
    if (!free) return false;
    await tx.execute(sql`INSERT INTO ipam.blocks (pool_id, cidr, node) VALUES (${pool.id}, ${free.cidr}::cidr, ${node})`);
    await tx.execute(sql`INSERT INTO ipam.block_events (revision, cidr, pool, node)
      VALUES (nextval('ipam.revision_seq'), ${free.cidr}::cidr, ${pool.name}, ${node})`);
    await tx.execute(sql`SELECT pg_notify(${BLOCKS_CHANNEL}, '')`);
    return true;
  }

  async function allocate(req: AllocationRequest): Promise<Allocation> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await allocateOnce(req);
      } catch (err) {
        const code = pgErrorOf(err)?.code;
        const retryable = code === PG.uniqueViolation || code === PG.serializationFailure || code === PG.deadlockDetected;
        if (!retryable || attempt >= 10) throw err;
      }
    }
  }

  async function release(handle: string): Promise<{ released: boolean; address: string }> {
    const r = await rows(db, sql`UPDATE ipam.allocations SET released_at = now()
      WHERE handle = ${handle} AND released_at IS NULL RETURNING host(address) AS address`);
    return r[0] ? { released: true, address: String(r[0].address) } : { released: false, address: '' };
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

  return { createPool, listPools, listAllocations, allocate, release, affinitySnapshot, affinityChangesSince };
}

export type IpamRepository = ReturnType<typeof createIpamRepository>;
