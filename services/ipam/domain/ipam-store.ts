import type { Page, PageKey } from './paging.js';
import type { AllocationRequest, PoolSpec } from './pool.js';
import type {
  AffinityChange,
  Allocation,
  BlockAffinity,
  HistoryEntry,
  HistoryQuery,
  Pool,
  PoolChanges,
  PoolUsage,
  Reservation,
} from './types.js';

/**
 * What the IPAM use cases need from storage, in domain terms: no rows, no SQL, no PostgreSQL errors. Two
 * implementations keep the same contract (`store/ipam-store.contract.ts` runs against both): PostgreSQL
 * (`store/postgres.store.ts`, the product) and an in-memory store (`store/in-memory.store.ts`, for unit tests of the
 * allocator's decisions). Decisions (which path, which family, when to claim, retry, prefetch, pool caching) belong
 * to the use cases (`use-cases/`); a store method is one step the use case orders.
 *
 * Errors: domain errors (`ipamErrors`) for what a caller must fix; `TransientConflict` for a race the use case may
 * retry (a concurrent transaction took the same row, a deadlock); anything else is unexpected.
 */

/** A pool as the allocator needs it: the pool plus its storage keys. */
export interface PoolRecord extends Pool {
  id: number;
  routingDomainId: number;
}

/** Every pool, and each cluster's routing domain ('' for a caller naming no cluster: the default domain). */
export interface PoolCatalog {
  pools: PoolRecord[];
  domainOf: Map<string, number>;
}

/** The outcome of the one-statement allocation (group commit) for one request. */
export type FastOutcome =
  /** A new allocation from a never-used address; `room`: never-used addresses its block has left. */
  | { kind: 'new'; allocation: Allocation; room: bigint }
  /** The handle's live allocation of that family. */
  | { kind: 'existing'; allocation: Allocation }
  /** The next address was reserved, live or resting: the offset moved past it; ask again. */
  | { kind: 'skipped' }
  /** The node has no block of the pool with a never-used address: take the full path. */
  | { kind: 'none' }
  /** A Release named the request's attempt (when): it allocated nothing. */
  | { kind: 'fenced'; at: Date };

/** A released address still resting: whose it is, and until when it may not be taken by `owner` (null: it may). */
export interface RestingAddress {
  owner: string;
  until: Date | null;
}

/** A node's live blocks in one pool, for the prefetch decision. */
export interface NodeBlockUsage {
  blocks: number;
  live: bigint;
  /** Blocks with more than a quarter of their addresses never used. */
  roomy: number;
}

/** The steps of one allocation transaction. Everything done through it commits together or not at all. */
export interface AllocationTransaction {
  /** Enters the named attempt (locked until commit). Returns when a Release fenced it, or null. */
  enterAttempt(handle: string, attemptId: string): Promise<Date | null>;
  /** The handle's live allocations, by family. */
  liveOfHandle(handle: string): Promise<Allocation[]>;
  /**
   * The next free address of the node's live blocks in the pool, locking them (one node's allocations serialize):
   * never-used addresses first, in block order and offset order, stepping over reserved, live and resting ones; then,
   * when every block has handed out each address once, the longest-free released address past the pool's cool-down
   * and not held for an owner. null: none (the node has no block or they are full).
   */
  allocateFromNodeBlocks(pool: PoolRecord, req: AllocationRequest): Promise<Allocation | null>;
  /** The owner's own released address, still held for it, in a block of this node in one of `pools`; null: none. */
  allocateHeld(pools: PoolRecord[], req: AllocationRequest): Promise<Allocation | null>;
  /** Serializes block claims and releases (affinity revisions commit in revision order); held until commit. */
  lockClaims(): Promise<void>;
  /**
   * Claims the pool's lowest free block for the node and logs the affinity. false: the pool has no free block, or
   * the node holds the pool's `maxBlocksPerNode`. The caller holds the claim lock.
   */
  claimBlock(pool: PoolRecord, node: string): Promise<boolean>;
  /** The node's live blocks in the pool (prefetch). */
  nodeBlockUsage(pool: PoolRecord, node: string): Promise<NodeBlockUsage>;
  /** How many blocks of the pool lie below its claim hint (all of them claimed). */
  blocksBelowClaimHint(pool: PoolRecord): Promise<bigint>;
  // An exact address, step by step; the use case decides what each answer means.
  /** The pool of the domain whose CIDR holds the address, or null. */
  poolContaining(routingDomainId: number, address: string): Promise<number | null>;
  /** A reservation of the pool covering the address, or null. */
  reservationCovering(poolId: number, address: string): Promise<{ first: string; last: string } | null>;
  /** The handle holding the address live in the domain, or null. */
  liveHolder(routingDomainId: number, address: string): Promise<string | null>;
  /** The address's resting row, if any, with when its rest ends for `owner`. */
  resting(pool: PoolRecord, address: string, owner: string): Promise<RestingAddress | null>;
  /** The live block holding the address (locked), or null. */
  lockBlockAt(routingDomainId: number, address: string): Promise<{ id: number; node: string } | null>;
  /** Claims the block of the pool that holds the address for the node (caller holds the claim lock); its id. */
  claimBlockAt(pool: PoolRecord, address: string, node: string): Promise<number>;
  /** Allocates the address from the block for the request (its resting row, if any, goes). */
  takeAddress(pool: PoolRecord, blockId: number, address: string, req: AllocationRequest): Promise<Allocation>;
}

