import { sql } from 'drizzle-orm';
import type pg from 'pg';
import type { Database } from '../../../lib/db/database.js';
import { cidrSize, parseAddress, parseCidr, type Family } from '../../../lib/net/ip.js';
import type { AllocationTransaction, FastOutcome, PoolRecord } from '../domain/ipam-store.js';
import type { AllocationRequest } from '../domain/pool.js';
import type { Allocation } from '../domain/types.js';
import { createFastAllocator } from './fast-allocate.js';
import type { allocationAttempts, freeAddresses, reservations } from './schema.js';
import {
  ALLOCATION_COLUMNS,
  ALLOCATION_JOINS,
  CLAIM_LOCK,
  logAffinity,
  reservedInBlock,
  rows,
  toAllocation,
  type AllocationView,
  type BlockRow,
  type Tx,
} from './sql.js';

/**
 * The allocation transaction's steps and the group-commit path. Every allocation is one transaction and never scans a
 * range: a block hands out its never-used addresses in order (next_offset), then the longest-free released address
 * past its pool's cool-down; a new block is found by a gap search over the pool's existing blocks (DESIGN.md).
 */
type NodeBlock = Pick<BlockRow, 'id' | 'cidr'> & { nextOffset: string | number; len: number };
type FreeRow = Pick<typeof freeAddresses.$inferSelect, 'address' | 'blockId' | 'routingDomainId' | 'owner'>;

async function insertAllocation(
  tx: Tx,
  pool: PoolRecord,
  blockId: number,
  address: string,
  req: AllocationRequest,
): Promise<Allocation> {
  const [row] = await rows<AllocationView>(
    tx,
    sql`WITH a AS (
      INSERT INTO ipam.allocations (handle, address, family, pool_id, block_id, routing_domain_id, cluster, node, pod_namespace, pod_name, container_id, owner, pod_uid)
      VALUES (${req.handle}, ${address}::inet, ${pool.family}, ${pool.id}, ${blockId}, ${pool.routingDomainId}, ${req.cluster ?? ''}, ${req.node}, ${req.podNamespace}, ${req.podName}, ${req.containerId}, ${req.owner}, ${req.podUid})
      RETURNING *),
    counted AS (UPDATE ipam.blocks SET live_count = live_count + 1 WHERE id = ${blockId})
    SELECT ${ALLOCATION_COLUMNS} FROM a ${ALLOCATION_JOINS}`,
  );
  return toAllocation(row!);
}

/**
 * A block released while some of its addresses still rested (GarbageCollect.release_blocks) left their rows: the
 * new claim of the block takes them over, so they finish their rest here (skipped as never-used offsets, reused once
 * rested) instead of being handed out at once. Usually none (one index range probe).
 */
async function adoptResting(tx: Tx, blockId: number, cidr: string, domain: number): Promise<void> {
  await tx.execute(sql`UPDATE ipam.free_addresses SET block_id = ${blockId} WHERE routing_domain_id = ${domain}
    AND address BETWEEN host(network(${cidr}::cidr))::inet AND host(broadcast(${cidr}::cidr))::inet AND block_id <> ${blockId}`);
}

