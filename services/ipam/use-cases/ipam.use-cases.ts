import type { IpamReports, IpamStore, ReleaseScope } from '../domain/ipam-store.js';
import type { PageKey } from '../domain/paging.js';
import type { PoolSpec } from '../domain/pool.js';
import type { Allocation, PoolChanges } from '../domain/types.js';
import { createAllocateUseCase } from './allocate.js';
import { createPoolCatalogCache } from './pool-catalog.js';
import { withRetry } from './retry.js';

export { BLOCKS_CHANNEL } from '../domain/ipam-store.js';

/**
 * IPAM's use cases, between the gRPC adapter (rpc/) and the store: the decisions (pool caching, the allocation
 * paths, block prefetch), the order of a transaction's steps, and retries after lost races. The store (domain/
 * ipam-store.ts) does each step; the reports pass through.
 */
export interface IpamUseCaseOptions {
  /** Background work that failed (pool reads ahead of expiry, block prefetch): logged, never thrown. */
  onBackgroundError?: (what: string, err: unknown) => void;
  /** The clock rests are compared with (tests move it). */
  now?: () => number;
}

export function createIpamUseCases(store: IpamStore, reports: IpamReports, opts: IpamUseCaseOptions = {}) {
  const onBackgroundError = opts.onBackgroundError ?? (() => {});
  const pools = createPoolCatalogCache(store, { onBackgroundError });
  const { allocate, prefetchesSettled } = createAllocateUseCase(store, pools, onBackgroundError, opts.now ?? Date.now);

  return {
    async createPool(spec: PoolSpec) {
      try {
        return await store.createPool(spec);
      } finally {
        pools.invalidate();
      }
    },
    listPools: store.listPools,
    /** Applies rule changes if the etag is current (optimistic concurrency: a stale etag changes nothing). */
    updatePool(name: string, etag: string, changes: PoolChanges) {
      pools.invalidate();
      return store.updatePool(name, etag, changes);
    },
    // Rare, and they take the claim lock after the pool row, then blocks: a deadlock with an allocation is retried.
    createReservation: (pool: string, first: string, last: string, reason: string) =>
      withRetry(() => store.createReservation(pool, first, last, reason)),
    listReservations: store.listReservations,
    deleteReservation: (pool: string, id: number) => withRetry(() => store.deleteReservation(pool, id)),
    setNodeLabels: store.setNodeLabels,
    setNamespaceLabels: store.setNamespaceLabels,
    allocate,
    /**
     * Releases the handle's live addresses. With an attempt id, first fences that attempt in a commit of its own (so
     * an Allocate of it that runs now is released below, and one that comes later allocates nothing).
     */
    async release(handle: string, attemptId: string | null = null, only: ReleaseScope = {}): Promise<Allocation[]> {
      if (attemptId) await store.fenceAttempt(handle, attemptId);
      return withRetry(() => store.releaseHandle(handle, only));
    },
    /** Releases the node's live allocations whose handles are not valid. One statement: a valid handle is never touched. */
    garbageCollect: (node: string, validHandles: string[], allocatedBefore?: Date) =>
      withRetry(() => store.releaseInvalidHandles(node, validHandles, allocatedBefore)),
    /** Releases the node's live allocations made before `before` (the node departed then; later ones are a new life's). */
    releaseNodeAllocationsBefore: (node: string, before: Date) =>
      withRetry(() => store.releaseNodeAllocationsBefore(node, before)),
    releaseNodeBlocks: (node: string) => withRetry(() => store.releaseNodeBlocks(node)),
    releaseEmptyBlocks: store.releaseEmptyBlocks,
    pruneAttempts: store.pruneAttempts,
    nodesHoldingAddresses: store.nodesHoldingAddresses,
    listAllocations: (
      filter: { pool?: string; node?: string },
      page: { after: PageKey | null; limit: number } = { after: null, limit: 1_000_000 },
    ) => store.listAllocations(filter, page),
    holderOfHandle: store.holderOfHandle,
    liveAllocationsOfNode: store.liveAllocationsOfNode,
    affinitySnapshot: store.affinitySnapshot,
    affinityChangesSince: store.affinityChangesSince,
    history: (q: Parameters<IpamReports['history']>[0], after: PageKey | null = null) => reports.history(q, after),
    utilization: (
      pool: string | null,
      includeBlocks: boolean,
      page: Parameters<IpamReports['utilization']>[2] = null,
    ) => reports.utilization(pool, includeBlocks, page),
    checkConsistency: reports.checkConsistency,
    /** Resolves when the block prefetches started so far have ended (tests). */
    prefetchesSettled,
  };
}

export type IpamUseCases = ReturnType<typeof createIpamUseCases>;
