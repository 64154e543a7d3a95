import type { Family } from '../../../lib/net/ip.js';
import type { AllocationTransaction, IpamStore, PoolRecord } from '../domain/ipam-store.js';
import { ipamErrors } from '../domain/ipam.errors.js';
import type { AllocationRequest } from '../domain/pool.js';
import { selectPools } from '../domain/pool-selection.js';
import type { Allocation } from '../domain/types.js';
import { blockRunningLow, createBlockPrefetch } from './block-prefetch.js';
import type { PoolCatalogCache } from './pool-catalog.js';
import { withRetry } from './retry.js';

/** How often the one-statement path is asked again after 'skipped' before the full path takes over. */
const FAST_TRIES = 32;
/** Blocks claimed in one allocation when each claimed block turns out to hold nothing allocatable (reservations). */
const CLAIMS_PER_ALLOCATION = 8;

/** The families an allocation gets: the requested pool's, else the requested families, else every family with a pool. */
export function wantedFamilies(pools: PoolRecord[], req: AllocationRequest): Family[] {
  const asked = req.pool ?? req.namespacePool;
  const available = [...new Set(pools.map((p) => p.family))].sort();
  return asked
    ? available
    : (req.families ?? [...new Set([...available, ...req.addresses.map((a) => a.family)])].sort());
}

/**
 * Allocate: which pools and families, the one-statement path for the common case, else the full path (one
 * transaction, retried after a lost race), and the prefetch of a node's next block. See DESIGN.md, Allocate.
 */
