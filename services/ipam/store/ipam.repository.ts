import { sql, type SQL } from 'drizzle-orm';
import type pg from 'pg';
import type { Database } from '../../../lib/db/database.js';
import { cidrSize, formatCidr, parseAddress, parseCidr, type Family } from '../../../lib/net/ip.js';
import { selectPools, type PoolRule } from '../domain/pool-selection.js';
import type { Page, PageKey } from '../domain/paging.js';
import { ipamErrors } from '../domain/ipam.errors.js';
import type { AllocationRequest, PoolSpec } from '../domain/pool.js';
import type { AffinityChange, Allocation, BlockAffinity, HistoryEntry, HistoryQuery, Pool, PoolChanges, PoolUsage, Reservation, UsageCounts } from '../domain/types.js';
import { PG, pgErrorOf } from './pg-errors.js';
import { createFastAllocator } from './fast-allocate.js';
import { withDatabaseErrors } from '../../../lib/db/unavailable.js';

/**
 * The only queries on IPAM's tables. Every allocation is one transaction and never scans a range: a block hands out
 * its never-used addresses in order (next_offset), then the longest-free released address past its pool's
 * cool-down; a new block is found by a gap search over the pool's existing blocks. See services/ipam/DESIGN.md.
 */
export const BLOCKS_CHANNEL = 'ipam_blocks';
const POOL_CACHE_MS = 1000;


type Row = Record<string, unknown>;
type Tx = Pick<Database, 'execute'>;

const ALLOCATION_COLUMNS = sql`a.handle, host(a.address) AS address, a.family, p.name AS pool, b.cidr::text AS block_cidr, a.node,
  a.pod_namespace, a.pod_name, a.container_id, a.owner, a.cluster, d.name AS routing_domain, a.pod_uid, a.allocated_at`;
const ALLOCATION_JOINS = sql`JOIN ipam.pools p ON p.id = a.pool_id JOIN ipam.blocks b ON b.id = a.block_id JOIN ipam.routing_domains d ON d.id = a.routing_domain_id`;

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
    owner: String(r.owner ?? ''),
    cluster: String(r.cluster ?? ''),
    routingDomain: String(r.routing_domain),
    podUid: String(r.pod_uid ?? ''),
    allocatedAt: new Date(r.allocated_at as string),
  };
}

function toPool(r: Row): Pool {
  return {
    name: String(r.name), cidr: String(r.cidr), family: Number(r.family) as Family, blockPrefixLength: Number(r.block_prefix_length),
    cooldownSeconds: Number(r.cooldown_seconds), stickySeconds: Number(r.sticky_seconds), disabled: Boolean(r.disabled),
    nodeSelector: String(r.node_selector), namespaceSelector: String(r.namespace_selector), allowedUses: r.allowed_uses as string[],
    maxBlocksPerNode: Number(r.max_blocks_per_node ?? 0), routingDomain: String(r.routing_domain), etag: `"${r.id}.${r.version}"`, liveAllocations: Number(r.live ?? 0), createdAt: new Date(r.created_at as string),
  };
}

function toRule(r: Row): Row & PoolRule {
  return Object.assign(r, {
    name: String(r.name), family: Number(r.family), disabled: Boolean(r.disabled), nodeSelector: String(r.node_selector),
    namespaceSelector: String(r.namespace_selector), allowedUses: r.allowed_uses as string[],
  });
}

function toReservation(r: Row): Reservation {
  return { id: Number(r.id), pool: String(r.pool), first: String(r.first), last: String(r.last), reason: String(r.reason), createdAt: new Date(r.created_at as string) };
}

/** A text[] parameter (drizzle would expand a JS array into a list of parameters). */
const textArray = (values: string[]) => sql`(SELECT coalesce(array_agg(v), '{}'::text[]) FROM jsonb_array_elements_text(${JSON.stringify(values)}::jsonb) AS v)`;

async function rows(db: Tx, query: SQL): Promise<Row[]> {
  return (await db.execute(query)).rows as Row[];
}

const POOL_COLUMNS = sql`id, name, cidr::text AS cidr, family, block_prefix_length, cooldown_seconds, sticky_seconds, disabled,
  node_selector, namespace_selector, allowed_uses, max_blocks_per_node, version, created_at, routing_domain_id,
  (SELECT d.name FROM ipam.routing_domains d WHERE d.id = pools.routing_domain_id) AS routing_domain`;
/** A pool's live allocations, from its per-node counters (one row per node, never a count of allocation rows). */
const LIVE_COUNT = sql`(SELECT coalesce(sum(u.live), 0) FROM ipam.node_usage u WHERE u.pool_id = pools.id) AS live`;

/** Reserved addresses of pool `poolId` inside block `cidr` (each reservation clamped to the block). */
const reservedInBlock = (cidr: SQL, poolId: SQL) => sql`(SELECT coalesce(sum((least(r.last, host(broadcast(${cidr}))::inet) - greatest(r.first, host(network(${cidr}))::inet)) + 1), 0)
  FROM ipam.reservations r WHERE r.pool_id = ${poolId} AND r.first <= host(broadcast(${cidr}))::inet AND r.last >= host(network(${cidr}))::inet)`;

/**
 * Adds `sign` times each reservation's overlap to the reserved counters of the pool's live blocks it overlaps (found
 * by address range on the live-block index). The caller holds the claim lock, so no block is claimed meanwhile with a
 * count that misses or doubles the change.
 */
async function countReservation(tx: Tx, pool: Row, first: string, last: string, sign: 1 | -1): Promise<void> {
  await tx.execute(sql`UPDATE ipam.blocks b SET reserved = b.reserved + ${sign}::int * ((least(${last}::inet, host(broadcast(b.cidr))::inet) - greatest(${first}::inet, host(network(b.cidr))::inet)) + 1)::int
    WHERE b.routing_domain_id = ${pool.routing_domain_id} AND b.pool_id = ${pool.id} AND b.released_at IS NULL
      AND b.cidr >= network(set_masklen(${first}::inet, ${pool.block_prefix_length}::int))::cidr
      AND b.cidr <= network(set_masklen(${last}::inet, ${pool.block_prefix_length}::int))::cidr`);
}

/** What a release may free (the caller's own, from its identity): only allocations of `node`, only in `pools`; absent: any. */
export interface ReleaseScope {
  node?: string;
  pools?: string[];
}