export interface PoolStore {
  createPool(spec: PoolSpec): Promise<Pool>;
  listPools(page: { after: PageKey | null; limit: number }): Promise<Page<Pool>>;
  /** Applies the changes if `etag` is current; stale: `ipam.stale_etag`, nothing changes. */
  updatePool(name: string, etag: string, changes: PoolChanges): Promise<Pool>;
  readPoolCatalog(): Promise<PoolCatalog>;
  /** One attempt (the caller retries a `TransientConflict`). */
  createReservation(pool: string, first: string, last: string, reason: string): Promise<Reservation>;
  listReservations(pool: string | null, page: { after: PageKey | null; limit: number }): Promise<Page<Reservation>>;
  /** One attempt (the caller retries a `TransientConflict`). */
  deleteReservation(pool: string, id: number): Promise<boolean>;
  setNodeLabels(node: string, labels: Record<string, string>): Promise<void>;
  setNamespaceLabels(cluster: string | null, namespace: string, labels: Record<string, string>): Promise<void>;
  /** Stored labels, read only for the kinds asked (null: not asked, or none stored). */
  storedLabels(q: {
    node: string | null;
    cluster: string;
    namespace: string | null;
  }): Promise<{ node: Record<string, string> | null; namespace: Record<string, string> | null }>;
}

/** What a release may free (the caller's own, from its identity): only allocations of `node`, only in `pools`; absent: any. */
export interface ReleaseScope {
  node?: string;
  pools?: string[];
}

export interface AllocationStore {
  /** One READ COMMITTED transaction; a thrown error rolls back all of it. */
  transaction<T>(fn: (tx: AllocationTransaction) => Promise<T>): Promise<T>;
  /** The common allocation (one family, no exact address, no owner) in one statement shared with concurrent callers. */
  allocateFast(pool: PoolRecord, req: AllocationRequest): Promise<FastOutcome>;
  /** Fences the attempt in a commit of its own (waits for a running Allocate of the attempt). */
  fenceAttempt(handle: string, attemptId: string): Promise<void>;
  /**
   * Releases the handle's live allocations (each address starts its rest) within `only`, in the same statement: a
   * handle another node (or pool) came to hold after the caller was authorized is left alone; one attempt.
   */
  releaseHandle(handle: string, only?: ReleaseScope): Promise<Allocation[]>;
  /** Releases the node's live allocations whose handle is not valid (made before `allocatedBefore`, if given); one attempt. */
  releaseInvalidHandles(node: string, validHandles: string[], allocatedBefore?: Date): Promise<Allocation[]>;
  /** Releases the node's live allocations made before `before`; one attempt. */
  releaseNodeAllocationsBefore(node: string, before: Date): Promise<Allocation[]>;
  listAllocations(
    filter: { pool?: string; node?: string },
    page: { after: PageKey | null; limit: number },
  ): Promise<Page<Allocation>>;
  holderOfHandle(handle: string): Promise<{ node: string; pools: string[] } | null>;
  liveAllocationsOfNode(node: string): Promise<number>;
}

/** What the store notifies (PostgreSQL NOTIFY) once an affinity change commits: it wakes watchers, who then read the log. */
export const BLOCKS_CHANNEL = 'ipam_blocks';

export interface AffinityStore {
  affinitySnapshot(): Promise<AffinityChange>;
  affinityChangesSince(revision: number): Promise<AffinityChange[]>;
}

export interface HousekeepingStore {
  /** Returns blocks with no live allocation, claimed over `graceSeconds` ago, nothing freed within it or the cool-down. */
  releaseEmptyBlocks(graceSeconds: number): Promise<BlockAffinity[]>;
  /** Returns the node's blocks that hold no live allocation at once; one attempt. */
  releaseNodeBlocks(node: string): Promise<BlockAffinity[]>;
  pruneAttempts(retentionSeconds: number): Promise<number>;
  nodesHoldingAddresses(): Promise<string[]>;
}

/** The store the allocator runs on (both implementations). */
export interface IpamStore extends PoolStore, AllocationStore, AffinityStore, HousekeepingStore {}

/** Where a utilization page continues: [pool, 0 for nodes or 1 for blocks, the last node or block CIDR listed]. */
export type UtilizationKey = [pool: string, section: 0 | 1, key: string];

/**
 * Reports over the history and the counters: PostgreSQL only (indexes and triggers are what they are about), tested
 * through the API in test/ipam-*.test.ts rather than by the contract suite.
 */
export interface IpamReports {
  history(q: HistoryQuery, after: PageKey | null): Promise<Page<HistoryEntry>>;
  utilization(
    pool: string | null,
    includeBlocks: boolean,
    page: { after: UtilizationKey | null; limit: number } | null,
  ): Promise<{ pools: PoolUsage[]; next: UtilizationKey | null }>;
  checkConsistency(): Promise<{ problems: { kind: string; detail: string }[]; checks: number }>;
}
