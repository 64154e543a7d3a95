import type pg from 'pg';
import { createCoalescer } from '../../../lib/coalescer.js';
import { isDatabaseUnavailable } from '../../../lib/db/unavailable.js';
import { ipamErrors } from '../domain/ipam.errors.js';
import { PG, pgErrorOf } from './pg-errors.js';
import type { AllocationView } from './sql.js';

const RACES = new Set<string>([PG.deadlockDetected, PG.uniqueViolation, PG.serializationFailure]);

/**
 * The common allocation, for many callers at once: one statement and one commit for every request that arrived while
 * the previous statements ran (group commit). A request is one family from a pool, with no exact address and no owner
 * key; its outcome is the handle's live allocation ('existing'), a new one ('new'), 'skipped' (the next address was
 * reserved or taken: the offset moved past it, try again), or 'none' (the node has no block in the pool with a
 * never-used address: take the full path, which claims blocks and reuses released addresses).
 *
 * Per (node, pool) the requests are numbered k = 0, 1, …; the node's first block with room is locked (in block id
 * order, so two batches cannot deadlock) and request k takes offset next_offset + k. The lock's re-check drops a
 * block that filled up meanwhile; its requests come back 'none'. A new allocation's row says how many never-used
 * addresses its block has left (`room`), so the caller can claim the node's next block before it is needed.
 */