export function createIpamRepository(db: Database, client: Pick<pg.Pool, 'query'>, opts: { onBackgroundError?: (what: string, err: unknown) => void } = {}) {
  // `client` serves the group-commit statement: best a pool whose sessions keep one generic plan (DatabaseHandle.preparedPool).
  const fast = createFastAllocator(client);
  async function createPool(spec: PoolSpec): Promise<Pool> {
    const cidr = formatCidr(spec.cidr);
    try {
      const [domain] = await rows(db, sql`SELECT id FROM ipam.routing_domains WHERE name = ${spec.routingDomain}`);
      if (!domain) throw ipamErrors.routingDomainNotFound(spec.routingDomain);
      const [row] = await rows(db, sql`INSERT INTO ipam.pools (name, cidr, family, block_prefix_length, cooldown_seconds, sticky_seconds,
          disabled, node_selector, namespace_selector, allowed_uses, max_blocks_per_node, routing_domain_id)
        VALUES (${spec.name}, ${cidr}::cidr, ${spec.cidr.family}, ${spec.blockPrefixLength}, ${spec.cooldownSeconds}, ${spec.stickySeconds},
          ${spec.disabled}, ${spec.nodeSelector}, ${spec.namespaceSelector}, ${textArray(spec.allowedUses)}, ${spec.maxBlocksPerNode}, ${domain.id})
        RETURNING ${POOL_COLUMNS}`);
      return toPool(row!);
    } catch (err) {
      const pg = pgErrorOf(err);
      if (pg?.code === PG.exclusionViolation) {
        const [other] = await rows(db, sql`SELECT p.name, p.cidr::text AS cidr FROM ipam.pools p JOIN ipam.routing_domains d ON d.id = p.routing_domain_id
          WHERE p.cidr && ${cidr}::cidr AND d.name = ${spec.routingDomain} LIMIT 1`);
        throw ipamErrors.poolOverlaps(cidr, `${other ? `${other.name} (${other.cidr})` : 'another pool'} in routing domain ${spec.routingDomain}`);
      }
      if (pg?.code === PG.uniqueViolation) throw ipamErrors.poolExists(spec.name);
      throw err;
    } finally {
      invalidatePools();
    }
  }

  async function listPools(page: { after: PageKey | null; limit: number }): Promise<Page<Pool>> {
    const after = page.after ? String(page.after[0]) : null;
    const r = await rows(db, sql`SELECT ${POOL_COLUMNS}, ${LIVE_COUNT} FROM ipam.pools
      WHERE ${after}::text IS NULL OR name > ${after} ORDER BY name LIMIT ${page.limit + 1}`);
    const items = r.slice(0, page.limit).map(toPool);
    return { items, next: r.length > page.limit ? [items.at(-1)!.name] : null };
  }

  /** Applies rule changes if the etag is current (optimistic concurrency: a stale etag changes nothing). */
  async function updatePool(name: string, etag: string, changes: PoolChanges): Promise<Pool> {
    const sets: SQL[] = [sql`version = version + 1`];
    if (changes.cooldownSeconds !== undefined) sets.push(sql`cooldown_seconds = ${changes.cooldownSeconds}`);
    if (changes.stickySeconds !== undefined) sets.push(sql`sticky_seconds = ${changes.stickySeconds}`);
    if (changes.disabled !== undefined) sets.push(sql`disabled = ${changes.disabled}`);
    if (changes.nodeSelector !== undefined) sets.push(sql`node_selector = ${changes.nodeSelector}`);
    if (changes.namespaceSelector !== undefined) sets.push(sql`namespace_selector = ${changes.namespaceSelector}`);
    if (changes.allowedUses !== undefined) sets.push(sql`allowed_uses = ${textArray(changes.allowedUses)}`);
    if (changes.maxBlocksPerNode !== undefined) sets.push(sql`max_blocks_per_node = ${changes.maxBlocksPerNode}`);
    invalidatePools();
    const [row] = await rows(db, sql`UPDATE ipam.pools SET ${sql.join(sets, sql`, `)}
      WHERE name = ${name} AND '"' || id || '.' || version || '"' = ${etag} RETURNING ${POOL_COLUMNS}, ${LIVE_COUNT}`);
    if (row) return toPool(row);
    const [exists] = await rows(db, sql`SELECT 1 FROM ipam.pools WHERE name = ${name}`);
    throw exists ? ipamErrors.staleEtag(`pool ${name}`) : ipamErrors.poolNotFound(name);
  }

  async function createReservation(poolName: string, first: string, last: string, reason: string): Promise<Reservation> {
    // Rare, and it takes the claim lock after the pool row, then blocks: a deadlock with an allocation is retried.
    return withRetry(() => db.transaction(async (tx) => {
      const [pool] = await rows(tx, sql`SELECT id, cidr::text AS cidr, routing_domain_id, block_prefix_length FROM ipam.pools WHERE name = ${poolName} FOR UPDATE`);
      if (!pool) throw ipamErrors.poolNotFound(poolName);
      const [inside] = await rows(tx, sql`SELECT ${first}::inet <<= ${pool.cidr}::cidr AND ${last}::inet <<= ${pool.cidr}::cidr
        AND ${first}::inet <= ${last}::inet AS ok`);
      if (!inside!.ok) throw ipamErrors.invalid('reservation', `range ${first}..${last} must be ordered and inside pool ${poolName} (${pool.cidr})`);
      const held = await rows(tx, sql`SELECT host(address) AS address, handle FROM ipam.allocations
        WHERE released_at IS NULL AND address >= ${first}::inet AND address <= ${last}::inet AND family(address) = family(${first}::inet)
          AND routing_domain_id = ${pool.routing_domain_id} LIMIT 5`);
      if (held.length > 0) throw ipamErrors.reservedInUse(`${first}..${last}`, held.map((h) => `${h.address} (${h.handle})`));
      await tx.execute(sql`DELETE FROM ipam.free_addresses WHERE address >= ${first}::inet AND address <= ${last}::inet AND routing_domain_id = ${pool.routing_domain_id}`);
      // Blocks already claimed count the new reservation now; a block claimed later counts it when it is claimed.
      await tx.execute(sql`SELECT pg_advisory_xact_lock(hashtext('ipam.block_claims'))`);
      await countReservation(tx, pool, first, last, 1);
      const [r] = await rows(tx, sql`INSERT INTO ipam.reservations (pool_id, first, last, reason) VALUES (${pool.id}, ${first}::inet, ${last}::inet, ${reason})
        RETURNING id, ${poolName}::text AS pool, host(first) AS first, host(last) AS last, reason, created_at`);
      return toReservation(r!);
    }));
  }

  async function listReservations(poolName: string | null, page: { after: PageKey | null; limit: number }): Promise<Page<Reservation>> {
    const [aPool, aId] = page.after ? [String(page.after[0]), Number(page.after[1])] : [null, null];
    const r = await rows(db, sql`SELECT r.id, p.name AS pool, host(r.first) AS first, host(r.last) AS last, r.reason, r.created_at
      FROM ipam.reservations r JOIN ipam.pools p ON p.id = r.pool_id
      WHERE (${poolName}::text IS NULL OR p.name = ${poolName}) AND (${aPool}::text IS NULL OR (p.name, r.id) > (${aPool}, ${aId}::int))
      ORDER BY p.name, r.id LIMIT ${page.limit + 1}`);
    const items = r.slice(0, page.limit).map(toReservation);
    return { items, next: r.length > page.limit ? [items.at(-1)!.pool, items.at(-1)!.id] : null };
  }

  async function deleteReservation(poolName: string, id: number): Promise<boolean> {
    return withRetry(() => db.transaction(async (tx) => {
      await tx.execute(sql`SELECT pg_advisory_xact_lock(hashtext('ipam.block_claims'))`);
      const [r] = await rows(tx, sql`DELETE FROM ipam.reservations r USING ipam.pools p
        WHERE r.pool_id = p.id AND p.name = ${poolName} AND r.id = ${id}
        RETURNING r.id, host(r.first) AS first, host(r.last) AS last, p.id AS pool_id, p.routing_domain_id, p.block_prefix_length`);
      if (!r) return false;
      await countReservation(tx, { id: r.pool_id, routing_domain_id: r.routing_domain_id, block_prefix_length: r.block_prefix_length }, String(r.first), String(r.last), -1);
      return true;
    }));
  }

  async function listAllocations(filter: { pool?: string; node?: string }, page: { after: PageKey | null; limit: number } = { after: null, limit: 1_000_000 }): Promise<Page<Allocation>> {
    const [aFamily, aAddress] = page.after ? [Number(page.after[0]), String(page.after[1])] : [null, null];
    const r = await rows(db, sql`SELECT ${ALLOCATION_COLUMNS} FROM ipam.allocations a ${ALLOCATION_JOINS}
      WHERE a.released_at IS NULL
        AND (${filter.pool ?? null}::text IS NULL OR p.name = ${filter.pool ?? null})
        AND (${filter.node ?? null}::text IS NULL OR a.node = ${filter.node ?? null})
        AND (${aFamily}::int IS NULL OR (a.family, a.address) > (${aFamily}::int, ${aAddress}::inet))
      ORDER BY a.family, a.address LIMIT ${page.limit + 1}`);
    const items = r.slice(0, page.limit).map(toAllocation);
    return { items, next: r.length > page.limit ? [items.at(-1)!.family, items.at(-1)!.address] : null };
  }

  /**
   * Pools change rarely: a replica reads them at most every POOL_CACHE_MS (and at once after its own changes), so
   * the allocation path does not pay a round trip for them. Another replica's pool change applies within that time.
   * One read at a time serves every caller (under load, hundreds of requests a second used to each start their own
   * when the cache expired), and it starts a little before expiry, so callers rarely wait for it.
   */
  type PoolCache = { at: number; rules: (Row & PoolRule)[]; domainOf: Map<string, number> };
  let poolCache: PoolCache | null = null;
  // Raised by this replica's own pool changes: a read begun before one is neither joined nor kept after it.
  let poolGeneration = 0;
  let poolLoad: { generation: number; promise: Promise<PoolCache> } | null = null;
  function invalidatePools(): void {
    poolCache = null;
    poolGeneration++;
  }
  /** `fresh`: a read that starts now (one in flight may predate what the caller needs to see). */
  function loadPools(fresh = false): Promise<PoolCache> {
    if (!fresh && poolLoad && poolLoad.generation === poolGeneration) return poolLoad.promise;
    const generation = poolGeneration;
    const at = Date.now();
    const promise = (async () => {
      const rules = (await rows(db, sql`SELECT ${POOL_COLUMNS} FROM ipam.pools ORDER BY name`)).map(toRule);
      // Each cluster's routing domain; '' stands for a caller that names no cluster (the default domain).
      const domains = await rows(db, sql`SELECT c.name, c.routing_domain_id AS id FROM ipam.clusters c
        UNION ALL SELECT '', id FROM ipam.routing_domains WHERE name = 'default'`);
      const cache = { at, rules, domainOf: new Map(domains.map((d) => [String(d.name), Number(d.id)])) };
      if (generation === poolGeneration) poolCache = cache;
      return cache;
    })().finally(() => {
      if (poolLoad?.promise === promise) poolLoad = null;
    });
    poolLoad = { generation, promise };
    return promise;
  }

  /** The pools of the caller's routing domain (its cluster's, else the default one). */
  async function poolRules(cluster: string | null = null): Promise<(Row & PoolRule)[]> {
    const age = poolCache ? Date.now() - poolCache.at : Infinity;
    const cached = age < POOL_CACHE_MS ? poolCache : null;
    if (cached && age >= POOL_CACHE_MS * 0.75) loadPools().catch((err) => opts.onBackgroundError?.('reading pools', err));
    let cache = cached ?? (await loadPools());
    // A cluster registered since the cache was read is looked up again before it is called unknown.
    if (cached && !cache.domainOf.has(cluster ?? '')) cache = await loadPools(true);
    const domain = cache.domainOf.get(cluster ?? '');
    if (domain === undefined) throw ipamErrors.clusterNotFound(cluster ?? '');
    return cache.rules.filter((r) => Number(r.routing_domain_id) === domain);
  }

  function wantedFamilies(pools: Row[], req: AllocationRequest): Family[] {
    const asked = req.pool ?? req.namespacePool;
    const available = [...new Set(pools.map((p) => Number(p.family) as Family))].sort();
    return asked ? available : req.families ?? [...new Set([...available, ...req.addresses.map((a) => a.family)])].sort();
  }

  async function allocate(req: AllocationRequest): Promise<Allocation[]> {
    const all = await poolRules(req.cluster);
    if (all.length === 0) throw ipamErrors.noPools();
    req = await withStoredLabels(all, req);
    const pools = selectPools(all, { ...req, namespace: req.podNamespace });
    const families = wantedFamilies(pools, req);
    // The common case, one family from a block with never-used addresses: one statement, one round trip.
    if (families.length === 1 && req.addresses.length === 0 && !req.owner) {
      const first = pools.find((p) => Number(p.family) === families[0]);
      for (let i = 0; first && i < 32; i++) {
        const r = await allocateFast(first, req);
        if (r.kind === 'done') {
          if (r.room !== null && r.room * 4n <= cidrSize(Number(first.family) as Family, Number(first.block_prefix_length))) prefetchBlock(first, req.node);
          return [r.allocation];
        }
        if (r.kind === 'none') break;
      }
    }
    return withRetry(() => allocateOnce(req, pools));
  }

  /**
   * The request with the labels stored by SetNodeLabels / SetNamespaceLabels in place of empty ones; labels in the
   * request win. Read only when a pool of the domain has a selector of that kind: the common allocation, in a domain
   * without selectors, pays no round trip for them.
   */
  async function withStoredLabels(pools: PoolRule[], req: AllocationRequest): Promise<AllocationRequest> {
    const needNode = Object.keys(req.nodeLabels).length === 0 && pools.some((p) => p.nodeSelector !== '');
    const needNamespace = Object.keys(req.namespaceLabels).length === 0 && req.podNamespace !== '' && pools.some((p) => p.namespaceSelector !== '');
    if (!needNode && !needNamespace) return req;
    const [r] = await rows(db, sql`SELECT
        (SELECT labels FROM ipam.node_labels WHERE ${needNode} AND node = ${req.node}) AS node,
        (SELECT labels FROM ipam.namespace_labels WHERE ${needNamespace} AND cluster = ${req.cluster ?? ''} AND namespace = ${req.podNamespace}) AS namespace`);
    return {
      ...req,
      nodeLabels: needNode ? ((r?.node as Record<string, string> | null) ?? {}) : req.nodeLabels,
      namespaceLabels: needNamespace ? ((r?.namespace as Record<string, string> | null) ?? {}) : req.namespaceLabels,
    };
  }

  /** Stores a node's labels (replacing what was there); none removes its row. */
  async function setNodeLabels(node: string, labels: Record<string, string>): Promise<void> {
    if (Object.keys(labels).length === 0) await db.execute(sql`DELETE FROM ipam.node_labels WHERE node = ${node}`);
    else await db.execute(sql`INSERT INTO ipam.node_labels (node, labels) VALUES (${node}, ${JSON.stringify(labels)}::jsonb)
      ON CONFLICT (node) DO UPDATE SET labels = excluded.labels, updated_at = now()`);
  }

  /** Stores a namespace's labels within a cluster ('' for callers naming none); none removes its row. */
  async function setNamespaceLabels(cluster: string | null, namespace: string, labels: Record<string, string>): Promise<void> {
    if (cluster) {
      const [known] = await rows(db, sql`SELECT 1 FROM ipam.clusters WHERE name = ${cluster}`);
      if (!known) throw ipamErrors.clusterNotFound(cluster);
    }
    if (Object.keys(labels).length === 0) await db.execute(sql`DELETE FROM ipam.namespace_labels WHERE cluster = ${cluster ?? ''} AND namespace = ${namespace}`);
    else await db.execute(sql`INSERT INTO ipam.namespace_labels (cluster, namespace, labels) VALUES (${cluster ?? ''}, ${namespace}, ${JSON.stringify(labels)}::jsonb)
      ON CONFLICT (cluster, namespace) DO UPDATE SET labels = excluded.labels, updated_at = now()`);
  }

  /**
   * Block prefetch. When a new allocation leaves its block with a quarter or less of its never-used addresses, the
   * node's next block is claimed in the background (one claim at a time per node and pool), so the node's next pods
   * find room on the fast path instead of claiming under the global claim lock, and the new block's routes reach every
   * node before a pod needs them. Only a node whose blocks are at least three quarters live gets one: a node with
   * churn reuses its released addresses instead of collecting blocks, and a prefetch never takes one of the pool's
   * last tenth of blocks (at least two): near exhaustion a block goes to the node that needs it now. Prefetches run
   * one at a time per replica (they take the global claim lock anyway): waiting ones hold no database connection.
   */
  const prefetching = new Set<string>();
  let prefetchChain: Promise<void> = Promise.resolve();
  function prefetchBlock(pool: Row, node: string): void {
    const key = `${pool.id}/${node}`;
    if (prefetching.has(key)) return;
    prefetching.add(key);
    prefetchChain = prefetchChain.then(() => prefetchNow(pool, node)).finally(() => prefetching.delete(key));
  }

  async function prefetchNow(pool: Row, node: string): Promise<void> {
    const size = cidrSize(Number(pool.family) as Family, Number(pool.block_prefix_length));
    await db.transaction(async (tx) => {
      await tx.execute(sql`SELECT pg_advisory_xact_lock(hashtext('ipam.block_claims'))`);
      const [mine] = await rows(tx, sql`SELECT count(*) AS blocks, coalesce(sum(live_count), 0) AS live,
          count(*) FILTER (WHERE next_offset * 4 < ${(size * 3n).toString()}::numeric) AS roomy
        FROM ipam.blocks WHERE node = ${node} AND pool_id = ${pool.id} AND released_at IS NULL`);
      const full = BigInt(mine!.live as string) * 4n >= BigInt(mine!.blocks as string) * size * 3n;
      if (!full || Number(mine!.roomy) > 0) return;
      // Every block below the claim hint is claimed: from it, how many the pool may still have free.
      const [p] = await rows(tx, sql`SELECT host(claim_hint) AS hint FROM ipam.pools WHERE id = ${pool.id}`);
      const cidr = parseCidr(String(pool.cidr));
      const total = cidrSize(cidr.family, cidr.prefixLength) / size;
      const below = p?.hint ? (parseAddress(String(p.hint)).value - cidr.base) / size : 0n;
      const keep = total / 10n > 2n ? total / 10n : 2n;
      if (total - below > keep) await claimBlock(tx, pool, node);
    }).catch((err) => opts.onBackgroundError?.(`prefetching a block of pool ${String(pool.name)} for node ${node}`, err));
  }

  /** The common case through the group-commit path (fast-allocate.ts). */
  async function allocateFast(pool: Row, req: AllocationRequest): Promise<{ kind: 'done'; allocation: Allocation; room: bigint | null } | { kind: 'skipped' } | { kind: 'none' }> {
    const family = Number(pool.family) as Family;
    const r = await fast.allocate({
      handle: req.handle, family, node: req.node, poolId: Number(pool.id),
      blockSize: cidrSize(family, Number(pool.block_prefix_length)),
      podNamespace: req.podNamespace, podName: req.podName, containerId: req.containerId,
      routingDomainId: Number(pool.routing_domain_id), cluster: req.cluster ?? '', attemptId: req.attemptId ?? '', podUid: req.podUid,
    });
    switch (r.kind) {
      case 'fenced':
        throw ipamErrors.attemptReleased(req.attemptId!, req.handle, r.at);
      case 'new':
        // The row just inserted: the request, the pool (from the cache; pools are never renamed) and what the statement chose.
        return {
          kind: 'done', room: r.room,
          allocation: {
            handle: req.handle, address: r.address, family, pool: String(pool.name), blockCidr: r.blockCidr, node: req.node,
            podNamespace: req.podNamespace, podName: req.podName, containerId: req.containerId, owner: '', cluster: req.cluster ?? '',
            routingDomain: String(pool.routing_domain), podUid: req.podUid, allocatedAt: r.allocatedAt,
          },
        };
      case 'existing':
        return { kind: 'done', allocation: toAllocation(r.row), room: null };
      default:
        return r;
    }
  }

  /** The full path, one transaction; the caller retries on unique violations (a concurrent allocation of the same handle or address). */
  async function allocateOnce(req: AllocationRequest, pools: (Row & PoolRule)[]): Promise<Allocation[]> {
    return db.transaction(async (tx) => {
      if (req.attemptId) await enterAttempt(tx, req.handle, req.attemptId);
      const live = (await rows(tx, sql`SELECT ${ALLOCATION_COLUMNS} FROM ipam.allocations a ${ALLOCATION_JOINS}
        WHERE a.handle = ${req.handle} AND a.released_at IS NULL ORDER BY a.family`)).map(toAllocation);
      const asked = req.pool ?? req.namespacePool;
      const wanted = wantedFamilies(pools, req);
      const out: Allocation[] = [];
      for (const family of wanted) {
        const held = live.find((a) => a.family === family);
        if (held) {
          out.push(held);
          continue;
        }
        const candidates = pools.filter((p) => Number(p.family) === family);
        const specific = req.addresses.find((a) => a.family === family);
        let got: Allocation | null = null;
        if (specific) got = await allocateSpecific(tx, candidates, specific.text, req);
        else {
          if (candidates.length === 0) throw ipamErrors.noPoolForFamily(family);
          if (req.owner) got = await allocateSticky(tx, candidates, req);
          for (const pool of candidates) if (got || (got = await allocateInPool(tx, pool, req))) break;
        }
        // Throwing rolls back the whole transaction: a dual-stack pod gets both addresses or neither.
        if (!got) throw ipamErrors.exhausted(asked ? `pool ${asked}` : `any IPv${family} pool this pod may use`);
        out.push(got);
      }
      return out;
    });
  }

  /**
   * The attempt's row, inserted or found, stays locked until the transaction ends: a Release naming the attempt waits
   * for it and then sees what it allocated. A Release that came first fenced the row (ON CONFLICT reads the latest
   * committed row, whatever the snapshot): then this attempt allocates nothing.
   */
  async function enterAttempt(tx: Tx, handle: string, attemptId: string): Promise<void> {
    const [row] = await rows(tx, sql`INSERT INTO ipam.allocation_attempts (handle, attempt_id) VALUES (${handle}, ${attemptId})
      ON CONFLICT (handle, attempt_id) DO UPDATE SET created_at = ipam.allocation_attempts.created_at RETURNING fenced_at`);
    if (row?.fenced_at) throw ipamErrors.attemptReleased(attemptId, handle, new Date(row.fenced_at as string));
  }

  /** An exact address: in a pool the pod may use, not reserved, live or resting, in a block that is free or this node's. */
  async function allocateSpecific(tx: Tx, pools: Row[], address: string, req: AllocationRequest): Promise<Allocation> {
    // Every candidate pool is in the caller's routing domain: the address is looked for there only.
    const owning = pools.length === 0 ? undefined
      : (await rows(tx, sql`SELECT id FROM ipam.pools WHERE cidr >>= ${address}::inet AND routing_domain_id = ${pools[0]!.routing_domain_id}`))[0];
    const chosen = owning ? pools.find((p) => Number(p.id) === Number(owning.id)) : undefined;
    if (!chosen) throw ipamErrors.specificNotInPool(address);
    const domain = chosen.routing_domain_id;
    const [reserved] = await rows(tx, sql`SELECT host(first) AS first, host(last) AS last FROM ipam.reservations
      WHERE pool_id = ${chosen.id} AND first <= ${address}::inet AND last >= ${address}::inet LIMIT 1`);
    if (reserved) throw ipamErrors.specificReserved(address, `${reserved.first}..${reserved.last}`);
    const [holder] = await rows(tx, sql`SELECT handle FROM ipam.allocations WHERE address = ${address}::inet AND routing_domain_id = ${domain} AND released_at IS NULL`);
    if (holder) throw ipamErrors.specificInUse(address, String(holder.handle));
    const [resting] = await rows(tx, sql`SELECT owner, greatest(free_since + make_interval(secs => ${chosen.cooldown_seconds}),
        CASE WHEN owner <> ${req.owner} THEN hold_until END) AS until
      FROM ipam.free_addresses WHERE routing_domain_id = ${domain} AND address = ${address}::inet`);
    if (resting && resting.until && new Date(resting.until as string) > new Date() && !(req.owner && resting.owner === req.owner))
      throw ipamErrors.specificResting(address, new Date(resting.until as string));
    let [block] = await rows(tx, sql`SELECT id, node FROM ipam.blocks WHERE cidr >>= ${address}::inet AND routing_domain_id = ${domain} AND released_at IS NULL FOR UPDATE`);
    if (block && block.node !== req.node) throw ipamErrors.specificOtherNode(address, String(block.node));
    if (!block) {
      await tx.execute(sql`SELECT pg_advisory_xact_lock(hashtext('ipam.block_claims'))`);
      const cidr = sql`network(set_masklen(${address}::inet, ${chosen.block_prefix_length}))::cidr`;
      [block] = await rows(tx, sql`INSERT INTO ipam.blocks (pool_id, routing_domain_id, cidr, node, reserved)
        VALUES (${chosen.id}, ${domain}, ${cidr}, ${req.node}, ${reservedInBlock(cidr, sql`${chosen.id}::int`)}) RETURNING id, node, cidr::text AS cidr`);
      await adoptResting(tx, block!.id, String(block!.cidr), domain);
      await logClaim(tx, String(chosen.name), String(block!.cidr), req.node);
    }
    await tx.execute(sql`DELETE FROM ipam.free_addresses WHERE routing_domain_id = ${domain} AND address = ${address}::inet`);
    return insertAllocation(tx, chosen, block!.id, address, req);
  }

  /** The owner's own released address, if it is still held for it and its block is this node's. */
  async function allocateSticky(tx: Tx, pools: Row[], req: AllocationRequest): Promise<Allocation | null> {
    const ids = pools.map((p) => Number(p.id));
    const [f] = await rows(tx, sql`SELECT f.address, host(f.address) AS text, f.block_id, f.routing_domain_id, b.pool_id FROM ipam.free_addresses f
      JOIN ipam.blocks b ON b.id = f.block_id
      WHERE f.owner = ${req.owner} AND f.hold_until > now() AND b.node = ${req.node} AND b.released_at IS NULL
        AND b.pool_id IN (SELECT jsonb_array_elements_text(${JSON.stringify(ids)}::jsonb)::int)
      ORDER BY f.free_since DESC LIMIT 1 FOR UPDATE OF f`);
    if (!f) return null;
    await tx.execute(sql`DELETE FROM ipam.free_addresses WHERE routing_domain_id = ${f.routing_domain_id} AND address = ${f.address}`);
    return insertAllocation(tx, pools.find((p) => Number(p.id) === Number(f.pool_id))!, f.block_id, String(f.text), req);
  }

  async function allocateInPool(tx: Tx, pool: Row, req: AllocationRequest): Promise<Allocation | null> {
    const got = await allocateFromNodeBlocks(tx, pool, req);
    if (got) return got;
    // Block claims are serialized: this keeps block_events revisions in commit order (see DESIGN.md). After taking
    // the lock, look again before claiming: a concurrent claim for the node may have made room. Looking again also
    // locks such a block before the claim takes the node's usage row (blocks first, then usage rows, as every path
    // does; the other order deadlocked with the group-commit statement).
    await tx.execute(sql`SELECT pg_advisory_xact_lock(hashtext('ipam.block_claims'))`);
    const again = await allocateFromNodeBlocks(tx, pool, req);
    if (again) return again;
    // A claimed block can hold no allocatable address (a reservation covers it): claim the next one.
    for (let i = 0; i < 8; i++) {
      if (!(await claimBlock(tx, pool, req.node))) return null;
      const got = await allocateFromNodeBlocks(tx, pool, req);
      if (got) return got;
    }
    return null;
  }

  async function insertAllocation(tx: Tx, pool: Row, blockId: unknown, address: string, req: AllocationRequest): Promise<Allocation> {
    const [row] = await rows(tx, sql`WITH a AS (
        INSERT INTO ipam.allocations (handle, address, family, pool_id, block_id, routing_domain_id, cluster, node, pod_namespace, pod_name, container_id, owner, pod_uid)
        VALUES (${req.handle}, ${address}::inet, ${pool.family}, ${pool.id}, ${blockId}, ${pool.routing_domain_id}, ${req.cluster ?? ''}, ${req.node}, ${req.podNamespace}, ${req.podName}, ${req.containerId}, ${req.owner}, ${req.podUid})
        RETURNING *),
      counted AS (UPDATE ipam.blocks SET live_count = live_count + 1 WHERE id = ${blockId})
      SELECT ${ALLOCATION_COLUMNS} FROM a ${ALLOCATION_JOINS}`);
    return toAllocation(row!);
  }

  async function allocateFromNodeBlocks(tx: Tx, pool: Row, req: AllocationRequest): Promise<Allocation | null> {
    // Lock this node's blocks in the pool: allocations on one node serialize, nodes proceed in parallel.
    const blocks = await rows(tx, sql`SELECT id, cidr::text AS cidr, next_offset, masklen(cidr) AS len FROM ipam.blocks
      WHERE node = ${req.node} AND pool_id = ${pool.id} AND released_at IS NULL ORDER BY id FOR UPDATE`);
    for (const b of blocks) {
      const size = cidrSize(Number(pool.family) as Family, Number(b.len));
      // Usually one step; a reserved range is jumped over, an address taken as a specific one is stepped past.
      while (BigInt(b.next_offset as string | number) < size) {
        const [next] = await rows(tx, sql`UPDATE ipam.blocks SET next_offset = next_offset + 1 WHERE id = ${b.id}
          RETURNING next_offset, host(host(network(cidr))::inet + (next_offset - 1)) AS address`);
        b.next_offset = next!.next_offset;
        const [r] = await rows(tx, sql`SELECT (last - host(network(${b.cidr}::cidr))::inet) + 1 AS after FROM ipam.reservations
          WHERE pool_id = ${pool.id} AND first <= ${next!.address}::inet AND last >= ${next!.address}::inet ORDER BY last DESC LIMIT 1`);
        if (r) {
          const after = BigInt(r.after as string) < size ? BigInt(r.after as string) : size;
          await tx.execute(sql`UPDATE ipam.blocks SET next_offset = ${after.toString()}::bigint WHERE id = ${b.id}`);
          b.next_offset = after.toString();
          continue;
        }
        const [taken] = await rows(tx, sql`SELECT 1 FROM ipam.allocations WHERE address = ${next!.address}::inet AND routing_domain_id = ${pool.routing_domain_id} AND released_at IS NULL`);
        if (taken) continue;
        // Released since it was taken as an exact address: resting (cooling down, or held for an owner), so not yet.
        const [resting] = await rows(tx, sql`SELECT 1 FROM ipam.free_addresses WHERE routing_domain_id = ${pool.routing_domain_id} AND address = ${next!.address}::inet
          AND (free_since > now() - make_interval(secs => ${pool.cooldown_seconds}) OR hold_until > now())`);
        if (resting) continue;
        await tx.execute(sql`DELETE FROM ipam.free_addresses WHERE routing_domain_id = ${pool.routing_domain_id} AND address = ${next!.address}::inet`);
        return insertAllocation(tx, pool, b.id, String(next!.address), req);
      }
    }
    if (blocks.length === 0) return null;
    // Every block has handed out each address once: reuse the longest-free address past the cool-down.
    const [reused] = await rows(tx, sql`DELETE FROM ipam.free_addresses WHERE routing_domain_id = ${pool.routing_domain_id} AND address = (
        SELECT f.address FROM ipam.free_addresses f
        WHERE f.block_id = ANY(${sql.raw(`ARRAY[${blocks.map((b) => Number(b.id)).join(',')}]::int[]`)})
          AND f.free_since <= now() - make_interval(secs => ${pool.cooldown_seconds})
          AND (f.hold_until IS NULL OR f.hold_until <= now())
        ORDER BY f.free_since LIMIT 1)
      RETURNING host(address) AS address, block_id`);
    return reused ? insertAllocation(tx, pool, reused.block_id, String(reused.address), req) : null;
  }

  /** Claims the pool's lowest free block for the node by a gap search over existing blocks. Caller holds the claim lock. */
  async function claimBlock(tx: Tx, pool: Row, node: string): Promise<boolean> {
    const blockLen = Number(pool.block_prefix_length);
    if (Number(pool.max_blocks_per_node) > 0) {
      const [held] = await rows(tx, sql`SELECT count(*)::int AS n FROM ipam.blocks WHERE node = ${node} AND pool_id = ${pool.id} AND released_at IS NULL`);
      if (Number(held!.n) >= Number(pool.max_blocks_per_node)) return false;
    }
    // The lowest free block: the pool's claim hint if it is free, else the first block right after a live block at or
    // above the hint, walking the live blocks in address order (index order; it stops at the first gap). Every block
    // below the hint is claimed, so this is the pool's lowest free block, found in a few index probes however many
    // blocks the pool has.
    const [free] = await rows(tx, sql`WITH start AS (
        SELECT coalesce(claim_hint, set_masklen(host(network(cidr))::inet, ${blockLen})::cidr) AS h FROM ipam.pools WHERE id = ${pool.id})
      SELECT c::text AS cidr FROM (
        SELECT h AS c FROM start
        UNION ALL
        (SELECT set_masklen(host(broadcast(b.cidr))::inet + 1, ${blockLen})::cidr FROM ipam.blocks b, start
         WHERE b.routing_domain_id = ${pool.routing_domain_id} AND b.released_at IS NULL AND b.cidr >= start.h AND b.cidr <<= ${pool.cidr}::cidr
           AND host(broadcast(b.cidr)) <> host(broadcast(${pool.cidr}::cidr))
         ORDER BY b.cidr)
      ) cands
      WHERE c <<= ${pool.cidr}::cidr AND NOT EXISTS (SELECT 1 FROM ipam.blocks x WHERE x.routing_domain_id = ${pool.routing_domain_id} AND x.cidr = cands.c AND x.released_at IS NULL)
      LIMIT 1`);
    if (!free) return false;
    await tx.execute(sql`UPDATE ipam.pools SET claim_hint = ${free.cidr}::cidr WHERE id = ${pool.id}`);
    const [claimed] = await rows(tx, sql`INSERT INTO ipam.blocks (pool_id, routing_domain_id, cidr, node, reserved)
      VALUES (${pool.id}, ${pool.routing_domain_id}, ${free.cidr}::cidr, ${node}, ${reservedInBlock(sql`${free.cidr}::cidr`, sql`${pool.id}::int`)}) RETURNING id`);
    await adoptResting(tx, claimed!.id, String(free.cidr), pool.routing_domain_id);
    await logClaim(tx, String(pool.name), String(free.cidr), node);
    return true;
  }

  /**
   * A block released while some of its addresses still rested (GarbageCollect.release_blocks) left their rows: the
   * new claim of the block takes them over, so they finish their rest here (skipped as never-used offsets, reused once
   * rested) instead of being handed out at once. Usually none (one index range probe).
   */
  async function adoptResting(tx: Tx, blockId: unknown, cidr: string, domain: unknown): Promise<void> {
    await tx.execute(sql`UPDATE ipam.free_addresses SET block_id = ${blockId} WHERE routing_domain_id = ${domain}
      AND address BETWEEN host(network(${cidr}::cidr))::inet AND host(broadcast(${cidr}::cidr))::inet AND block_id <> ${blockId}`);
  }

  async function logClaim(tx: Tx, pool: string, cidr: string, node: string): Promise<void> {
    await tx.execute(sql`INSERT INTO ipam.block_events (revision, cidr, pool, node)
      VALUES (nextval('ipam.revision_seq'), ${cidr}::cidr, ${pool}, ${node})`);
    await tx.execute(sql`SELECT pg_notify(${BLOCKS_CHANNEL}, '')`);
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


  /** Releases the live allocations matched by `where`; each released address starts its cool-down. */
  async function releaseWhere(where: SQL): Promise<Allocation[]> {
    const r = await rows(db, sql`WITH rel AS (
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
      SELECT ${ALLOCATION_COLUMNS} FROM rel a ${ALLOCATION_JOINS} ORDER BY a.family`);
    return r.map(toAllocation);
  }

  /**
   * Releases the handle's live addresses. With an attempt id, first fences that attempt in a statement (and commit) of
   * its own: it waits for an Allocate of the attempt that is running to commit, so the release below (a new statement,
   * so a new snapshot) frees what that Allocate made; an Allocate of the attempt that has not started yet allocates
   * nothing. The fence commits alone so that no Release holds an attempt's row while it waits for a block.
   */
  async function release(handle: string, attemptId: string | null = null, only: ReleaseScope = {}): Promise<Allocation[]> {
    if (attemptId) {
      await db.execute(sql`INSERT INTO ipam.allocation_attempts (handle, attempt_id, fenced_at) VALUES (${handle}, ${attemptId}, now())
        ON CONFLICT (handle, attempt_id) DO UPDATE SET fenced_at = coalesce(ipam.allocation_attempts.fenced_at, now())`);
    }
    // The caller's limits are in the same statement as the release: a handle another node (or another pool) came to
    // hold after the authorization check looked is left alone, not freed.
    const node = only.node !== undefined ? sql` AND a.node = ${only.node}` : sql``;
    const pools = only.pools !== undefined
      ? sql` AND a.pool_id IN (SELECT id FROM ipam.pools WHERE name IN (SELECT jsonb_array_elements_text(${JSON.stringify(only.pools)}::jsonb)))` : sql``;
    // One statement: a deadlock on block counters with a concurrent release (it rolled back whole) is simply retried.
    return withRetry(() => releaseWhere(sql`a.handle = ${handle}${node}${pools}`));
  }

  /** The node and pools of the handle's live addresses (who may release it), or null when it holds none. */
  async function holderOfHandle(handle: string): Promise<{ node: string; pools: string[] } | null> {
    const r = await rows(db, sql`SELECT a.node, p.name AS pool FROM ipam.allocations a JOIN ipam.pools p ON p.id = a.pool_id
      WHERE a.handle = ${handle} AND a.released_at IS NULL ORDER BY a.family`);
    return r.length === 0 ? null : { node: String(r[0]!.node), pools: [...new Set(r.map((x) => String(x.pool)))] };
  }

  /** The node's live allocations: the live counters of its blocks (a few rows on blocks_node_idx, never allocation rows). */
  async function liveAllocationsOfNode(node: string): Promise<number> {
    const r = await rows(db, sql`SELECT coalesce(sum(live_count), 0)::bigint AS n FROM ipam.blocks WHERE node = ${node} AND released_at IS NULL`);
    return Number(r[0]?.n ?? 0);
  }

  /** Drops attempt rows: fenced ones after `retentionSeconds`, others after ten minutes (they matter only while their Allocate runs). */
  async function pruneAttempts(retentionSeconds: number): Promise<number> {
    const r = await db.execute(sql`DELETE FROM ipam.allocation_attempts
      WHERE (fenced_at IS NULL AND created_at < now() - interval '10 minutes') OR fenced_at < now() - make_interval(secs => ${retentionSeconds}::int)`);
    return r.rowCount ?? 0;
  }

  /** Releases the node's live allocations whose handles are not valid. One statement: a valid handle is never touched. */
  async function garbageCollect(node: string, validHandles: string[], allocatedBefore?: Date): Promise<Allocation[]> {
    const before = allocatedBefore ? sql` AND a.allocated_at < ${allocatedBefore.toISOString()}::timestamptz` : sql``;
    return withRetry(() => releaseWhere(sql`a.node = ${node} AND a.handle NOT IN (SELECT jsonb_array_elements_text(${JSON.stringify(validHandles)}::jsonb))${before}`));
  }

  /** Releases the node's live allocations made before `before` (the node departed then; later ones are a new life's). */
  async function releaseNodeAllocationsBefore(node: string, before: Date): Promise<Allocation[]> {
    return withRetry(() => releaseWhere(sql`a.node = ${node} AND a.allocated_at < ${before.toISOString()}::timestamptz`));
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
    const r = await rows(db, sql`SELECT ${ALLOCATION_COLUMNS}, a.released_at, a.allocated_at::text AS at_key, a.id AS id_key
      FROM ipam.allocations a ${ALLOCATION_JOINS}
      WHERE ${where} AND (${aAt}::timestamptz IS NULL OR (a.allocated_at, a.id) < (${aAt}::timestamptz, ${aId}::bigint))
      ORDER BY a.allocated_at DESC, a.id DESC LIMIT ${q.limit + 1}`);
    const items = r.slice(0, q.limit).map((x) => ({ allocation: toAllocation(x), releasedAt: x.released_at ? new Date(x.released_at as string) : null }));
    const last = r[q.limit - 1];
    return { items, next: r.length > q.limit && last ? [String(last.at_key), Number(last.id_key)] : null };
  }

  /**
   * Per node from its usage row (blocks, live, reserved: kept by triggers on blocks, see schema.ts), cooling from
   * the addresses released within the cool-down or held for an owner (each on its own index, so expired resting
   * addresses are never read). Nothing scans live allocations or a pool's blocks: a pool with a million live
   * allocations on 15,000 blocks reads its 500 node rows. Blocks are listed only when asked for.
   *
   * With `page`, at most `limit` node and block rows in all, after the key `after` ([pool, 0 for nodes or 1 for
   * blocks, the last node or block CIDR listed]): each pool's nodes then its blocks, pools in name order, each page
   * listing the pools its rows belong to with their totals (counted when the page is read). `next` is the key to
   * continue from, null on the last page.
   */
  type UtilizationKey = [pool: string, section: 0 | 1, key: string];
  async function utilization(poolName: string | null, includeBlocks: boolean, page: { after: UtilizationKey | null; limit: number } | null = null): Promise<{ pools: PoolUsage[]; next: UtilizationKey | null }> {
    const after = page?.after ?? null;
    const pools = await rows(db, sql`SELECT ${POOL_COLUMNS}, masklen(cidr) AS len,
        (SELECT coalesce(json_agg(json_build_array(host(r.first), host(r.last))), '[]') FROM ipam.reservations r WHERE r.pool_id = pools.id) AS reservations
      FROM ipam.pools WHERE (${poolName}::text IS NULL OR name = ${poolName}) AND (${after?.[0] ?? null}::text IS NULL OR name >= ${after?.[0] ?? null})
      ORDER BY name`);
    if (poolName && pools.length === 0 && !after) throw ipamErrors.poolNotFound(poolName);
    const counts = (total: bigint, allocated: number, coolingDown: number, reserved: bigint): UsageCounts =>
      ({ total, allocated, coolingDown, reserved, free: total - BigInt(allocated + coolingDown) - reserved });
    /** One pool's usage: its nodes after `nodesAfter` (false: none), its blocks after `blocksAfter`, at most `limit` rows. */
    const usageOf = async (p: Record<string, unknown>, nodesAfter: string | null | false, blocksAfter: string | null, limit: number | null) => {
      const family = Number(p.family) as Family;
      const blockSize = cidrSize(family, Number(p.block_prefix_length));
      const cutoff = sql`now() - make_interval(secs => ${p.cooldown_seconds}::int)`;
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
        rows(db, sql`WITH cooling AS (${cooling})
          SELECT (SELECT coalesce(sum(live), 0) FROM ipam.node_usage WHERE pool_id = ${p.id} AND blocks > 0) AS live,
            (SELECT coalesce(sum(n), 0) FROM cooling) AS cooling`),
        nodesAfter === false ? Promise.resolve([]) : rows(db, sql`WITH cooling AS (${cooling})
          SELECT u.node, u.blocks, u.live, u.reserved, coalesce(c.n, 0) AS cooling FROM ipam.node_usage u
            LEFT JOIN (SELECT node, sum(n) AS n FROM cooling GROUP BY node) c ON c.node = u.node
          WHERE u.pool_id = ${p.id} AND u.blocks > 0 AND (${nodesAfter}::text IS NULL OR u.node > ${nodesAfter}) ORDER BY u.node ${cap}`),
      ]);
      let left = limit === null ? null : limit - Math.min(nodeRows.length, limit);
      let next: UtilizationKey | null = null;
      if (limit !== null && nodeRows.length > limit) {
        nodeRows.length = limit;
        next = [String(p.name), 0, String(nodeRows[limit - 1]!.node)];
      }
      // A page that is full after the nodes continues with the blocks (a pool with node rows has blocks).
      if (includeBlocks && !next && left === 0) next = [String(p.name), 1, ''];
      const blockRows = !includeBlocks || next ? []
        : await rows(db, sql`WITH cooling AS (${cooling})
            SELECT b.cidr::text AS cidr, b.node, b.live_count, b.reserved, coalesce(c.n, 0) AS cooling FROM ipam.blocks b
              LEFT JOIN cooling c ON c.block_id = b.id
            WHERE b.pool_id = ${p.id} AND b.released_at IS NULL AND (${blocksAfter}::cidr IS NULL OR b.cidr > ${blocksAfter}::cidr)
            ORDER BY b.cidr ${left === null ? sql`` : sql`LIMIT ${left + 1}`}`);
      if (left !== null && blockRows.length > left) {
        blockRows.length = left;
        next = [String(p.name), 1, String(blockRows[left - 1]!.cidr)];
      }
      if (left !== null) left -= blockRows.length;
      const nodes = nodeRows.map((n) => ({
        node: String(n.node),
        counts: counts(blockSize * BigInt(n.blocks as string | number), Number(n.live), Number(n.cooling), BigInt(n.reserved as string)),
      }));
      const blocks = blockRows.map((b) => ({
        cidr: String(b.cidr), node: String(b.node), counts: counts(blockSize, Number(b.live_count), Number(b.cooling), BigInt(b.reserved as number)),
      }));
      // Reserved in the whole pool, in 128-bit arithmetic (an IPv6 reservation can pass 2^63).
      let poolReserved = 0n;
      for (const [first, last] of p.reservations as [string, string][]) poolReserved += parseAddress(last).value - parseAddress(first).value + 1n;
      const usage: PoolUsage = {
        pool: String(p.name), cidr: String(p.cidr),
        counts: counts(cidrSize(family, Number(p.len)), Number(totals!.live), Number(totals!.cooling), poolReserved),
        blocks,
        nodes,
      };
      return { usage, next, left };
    };
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

  /** A consistent snapshot of all affinities and the revision it reflects. */
  async function affinitySnapshot(): Promise<AffinityChange> {
    return db.transaction(
      async (tx) => {
        const [rev] = await rows(tx, sql`SELECT coalesce(max(revision), 0) AS revision FROM ipam.block_events`);
        const blocks = await rows(tx, sql`SELECT b.cidr::text AS cidr, p.name AS pool, b.node FROM ipam.blocks b
          JOIN ipam.pools p ON p.id = b.pool_id WHERE b.released_at IS NULL ORDER BY b.cidr`);
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

  /**
   * Returns empty blocks to their pools: no live allocation, claimed longer ago than the grace period, and no address
   * freed within it (so nothing is still cooling down or held for an owner). The block's row stays for history;
   * its free list goes, and the withdrawal is logged like a claim (node null), so routes follow.
   */
  async function releaseEmptyBlocks(graceSeconds: number): Promise<BlockAffinity[]> {
    return db.transaction(async (tx) => {
      await tx.execute(sql`SELECT pg_advisory_xact_lock(hashtext('ipam.block_claims'))`);
      return releaseBlocks(tx, sql`b.claimed_at < now() - make_interval(secs => ${graceSeconds})
          AND NOT EXISTS (SELECT 1 FROM ipam.free_addresses f WHERE f.block_id = b.id
                            AND (f.free_since > now() - make_interval(secs => greatest(${graceSeconds}, (SELECT cooldown_seconds FROM ipam.pools WHERE id = b.pool_id)))
                                 OR f.hold_until > now()))`);
    });
  }

  /**
   * Gives the node's blocks that hold no live allocation back to their pools at once (GarbageCollect.release_blocks:
   * the node is gone). Addresses still resting keep their rows: the next claim of the block adopts them (adoptResting).
   */
  async function releaseNodeBlocks(node: string): Promise<BlockAffinity[]> {
    return withRetry(() => db.transaction(async (tx) => {
      await tx.execute(sql`SELECT pg_advisory_xact_lock(hashtext('ipam.block_claims'))`);
      return releaseBlocks(tx, sql`b.node = ${node}`);
    }));
  }

  /**
   * Releases the live, empty blocks matched by `where` (alias b). The caller holds the claim lock. The row stays for
   * history; its resting addresses whose rest is over go, the withdrawal is logged like a claim (node null), so routes
   * follow, and the pool's claim hint moves down to it.
   */
  async function releaseBlocks(tx: Tx, where: SQL): Promise<BlockAffinity[]> {
    // Row locks: a concurrent allocation that committed into the block makes it fail live_count = 0 on the re-check.
    const released = await rows(tx, sql`UPDATE ipam.blocks b SET released_at = now()
      WHERE b.released_at IS NULL AND b.live_count = 0
        AND NOT EXISTS (SELECT 1 FROM ipam.allocations a WHERE a.address BETWEEN host(network(b.cidr))::inet AND host(broadcast(b.cidr))::inet
                          AND a.routing_domain_id = b.routing_domain_id AND a.released_at IS NULL)
        AND ${where}
      RETURNING b.id, b.cidr::text AS cidr, b.node, (SELECT name FROM ipam.pools WHERE id = b.pool_id) AS pool`);
    if (released.length === 0) return [];
    const ids = sql`(SELECT jsonb_array_elements_text(${JSON.stringify(released.map((b) => Number(b.id)))}::jsonb)::int)`;
    // A released block is free again: the next claim in its pool looks from there.
    await tx.execute(sql`UPDATE ipam.pools p SET claim_hint = least(p.claim_hint, r.low)
      FROM (SELECT b.pool_id, min(b.cidr) AS low FROM ipam.blocks b WHERE b.id IN ${ids} GROUP BY b.pool_id) r
      WHERE p.id = r.pool_id AND p.claim_hint IS NOT NULL`);
    await tx.execute(sql`DELETE FROM ipam.free_addresses f USING ipam.blocks b, ipam.pools p
      WHERE f.block_id IN ${ids} AND b.id = f.block_id AND p.id = b.pool_id
        AND f.free_since <= now() - make_interval(secs => p.cooldown_seconds) AND (f.hold_until IS NULL OR f.hold_until <= now())`);
    for (const b of released) {
      await tx.execute(sql`INSERT INTO ipam.block_events (revision, cidr, pool, node) VALUES (nextval('ipam.revision_seq'), ${b.cidr}::cidr, ${b.pool}, NULL)`);
    }
    await tx.execute(sql`SELECT pg_notify(${BLOCKS_CHANNEL}, '')`);
    return released.map((b) => ({ cidr: String(b.cidr), pool: String(b.pool), node: String(b.node) }));
  }

  /** Nodes that hold blocks or live allocations. */
  async function nodesHoldingAddresses(): Promise<string[]> {
    return (await rows(db, sql`SELECT DISTINCT node FROM ipam.blocks WHERE released_at IS NULL ORDER BY node`)).map((r) => String(r.node));
  }

  /** Each invariant as a query that returns its violations (at most 20 each). */
  const CHECKS: { kind: string; query: SQL }[] = [
    { kind: 'address_live_twice', query: sql`SELECT host(address) || ' is live ' || count(*) || ' times in one routing domain' AS detail FROM ipam.allocations WHERE released_at IS NULL GROUP BY routing_domain_id, address HAVING count(*) > 1 LIMIT 20` },
    { kind: 'allocation_outside_block', query: sql`SELECT a.handle || ' holds ' || host(a.address) || ' outside its block ' || b.cidr AS detail FROM ipam.allocations a JOIN ipam.blocks b ON b.id = a.block_id WHERE a.released_at IS NULL AND NOT a.address <<= b.cidr LIMIT 20` },
    { kind: 'allocation_node_mismatch', query: sql`SELECT a.handle || ' on node ' || a.node || ' holds ' || host(a.address) || ' in block ' || b.cidr || ' of node ' || b.node AS detail FROM ipam.allocations a JOIN ipam.blocks b ON b.id = a.block_id WHERE a.released_at IS NULL AND a.node <> b.node LIMIT 20` },
    { kind: 'routing_domain_mismatch', query: sql`SELECT a.handle || ' holds ' || host(a.address) || ' in another routing domain than its block ' || b.cidr AS detail FROM ipam.allocations a JOIN ipam.blocks b ON b.id = a.block_id JOIN ipam.pools p ON p.id = b.pool_id WHERE a.released_at IS NULL AND (a.routing_domain_id <> b.routing_domain_id OR b.routing_domain_id <> p.routing_domain_id) LIMIT 20` },
    { kind: 'block_outside_pool', query: sql`SELECT 'block ' || b.cidr || ' lies outside pool ' || p.name AS detail FROM ipam.blocks b JOIN ipam.pools p ON p.id = b.pool_id WHERE NOT b.cidr <<= p.cidr LIMIT 20` },
    { kind: 'live_count_mismatch', query: sql`SELECT 'block ' || b.cidr || ' counts ' || b.live_count || ' live, holds ' || (SELECT count(*) FROM ipam.allocations a WHERE a.address BETWEEN host(network(b.cidr))::inet AND host(broadcast(b.cidr))::inet AND a.routing_domain_id = b.routing_domain_id AND a.released_at IS NULL) AS detail FROM ipam.blocks b WHERE b.released_at IS NULL AND b.live_count <> (SELECT count(*) FROM ipam.allocations a WHERE a.address BETWEEN host(network(b.cidr))::inet AND host(broadcast(b.cidr))::inet AND a.routing_domain_id = b.routing_domain_id AND a.released_at IS NULL) LIMIT 20` },
    { kind: 'reserved_count_mismatch', query: sql`SELECT 'block ' || b.cidr || ' counts ' || b.reserved || ' reserved, holds ' || x.n AS detail FROM ipam.blocks b
        CROSS JOIN LATERAL (SELECT ${reservedInBlock(sql`b.cidr`, sql`b.pool_id`)} AS n) x WHERE b.released_at IS NULL AND b.reserved <> x.n LIMIT 20` },
    // The per-node counters utilization reads, recounted from the rows: live blocks and their reserved addresses, live allocations.
    { kind: 'usage_count_mismatch', query: sql`WITH b AS (SELECT pool_id, node, count(*) AS blocks, sum(reserved) AS reserved FROM ipam.blocks WHERE released_at IS NULL GROUP BY pool_id, node),
        a AS (SELECT pool_id, node, count(*) AS live FROM ipam.allocations WHERE released_at IS NULL GROUP BY pool_id, node)
      SELECT 'pool ' || p.name || ', node ' || k.node || ': counts ' || coalesce(u.blocks, 0) || ' blocks, ' || coalesce(u.live, 0) || ' live, ' || coalesce(u.reserved, 0)
          || ' reserved; holds ' || coalesce(b.blocks, 0) || ' blocks, ' || coalesce(a.live, 0) || ' live, ' || coalesce(b.reserved, 0) || ' reserved' AS detail
      FROM (SELECT pool_id, node FROM ipam.node_usage UNION SELECT pool_id, node FROM b UNION SELECT pool_id, node FROM a) k
        LEFT JOIN ipam.node_usage u ON u.pool_id = k.pool_id AND u.node = k.node LEFT JOIN b ON b.pool_id = k.pool_id AND b.node = k.node
        LEFT JOIN a ON a.pool_id = k.pool_id AND a.node = k.node JOIN ipam.pools p ON p.id = k.pool_id
      WHERE coalesce(u.blocks, 0) <> coalesce(b.blocks, 0) OR coalesce(u.live, 0) <> coalesce(a.live, 0) OR coalesce(u.reserved, 0) <> coalesce(b.reserved, 0)
      ORDER BY p.name, k.node LIMIT 20` },
    { kind: 'free_but_live', query: sql`SELECT host(f.address) || ' is listed free but held by ' || a.handle AS detail FROM ipam.free_addresses f JOIN ipam.allocations a ON a.address = f.address AND a.routing_domain_id = f.routing_domain_id AND a.released_at IS NULL LIMIT 20` },
    { kind: 'allocation_in_reservation', query: sql`SELECT a.handle || ' holds reserved ' || host(a.address) AS detail FROM ipam.allocations a JOIN ipam.reservations r ON r.pool_id = a.pool_id AND a.address >= r.first AND a.address <= r.last WHERE a.released_at IS NULL AND a.allocated_at > r.created_at LIMIT 20` },
    { kind: 'release_before_allocation', query: sql`SELECT a.handle || ' released before it was allocated' AS detail FROM ipam.allocations a WHERE a.released_at < a.allocated_at LIMIT 20` },
  ];

  async function checkConsistency(): Promise<{ problems: { kind: string; detail: string }[]; checks: number }> {
    const problems: { kind: string; detail: string }[] = [];
    for (const c of CHECKS) for (const r of await rows(db, c.query)) problems.push({ kind: c.kind, detail: String(r.detail) });
    return { problems, checks: CHECKS.length };
  }

  return withDatabaseErrors('ipam', {
    releaseEmptyBlocks, nodesHoldingAddresses, pruneAttempts,
    checkConsistency,
    createPool, listPools, updatePool, createReservation, listReservations, deleteReservation, listAllocations, allocate, release, holderOfHandle, liveAllocationsOfNode,
    garbageCollect, releaseNodeAllocationsBefore, releaseNodeBlocks, setNodeLabels, setNamespaceLabels, history, utilization, affinitySnapshot, affinityChangesSince,
  });
}

export type IpamRepository = ReturnType<typeof createIpamRepository>;