function allocationTransaction(tx: Tx): AllocationTransaction {
  return {
    async enterAttempt(handle, attemptId) {
      // The row, inserted or found, stays locked until commit; ON CONFLICT reads the latest committed row (a fence).
      const [row] = await rows<Pick<typeof allocationAttempts.$inferSelect, 'fencedAt'>>(
        tx,
        sql`INSERT INTO ipam.allocation_attempts (handle, attempt_id)
        VALUES (${handle}, ${attemptId})
        ON CONFLICT (handle, attempt_id) DO UPDATE SET created_at = ipam.allocation_attempts.created_at RETURNING fenced_at AS "fencedAt"`,
      );
      return row?.fencedAt ? new Date(row.fencedAt) : null;
    },

    async liveOfHandle(handle) {
      return (
        await rows<AllocationView>(
          tx,
          sql`SELECT ${ALLOCATION_COLUMNS} FROM ipam.allocations a ${ALLOCATION_JOINS}
        WHERE a.handle = ${handle} AND a.released_at IS NULL ORDER BY a.family`,
        )
      ).map(toAllocation);
    },

    async allocateFromNodeBlocks(pool, req) {
      // Lock this node's blocks in the pool: allocations on one node serialize, nodes proceed in parallel.
      const blocks = await rows<NodeBlock>(
        tx,
        sql`SELECT id, cidr::text AS cidr, next_offset AS "nextOffset", masklen(cidr) AS len FROM ipam.blocks
        WHERE node = ${req.node} AND pool_id = ${pool.id} AND released_at IS NULL ORDER BY id FOR UPDATE`,
      );
      for (const b of blocks) {
        const size = cidrSize(pool.family, Number(b.len));
        // Usually one step; a reserved range is jumped over, an address taken as a specific one is stepped past.
        while (BigInt(b.nextOffset) < size) {
          const [next] = await rows<{ nextOffset: string | number; address: string }>(
            tx,
            sql`UPDATE ipam.blocks SET next_offset = next_offset + 1 WHERE id = ${b.id}
            RETURNING next_offset AS "nextOffset", host(host(network(cidr))::inet + (next_offset - 1)) AS address`,
          );
          b.nextOffset = next!.nextOffset;
          const [r] = await rows<{ after: string }>(
            tx,
            sql`SELECT (last - host(network(${b.cidr}::cidr))::inet) + 1 AS after FROM ipam.reservations
            WHERE pool_id = ${pool.id} AND first <= ${next!.address}::inet AND last >= ${next!.address}::inet ORDER BY last DESC LIMIT 1`,
          );
          if (r) {
            const after = BigInt(r.after) < size ? BigInt(r.after) : size;
            await tx.execute(sql`UPDATE ipam.blocks SET next_offset = ${after.toString()}::bigint WHERE id = ${b.id}`);
            b.nextOffset = after.toString();
            continue;
          }
          const [taken] = await rows(
            tx,
            sql`SELECT 1 FROM ipam.allocations WHERE address = ${next!.address}::inet AND routing_domain_id = ${pool.routingDomainId} AND released_at IS NULL`,
          );
          if (taken) continue;
          // Released since it was taken as an exact address: resting (cooling down, or held for an owner), so not yet.
          const [resting] = await rows(
            tx,
            sql`SELECT 1 FROM ipam.free_addresses WHERE routing_domain_id = ${pool.routingDomainId} AND address = ${next!.address}::inet
            AND (free_since > now() - make_interval(secs => ${pool.cooldownSeconds}) OR hold_until > now())`,
          );
          if (resting) continue;
          await tx.execute(
            sql`DELETE FROM ipam.free_addresses WHERE routing_domain_id = ${pool.routingDomainId} AND address = ${next!.address}::inet`,
          );
          return insertAllocation(tx, pool, b.id, next!.address, req);
        }
      }
      if (blocks.length === 0) return null;
      // Every block has handed out each address once: reuse the longest-free address past the cool-down.
      const [reused] = await rows<Pick<FreeRow, 'address' | 'blockId'>>(
        tx,
        sql`DELETE FROM ipam.free_addresses WHERE routing_domain_id = ${pool.routingDomainId} AND address = (
          SELECT f.address FROM ipam.free_addresses f
          WHERE f.block_id = ANY(${sql.raw(`ARRAY[${blocks.map((b) => Number(b.id)).join(',')}]::int[]`)})
            AND f.free_since <= now() - make_interval(secs => ${pool.cooldownSeconds})
            AND (f.hold_until IS NULL OR f.hold_until <= now())
          ORDER BY f.free_since LIMIT 1)
        RETURNING host(address) AS address, block_id AS "blockId"`,
      );
      return reused ? insertAllocation(tx, pool, reused.blockId, reused.address, req) : null;
    },

    async allocateHeld(pools, req) {
      const ids = pools.map((p) => p.id);
      const [f] = await rows<FreeRow & { text: string; poolId: number }>(
        tx,
        sql`SELECT f.address, host(f.address) AS text, f.block_id AS "blockId",
          f.routing_domain_id AS "routingDomainId", b.pool_id AS "poolId" FROM ipam.free_addresses f
        JOIN ipam.blocks b ON b.id = f.block_id
        WHERE f.owner = ${req.owner} AND f.hold_until > now() AND b.node = ${req.node} AND b.released_at IS NULL
          AND b.pool_id IN (SELECT jsonb_array_elements_text(${JSON.stringify(ids)}::jsonb)::int)
        ORDER BY f.free_since DESC LIMIT 1 FOR UPDATE OF f`,
      );
      if (!f) return null;
      await tx.execute(
        sql`DELETE FROM ipam.free_addresses WHERE routing_domain_id = ${f.routingDomainId} AND address = ${f.address}`,
      );
      return insertAllocation(
        tx,
        pools.find((p) => p.id === Number(f.poolId))!,
        f.blockId,
        f.text,
        req,
      );
    },

    async lockClaims() {
      await tx.execute(CLAIM_LOCK);
    },

    async claimBlock(pool, node) {
      const blockLen = pool.blockPrefixLength;
      if (pool.maxBlocksPerNode > 0) {
        const [held] = await rows<{ n: number }>(
          tx,
          sql`SELECT count(*)::int AS n FROM ipam.blocks WHERE node = ${node} AND pool_id = ${pool.id} AND released_at IS NULL`,
        );
        if (Number(held!.n) >= pool.maxBlocksPerNode) return false;
      }
      // The lowest free block: the pool's claim hint if it is free, else the first block right after a live block at or
      // above the hint, walking the live blocks in address order (index order; it stops at the first gap). Every block
      // below the hint is claimed, so this is the pool's lowest free block, found in a few index probes however many
      // blocks the pool has.
      const [free] = await rows<{ cidr: string }>(
        tx,
        sql`WITH start AS (
          SELECT coalesce(claim_hint, set_masklen(host(network(cidr))::inet, ${blockLen})::cidr) AS h FROM ipam.pools WHERE id = ${pool.id})
        SELECT c::text AS cidr FROM (
          SELECT h AS c FROM start
          UNION ALL
          (SELECT set_masklen(host(broadcast(b.cidr))::inet + 1, ${blockLen})::cidr FROM ipam.blocks b, start
           WHERE b.routing_domain_id = ${pool.routingDomainId} AND b.released_at IS NULL AND b.cidr >= start.h AND b.cidr <<= ${pool.cidr}::cidr
             AND host(broadcast(b.cidr)) <> host(broadcast(${pool.cidr}::cidr))
           ORDER BY b.cidr)
        ) cands
        WHERE c <<= ${pool.cidr}::cidr AND NOT EXISTS (SELECT 1 FROM ipam.blocks x WHERE x.routing_domain_id = ${pool.routingDomainId} AND x.cidr = cands.c AND x.released_at IS NULL)
        LIMIT 1`,
      );
      if (!free) return false;
      await tx.execute(sql`UPDATE ipam.pools SET claim_hint = ${free.cidr}::cidr WHERE id = ${pool.id}`);
      const [claimed] = await rows<Pick<BlockRow, 'id'>>(
        tx,
        sql`INSERT INTO ipam.blocks (pool_id, routing_domain_id, cidr, node, reserved)
        VALUES (${pool.id}, ${pool.routingDomainId}, ${free.cidr}::cidr, ${node}, ${reservedInBlock(sql`${free.cidr}::cidr`, sql`${pool.id}::int`)}) RETURNING id`,
      );
      await adoptResting(tx, claimed!.id, free.cidr, pool.routingDomainId);
      await logAffinity(tx, pool.name, free.cidr, node);
      return true;
    },

    async nodeBlockUsage(pool, node) {
      const size = cidrSize(pool.family, pool.blockPrefixLength);
      const [mine] = await rows<{ blocks: string; live: string; roomy: string }>(
        tx,
        sql`SELECT count(*) AS blocks, coalesce(sum(live_count), 0) AS live,
          count(*) FILTER (WHERE next_offset * 4 < ${(size * 3n).toString()}::numeric) AS roomy
        FROM ipam.blocks WHERE node = ${node} AND pool_id = ${pool.id} AND released_at IS NULL`,
      );
      return { blocks: Number(mine!.blocks), live: BigInt(mine!.live), roomy: Number(mine!.roomy) };
    },

    async blocksBelowClaimHint(pool) {
      // Every block below the claim hint is claimed: how many lie there, from the pool's start.
      const [p] = await rows<{ hint: string | null }>(
        tx,
        sql`SELECT host(claim_hint) AS hint FROM ipam.pools WHERE id = ${pool.id}`,
      );
      return p?.hint
        ? (parseAddress(p.hint).value - parseCidr(pool.cidr).base) / cidrSize(pool.family, pool.blockPrefixLength)
        : 0n;
    },

    async poolContaining(routingDomainId, address) {
      const [owning] = await rows<{ id: number }>(
        tx,
        sql`SELECT id FROM ipam.pools WHERE cidr >>= ${address}::inet AND routing_domain_id = ${routingDomainId}`,
      );
      return owning ? Number(owning.id) : null;
    },

    async reservationCovering(poolId, address) {
      const [r] = await rows<Pick<typeof reservations.$inferSelect, 'first' | 'last'>>(
        tx,
        sql`SELECT host(first) AS first, host(last) AS last FROM ipam.reservations
        WHERE pool_id = ${poolId} AND first <= ${address}::inet AND last >= ${address}::inet LIMIT 1`,
      );
      return r ?? null;
    },

    async liveHolder(routingDomainId, address) {
      const [holder] = await rows<{ handle: string }>(
        tx,
        sql`SELECT handle FROM ipam.allocations WHERE address = ${address}::inet AND routing_domain_id = ${routingDomainId} AND released_at IS NULL`,
      );
      return holder?.handle ?? null;
    },

    async resting(pool, address, owner) {
      const [r] = await rows<{ owner: string; until: Date | string | null }>(
        tx,
        sql`SELECT owner, greatest(free_since + make_interval(secs => ${pool.cooldownSeconds}),
          CASE WHEN owner <> ${owner} THEN hold_until END) AS until
        FROM ipam.free_addresses WHERE routing_domain_id = ${pool.routingDomainId} AND address = ${address}::inet`,
      );
      return r ? { owner: r.owner, until: r.until ? new Date(r.until) : null } : null;
    },

    async lockBlockAt(routingDomainId, address) {
      const [block] = await rows<Pick<BlockRow, 'id' | 'node'>>(
        tx,
        sql`SELECT id, node FROM ipam.blocks WHERE cidr >>= ${address}::inet
        AND routing_domain_id = ${routingDomainId} AND released_at IS NULL FOR UPDATE`,
      );
      return block ?? null;
    },

    async claimBlockAt(pool, address, node) {
      const cidr = sql`network(set_masklen(${address}::inet, ${pool.blockPrefixLength}))::cidr`;
      const [block] = await rows<Pick<BlockRow, 'id' | 'cidr'>>(
        tx,
        sql`INSERT INTO ipam.blocks (pool_id, routing_domain_id, cidr, node, reserved)
        VALUES (${pool.id}, ${pool.routingDomainId}, ${cidr}, ${node}, ${reservedInBlock(cidr, sql`${pool.id}::int`)}) RETURNING id, cidr::text AS cidr`,
      );
      await adoptResting(tx, block!.id, block!.cidr, pool.routingDomainId);
      await logAffinity(tx, pool.name, block!.cidr, node);
      return block!.id;
    },

    async takeAddress(pool, blockId, address, req) {
      await tx.execute(
        sql`DELETE FROM ipam.free_addresses WHERE routing_domain_id = ${pool.routingDomainId} AND address = ${address}::inet`,
      );
      return insertAllocation(tx, pool, blockId, address, req);
    },
  };
}