export const FAST_ALLOCATE_BATCH = `WITH req AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::int[], $5::bigint[], $6::text[], $7::text[], $8::text[], $9::int[], $10::text[], $11::text[], $12::text[])
      WITH ORDINALITY AS r(handle, family, node, pool_id, size, ns, name, cid, domain_id, cluster, attempt, uid, ord)),
  -- Named attempts: each request's attempt row, inserted (or found) and locked until commit. A Release naming the
  -- attempt waits for that commit and then frees what it allocated; a Release that came first fenced the row, and
  -- ON CONFLICT sees the latest committed row (also one committed after this statement began): nothing is allocated.
  att AS (
    INSERT INTO ipam.allocation_attempts (handle, attempt_id)
    SELECT DISTINCT handle, attempt FROM req WHERE attempt <> '' ORDER BY handle, attempt
    ON CONFLICT (handle, attempt_id) DO UPDATE SET created_at = ipam.allocation_attempts.created_at
    RETURNING handle, attempt_id, fenced_at),
  fenced AS MATERIALIZED (
    SELECT r.ord, a.fenced_at FROM req r JOIN att a ON a.handle = r.handle AND a.attempt_id = r.attempt WHERE a.fenced_at IS NOT NULL),
  -- Every table is reached per request by an index (LATERAL ... LIMIT 1): the session keeps one generic plan, made
  -- whenever it first ran, and a hash join over a table that was small then would read the whole table ever after.
  existing AS MATERIALIZED (
    SELECT r.ord, x.id, x.row FROM req r CROSS JOIN LATERAL (
      SELECT a.id, json_build_object('handle', a.handle, 'address', host(a.address), 'family', a.family,
          'pool', (SELECT p.name FROM ipam.pools p WHERE p.id = a.pool_id), 'blockCidr', (SELECT b.cidr::text FROM ipam.blocks b WHERE b.id = a.block_id),
          'node', a.node, 'podNamespace', a.pod_namespace, 'podName', a.pod_name, 'containerId', a.container_id, 'owner', a.owner,
          'cluster', a.cluster, 'routingDomain', (SELECT d.name FROM ipam.routing_domains d WHERE d.id = a.routing_domain_id), 'podUid', a.pod_uid,
          'allocatedAt', a.allocated_at) AS row
      FROM ipam.allocations a WHERE a.handle = r.handle AND a.family = r.family AND a.released_at IS NULL LIMIT 1) x
    WHERE NOT EXISTS (SELECT 1 FROM fenced f WHERE f.ord = r.ord)),
  fresh AS MATERIALIZED (
    SELECT r.*, row_number() OVER (PARTITION BY r.node, r.pool_id ORDER BY r.ord) - 1 AS k
    FROM req r WHERE NOT EXISTS (SELECT 1 FROM existing e WHERE e.ord = r.ord) AND NOT EXISTS (SELECT 1 FROM fenced f WHERE f.ord = r.ord)),
  grp AS (SELECT node, pool_id, max(size) AS size FROM fresh GROUP BY node, pool_id),
  cand AS MATERIALIZED (
    SELECT c.id, g.size FROM grp g CROSS JOIN LATERAL (
      SELECT b.id FROM ipam.blocks b
      WHERE b.node = g.node AND b.pool_id = g.pool_id AND b.released_at IS NULL AND b.next_offset < g.size
      ORDER BY b.id LIMIT 1) c),
  -- Locked one at a time in block id order (so two statements cannot deadlock); the lock's re-check drops a block
  -- that filled up meanwhile.
  blk AS MATERIALIZED (
    SELECT l.* FROM (SELECT id, size FROM cand ORDER BY id) c CROSS JOIN LATERAL (
      SELECT b.id, b.node, b.pool_id, b.next_offset, host(network(b.cidr))::inet AS base, b.cidr
      FROM ipam.blocks b WHERE b.id = c.id AND b.released_at IS NULL AND b.next_offset < c.size FOR UPDATE) l),
  pick AS (
    SELECT f.*, blk.id AS block_id, blk.cidr AS block_cidr, blk.base + (blk.next_offset + f.k) AS address, f.size - (blk.next_offset + f.k + 1) AS room
    FROM fresh f JOIN blk ON blk.node = f.node AND blk.pool_id = f.pool_id
    WHERE blk.next_offset + f.k < f.size),
  chk AS MATERIALIZED (
    SELECT p.*,
      NOT EXISTS (SELECT 1 FROM ipam.reservations rs WHERE rs.pool_id = p.pool_id AND rs.first <= p.address AND rs.last >= p.address)
      AND NOT EXISTS (SELECT 1 FROM ipam.allocations l WHERE l.address = p.address AND l.routing_domain_id = p.domain_id AND l.released_at IS NULL)
      -- A never-used offset can still be resting: an exact address, since released (cooling down or held for an owner).
      AND NOT EXISTS (SELECT 1 FROM ipam.free_addresses fa WHERE fa.routing_domain_id = p.domain_id AND fa.address = p.address
        AND (fa.free_since > now() - make_interval(secs => (SELECT pl.cooldown_seconds FROM ipam.pools pl WHERE pl.id = p.pool_id)) OR fa.hold_until > now())) AS ok
    FROM pick p),
  adv AS (
    UPDATE ipam.blocks b SET next_offset = b.next_offset + s.used, live_count = b.live_count + s.ok
    FROM (SELECT block_id, count(*) AS used, count(*) FILTER (WHERE ok) AS ok FROM chk GROUP BY block_id) s
    WHERE b.id = s.block_id),
  freed AS (DELETE FROM ipam.free_addresses f USING chk WHERE chk.ok AND f.routing_domain_id = chk.domain_id AND f.address = chk.address),
  ins AS (
    INSERT INTO ipam.allocations (handle, address, family, pool_id, block_id, routing_domain_id, cluster, node, pod_namespace, pod_name, container_id, owner, pod_uid)
    SELECT handle, address, family, pool_id, block_id, domain_id, cluster, node, ns, name, cid, '', uid FROM chk WHERE ok)
  -- A new row is the request plus what is returned here (every ok row is inserted, or the statement fails, at now()):
  -- the caller knows the rest. A live allocation found by handle comes back whole.
  SELECT ord, 'new' AS outcome, host(address) AS address, block_cidr::text AS block_cidr,
    floor(extract(epoch FROM now()) * 1000)::float8 AS allocated_ms, room, NULL::json AS existing
  FROM chk WHERE ok
  UNION ALL
  SELECT ord, 'skipped', NULL, NULL, NULL, NULL, NULL FROM chk WHERE NOT ok
  UNION ALL
  SELECT ord, 'existing', NULL, NULL, NULL, NULL, row FROM existing
  UNION ALL
  SELECT ord, 'fenced', NULL, NULL, floor(extract(epoch FROM fenced_at) * 1000)::float8, NULL, NULL FROM fenced`;

export interface FastRequest {
  handle: string;
  family: number;
  node: string;
  poolId: number;
  /** Addresses in one of the pool's blocks. */
  blockSize: bigint;
  podNamespace: string;
  podName: string;
  containerId: string;
  routingDomainId: number;
  cluster: string;
  /** '' when the caller named no attempt. */
  attemptId: string;
  /** The pod's Kubernetes UID, or ''. */
  podUid: string;
}

/**
 * 'new': the address taken, its block, when (the row's allocated_at) and how many never-used addresses the block has
 * left; 'existing': the handle's live allocation (an AllocationView as JSON); 'skipped': try again; 'none': full path;
 * 'fenced': a Release named the request's attempt (when), so it allocated nothing.
 */