export function createAllocateUseCase(
  store: IpamStore,
  pools: PoolCatalogCache,
  onBackgroundError: (what: string, err: unknown) => void,
  now: () => number = Date.now,
) {
  const prefetch = createBlockPrefetch(store, onBackgroundError);
  /** Per `<pool id>/<node>`: the end of the last full-path allocation queued in this replica (never rejects). */
  const fullPathOfNode = new Map<string, Promise<void>>();
  /** `<pool id>/<node>` seen holding blocks when the fast path found no room (at most 100,000, then forgotten). */
  const nodesWithBlocks = new Set<string>();

  async function allocate(req: AllocationRequest): Promise<Allocation[]> {
    let all = await pools.poolsFor(req.cluster);
    const named = req.pool ?? req.namespacePool;
    if (named && !all.some((p) => p.name === named)) all = await pools.poolsFor(req.cluster, true);
    if (all.length === 0) throw ipamErrors.noPools();
    req = await withStoredLabels(all, req);
    const usable = selectPools(all, { ...req, namespace: req.podNamespace });
    const families = wantedFamilies(usable, req);
    // The common case, one family from a block with never-used addresses: one statement, one round trip.
    if (families.length === 1 && req.addresses.length === 0 && !req.owner) {
      const first = usable.find((p) => p.family === families[0]);
      if (first) {
        const fast = await allocateFast(first, req);
        if (fast) return fast;
        // No room on the node's blocks: after the node's full path under way (a claim, usually) try once more.
        const key = `${first.id}/${req.node}`;
        const running = fullPathOfNode.get(key);
        if (running) {
          await running;
          const again = await allocateFast(first, req);
          if (again) return again;
        }
        return oneFullPathPerNode(key, async () => {
          if (await claimFirstBlock(first, req.node)) {
            const fast = await allocateFast(first, req);
            if (fast) return fast;
          }
          return withRetry(() => allocateOnce(req, usable));
        });
      }
    }
    return withRetry(() => allocateOnce(req, usable));
  }

  async function allocateFast(pool: PoolRecord, req: AllocationRequest): Promise<Allocation[] | null> {
    for (let i = 0; i < FAST_TRIES; i++) {
      const r = await store.allocateFast(pool, req);
      if (r.kind === 'fenced') throw ipamErrors.attemptReleased(req.attemptId!, req.handle, r.at);
      if (r.kind === 'existing') return [r.allocation];
      if (r.kind === 'new') {
        if (blockRunningLow(pool, r.room)) prefetch.request(pool, req.node);
        return [r.allocation];
      }
      if (r.kind === 'none') break;
    }
    return null;
  }

  /**
   * A node's first block in a pool, claimed in a transaction of its own: the claim lock is then held for the claim's
   * few statements, not also for an allocation's, and every node's first claim passes through it. True when the node
   * has a block now. A node seen with blocks is remembered (it reuses released addresses on the full path, which
   * claims when it must), so only a node new to this replica pays the look.
   */
  async function claimFirstBlock(pool: PoolRecord, node: string): Promise<boolean> {
    const key = `${pool.id}/${node}`;
    if (nodesWithBlocks.has(key)) return false;
    const claimed = await withRetry(() =>
      store.transaction(async (tx) => {
        if ((await tx.nodeBlockUsage(pool, node)).blocks > 0) return 'had';
        await tx.lockClaims();
        if ((await tx.nodeBlockUsage(pool, node)).blocks > 0) return 'claimed';
        return (await tx.claimBlock(pool, node)) ? 'claimed' : 'none';
      }),
    );
    if (claimed === 'had') {
      if (nodesWithBlocks.size >= 100_000) nodesWithBlocks.clear();
      nodesWithBlocks.add(key);
    }
    return claimed === 'claimed';
  }

  /**
   * The full path of one (pool, node) one at a time in this replica. A new node's first pods arrive together and all
   * find no room: each would hold a database session while it waits for the node's blocks and the claim lock, and a
   * few such nodes took every session of the pool (`ipam.database_unavailable`). Here they wait without one, and once
   * the first has claimed a block the others take the fast path.
   */
  async function oneFullPathPerNode<T>(key: string, run: () => Promise<T>): Promise<T> {
    const mine = (fullPathOfNode.get(key) ?? Promise.resolve()).then(run);
    const tail = mine.then(
      () => {},
      () => {},
    );
    fullPathOfNode.set(key, tail);
    try {
      return await mine;
    } finally {
      if (fullPathOfNode.get(key) === tail) fullPathOfNode.delete(key);
    }
  }

  /**
   * The request with the labels stored by SetNodeLabels / SetNamespaceLabels in place of empty ones; labels in the
   * request win. Read only when a pool of the domain has a selector of that kind: the common allocation, in a domain
   * without selectors, pays no round trip for them.
   */
  async function withStoredLabels(all: PoolRecord[], req: AllocationRequest): Promise<AllocationRequest> {
    const needNode = Object.keys(req.nodeLabels).length === 0 && all.some((p) => p.nodeSelector !== '');
    const needNamespace =
      Object.keys(req.namespaceLabels).length === 0 &&
      req.podNamespace !== '' &&
      all.some((p) => p.namespaceSelector !== '');
    if (!needNode && !needNamespace) return req;
    const stored = await store.storedLabels({
      node: needNode ? req.node : null,
      cluster: req.cluster ?? '',
      namespace: needNamespace ? req.podNamespace : null,
    });
    return {
      ...req,
      nodeLabels: needNode ? (stored.node ?? {}) : req.nodeLabels,
      namespaceLabels: needNamespace ? (stored.namespace ?? {}) : req.namespaceLabels,
    };
  }

  /** The full path, one transaction: a family that gets nothing throws and rolls back every family's allocation. */
  function allocateOnce(req: AllocationRequest, usable: PoolRecord[]): Promise<Allocation[]> {
    return store.transaction(async (tx) => {
      if (req.attemptId) {
        const fenced = await tx.enterAttempt(req.handle, req.attemptId);
        if (fenced) throw ipamErrors.attemptReleased(req.attemptId, req.handle, fenced);
      }
      // A retried ADD gets the same addresses.
      const live = await tx.liveOfHandle(req.handle);
      const asked = req.pool ?? req.namespacePool;
      const out: Allocation[] = [];
      for (const family of wantedFamilies(usable, req)) {
        const held = live.find((a) => a.family === family);
        if (held) {
          out.push(held);
          continue;
        }
        const candidates = usable.filter((p) => p.family === family);
        const specific = req.addresses.find((a) => a.family === family);
        let got: Allocation | null = null;
        if (specific) got = await allocateAddress(tx, candidates, specific.text, req);
        else {
          if (candidates.length === 0) throw ipamErrors.noPoolForFamily(family);
          if (req.owner) got = await tx.allocateHeld(candidates, req);
          for (const pool of candidates) if (got || (got = await allocateInPool(tx, pool, req))) break;
        }
        if (!got) throw ipamErrors.exhausted(asked ? `pool ${asked}` : `any IPv${family} pool this pod may use`);
        out.push(got);
      }
      return out;
    });
  }

  /** An exact address: in a pool the pod may use, not reserved, live or resting, in a block that is free or this node's. */
  async function allocateAddress(
    tx: AllocationTransaction,
    candidates: PoolRecord[],
    address: string,
    req: AllocationRequest,
  ): Promise<Allocation> {
    // Every candidate pool is in the caller's routing domain: the address is looked for there only.
    const owning = candidates.length === 0 ? null : await tx.poolContaining(candidates[0]!.routingDomainId, address);
    const pool = owning === null ? undefined : candidates.find((p) => p.id === owning);
    if (!pool) throw ipamErrors.specificNotInPool(address);
    const reserved = await tx.reservationCovering(pool.id, address);
    if (reserved) throw ipamErrors.specificReserved(address, `${reserved.first}..${reserved.last}`);
    const holder = await tx.liveHolder(pool.routingDomainId, address);
    if (holder !== null) throw ipamErrors.specificInUse(address, holder);
    const resting = await tx.resting(pool, address, req.owner);
    if (resting?.until && resting.until.getTime() > now() && !(req.owner && resting.owner === req.owner))
      throw ipamErrors.specificResting(address, resting.until);
    // A block's routes point at its node: the address's block must be this node's, or unclaimed (then it is claimed).
    const block = await tx.lockBlockAt(pool.routingDomainId, address);
    if (block && block.node !== req.node) throw ipamErrors.specificOtherNode(address, block.node);
    let blockId = block?.id;
    if (blockId === undefined) {
      await tx.lockClaims();
      blockId = await tx.claimBlockAt(pool, address, req.node);
    }
    return tx.takeAddress(pool, blockId, address, req);
  }

  async function allocateInPool(
    tx: AllocationTransaction,
    pool: PoolRecord,
    req: AllocationRequest,
  ): Promise<Allocation | null> {
    const got = await tx.allocateFromNodeBlocks(pool, req);
    if (got) return got;
    // Block claims are serialized: this keeps block_events revisions in commit order (see DESIGN.md). After taking
    // the lock, look again before claiming: a concurrent claim for the node may have made room. Looking again also
    // locks such a block before the claim takes the node's usage row (blocks first, then usage rows, as every path
    // does; the other order deadlocked with the group-commit statement).
    await tx.lockClaims();
    const again = await tx.allocateFromNodeBlocks(pool, req);
    if (again) return again;
    // A claimed block can hold no allocatable address (a reservation covers it): claim the next one.
    for (let i = 0; i < CLAIMS_PER_ALLOCATION; i++) {
      if (!(await tx.claimBlock(pool, req.node))) return null;
      const next = await tx.allocateFromNodeBlocks(pool, req);
      if (next) return next;
    }
    return null;
  }

  return { allocate, prefetchesSettled: prefetch.settled };
}