export function createAllocationRepository(db: Database, client: Pick<pg.Pool, 'query'>) {
  // `client` serves the group-commit statement: best a pool whose sessions keep one generic plan (DatabaseHandle.preparedPool).
  const fast = createFastAllocator(client);

  function transaction<T>(fn: (tx: AllocationTransaction) => Promise<T>): Promise<T> {
    return db.transaction((tx) => fn(allocationTransaction(tx)));
  }

  async function allocateFast(pool: PoolRecord, req: AllocationRequest): Promise<FastOutcome> {
    const family = pool.family as Family;
    const r = await fast.allocate({
      handle: req.handle,
      family,
      node: req.node,
      poolId: pool.id,
      blockSize: cidrSize(family, pool.blockPrefixLength),
      podNamespace: req.podNamespace,
      podName: req.podName,
      containerId: req.containerId,
      routingDomainId: pool.routingDomainId,
      cluster: req.cluster ?? '',
      attemptId: req.attemptId ?? '',
      podUid: req.podUid,
    });
    switch (r.kind) {
      case 'new':
        // The row just inserted: the request, the pool (from the caller's cache; pools are never renamed) and what the statement chose.
        return {
          kind: 'new',
          room: r.room,
          allocation: {
            handle: req.handle,
            address: r.address,
            family,
            pool: pool.name,
            blockCidr: r.blockCidr,
            node: req.node,
            podNamespace: req.podNamespace,
            podName: req.podName,
            containerId: req.containerId,
            owner: '',
            cluster: req.cluster ?? '',
            routingDomain: pool.routingDomain,
            podUid: req.podUid,
            allocatedAt: r.allocatedAt,
          },
        };
      case 'existing':
        return { kind: 'existing', allocation: toAllocation(r.row) };
      default:
        return r;
    }
  }

  return { transaction, allocateFast };
}