export type FastOutcome =
  | { kind: 'new'; address: string; blockCidr: string; allocatedAt: Date; room: bigint }
  | { kind: 'existing'; row: AllocationView }
  | { kind: 'skipped' }
  | { kind: 'none' }
  | { kind: 'fenced'; at: Date };

/** Requests that arrive together go in one statement; at most MAX_IN_FLIGHT statements run at once. */
export const FAST_IN_FLIGHT = 2;
const MAX_BATCH = 256;
/** Requests that may wait for a statement; one more is refused (UNAVAILABLE) rather than queued. */
export const FAST_MAX_QUEUED = 8 * MAX_BATCH;

export function createFastAllocator(client: Pick<pg.Pool, 'query'>) {
  async function runBatch(items: FastRequest[]): Promise<FastOutcome[]> {
    // One request per handle, family and attempt in a statement: a repeated one (a retry racing its original) shares the outcome.
    const firstOf = new Map<string, number>();
    const unique: FastRequest[] = [];
    const slot = items.map((it) => {
      const key = `${it.family}\u0000${it.handle}\u0000${it.attemptId}`;
      let i = firstOf.get(key);
      if (i === undefined) {
        i = unique.push(it) - 1;
        firstOf.set(key, i);
      }
      return i;
    });
    const { rows } = await client.query({
      // A named (prepared) statement: planning it costs more than running it.
      name: 'ipam_allocate_fast_batch',
      text: FAST_ALLOCATE_BATCH,
      values: [
        unique.map((u) => u.handle),
        unique.map((u) => u.family),
        unique.map((u) => u.node),
        unique.map((u) => u.poolId),
        unique.map((u) => u.blockSize.toString()),
        unique.map((u) => u.podNamespace),
        unique.map((u) => u.podName),
        unique.map((u) => u.containerId),
        unique.map((u) => u.routingDomainId),
        unique.map((u) => u.cluster),
        unique.map((u) => u.attemptId),
        unique.map((u) => u.podUid),
      ],
    });
    const out: FastOutcome[] = unique.map(() => ({ kind: 'none' }));
    for (const r of rows as Record<string, unknown>[]) {
      out[Number(r.ord) - 1] =
        r.outcome === 'new'
          ? {
              kind: 'new',
              address: r.address as string,
              blockCidr: r.block_cidr as string,
              allocatedAt: new Date(r.allocated_ms as number),
              room: BigInt(r.room as string),
            }
          : r.outcome === 'existing'
            ? { kind: 'existing', row: r.existing as AllocationView }
            : r.outcome === 'fenced'
              ? { kind: 'fenced', at: new Date(r.allocated_ms as number) }
              : { kind: 'skipped' };
    }
    return slot.map((i) => out[i]!);
  }

  /**
   * A batch that fails as a whole (a unique violation from a concurrent full-path allocation, a deadlock with one) is
   * retried one request at a time, so one request's conflict never fails its neighbours.
   */
  async function runBatchOrEach(items: FastRequest[]): Promise<FastOutcome[]> {
    try {
      return await runBatch(items);
    } catch (err) {
      // A database that cannot serve now fails the batch (and the queue behind it): one by one would only wait longer.
      if (isDatabaseUnavailable(err)) throw err;
      // A lone request that lost a race (a deadlock, a unique violation) takes the full path, which retries those.
      if (items.length === 1 && RACES.has(pgErrorOf(err)?.code ?? '')) return [{ kind: 'none' }];
      if (items.length === 1 || !pgErrorOf(err)) throw err;
      const out: FastOutcome[] = [];
      for (const it of items) {
        try {
          out.push((await runBatch([it]))[0]!);
        } catch (e) {
          if (!pgErrorOf(e) || isDatabaseUnavailable(e)) throw e;
          // The full path decides (and retries unique violations itself).
          out.push({ kind: 'none' });
        }
      }
      return out;
    }
  }

  const coalescer = createCoalescer(runBatchOrEach, {
    maxInFlight: FAST_IN_FLIGHT,
    maxBatch: MAX_BATCH,
    maxQueued: FAST_MAX_QUEUED,
    overloaded: (queued) => ipamErrors.overloaded(queued),
    failsQueued: isDatabaseUnavailable,
  });
  return { allocate: (req: FastRequest) => coalescer.submit(req) };
}
