import { sql } from 'drizzle-orm';
import type { AnyPgColumn } from 'drizzle-orm/pg-core';
import {
  bigint,
  bigserial,
  boolean,
  cidr,
  index,
  inet,
  integer,
  jsonb,
  pgSchema,
  primaryKey,
  serial,
  smallint,
  text,
  timestamp,
  uniqueIndex,
} from 'drizzle-orm/pg-core';

/** IPAM's own schema. Exclusion constraints (no overlapping pools or blocks) are in a custom migration. */
export const ipam = pgSchema('ipam');

export const pools = ipam.table('pools', {
  id: serial('id').primaryKey(),
  name: text('name').notNull().unique(),
  cidr: cidr('cidr').notNull(),
  /** Pools overlap only across routing domains, never within one (exclusion constraint, custom migration). */
  routingDomainId: integer('routing_domain_id')
    .notNull()
    .references((): AnyPgColumn => routingDomains.id),
  blockPrefixLength: integer('block_prefix_length').notNull(),
  family: smallint('family').notNull().default(4),
  /** A released address rests this long before it is handed out again. */
  cooldownSeconds: integer('cooldown_seconds').notNull().default(30),
  /** A released address of an owner (e.g. a StatefulSet pod) is kept for that owner this long. */
  stickySeconds: integer('sticky_seconds').notNull().default(600),
  disabled: boolean('disabled').notNull().default(false),
  nodeSelector: text('node_selector').notNull().default(''),
  namespaceSelector: text('namespace_selector').notNull().default(''),
  /** At most this many blocks per node (0: no limit). */
  maxBlocksPerNode: integer('max_blocks_per_node').notNull().default(0),
  allowedUses: text('allowed_uses')
    .array()
    .notNull()
    .default(sql`'{workload}'::text[]`),
  /**
   * Where the next block claim starts looking: every block of the pool below it is claimed (claims take the lowest
   * free block at or above it and move it there; a released block moves it down). null: the pool's start.
   */
  claimHint: cidr('claim_hint'),
  /** Raised by every update; the etag is derived from it. */
  version: integer('version').notNull().default(1),
  createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
});

export const blocks = ipam.table(
  'blocks',
  {
    id: serial('id').primaryKey(),
    poolId: integer('pool_id')
      .notNull()
      .references(() => pools.id),
    /** The pool's routing domain, copied: blocks and addresses are unique within a domain. */
    routingDomainId: integer('routing_domain_id').notNull(),
    cidr: cidr('cidr').notNull(),
    node: text('node').notNull(),
    claimedAt: timestamp('claimed_at', { withTimezone: true }).notNull().defaultNow(),
    /** Offset of the next never-used address: allocation takes it (O(1)) before reusing released ones. */
    nextOffset: bigint('next_offset', { mode: 'number' }).notNull().default(0),
    /** Live allocations in the block, kept by allocate and release (utilization reads counters, not rows). */
    liveCount: integer('live_count').notNull().default(0),
    /** Reserved addresses inside the block, kept by block claims and by creating or deleting a reservation. */
    reserved: integer('reserved').notNull().default(0),
    /** Set when an empty block returns to its pool (or its node is gone); the row stays for history. */
    releasedAt: timestamp('released_at', { withTimezone: true }),
  },
  (t) => [
    // A node's live blocks in a pool, in claim order: the allocation path's lookup, with no sort.
    index('blocks_node_idx')
      .on(t.node, t.poolId, t.id)
      .where(sql`released_at IS NULL`),
    index('blocks_pool_idx')
      .on(t.poolId)
      .where(sql`released_at IS NULL`),
    uniqueIndex('blocks_live_cidr_uq')
      .on(t.routingDomainId, t.cidr)
      .where(sql`released_at IS NULL`),
  ],
);

export const allocations = ipam.table(
  'allocations',
  {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    handle: text('handle').notNull(),
    address: inet('address').notNull(),
    /** The block's pool (the block's own foreign key holds it to an existing pool; a second one here only cost every insert a lock). */
    poolId: integer('pool_id').notNull(),
    blockId: integer('block_id')
      .notNull()
      .references(() => blocks.id),
    /** The pool's routing domain: an address is live at most once per domain. */
    routingDomainId: integer('routing_domain_id').notNull(),
    /** The registered cluster the allocation was made for ('' when the caller named none). */
    cluster: text('cluster').notNull().default(''),
    node: text('node').notNull(),
    family: smallint('family').notNull().default(4),
    podNamespace: text('pod_namespace').notNull().default(''),
    podName: text('pod_name').notNull().default(''),
    containerId: text('container_id').notNull().default(''),
    /** Owner key of a sticky address (e.g. "statefulset/shop/cart-0"); empty when not sticky. */
    owner: text('owner').notNull().default(''),
    /** The pod's Kubernetes UID (CNI_ARGS K8S_POD_UID); empty when the caller gave none. */
    podUid: text('pod_uid').notNull().default(''),
    allocatedAt: timestamp('allocated_at', { withTimezone: true }).notNull().defaultNow(),
    releasedAt: timestamp('released_at', { withTimezone: true }),
  },
  (t) => [
    // The database itself refuses two live allocations of one address, and two live allocations of one handle.
    uniqueIndex('allocations_live_address_uq')
      .on(t.address, t.routingDomainId)
      .where(sql`released_at IS NULL`),
    // A handle holds at most one live address per family (a dual-stack pod holds two).
    uniqueIndex('allocations_live_handle_family_uq')
      .on(t.handle, t.family)
      .where(sql`released_at IS NULL`),
    // A block's live allocations are found by address range (BETWEEN its first and last address) on allocations_live_address_uq.
    // History: who held an address when; every address of a pod; what a node held in a time range.
    index('allocations_address_time_idx').on(t.address, t.allocatedAt),
    index('allocations_pod_idx').on(t.podNamespace, t.podName, t.allocatedAt),
    index('allocations_node_time_idx').on(t.node, t.allocatedAt),
    index('allocations_handle_idx').on(t.handle, t.allocatedAt),
  ],
);

/**
 * Usage per pool and node: live blocks, live allocations and reserved addresses in them. Kept exact by statement-level
 * triggers on `blocks` (migration 0013), which add each statement's deltas of its blocks' counters grouped by (pool,
 * node): whatever path changes a block's counters, the node's row follows in the same transaction, and a pool's
 * utilization reads one row per node instead of aggregating its blocks. `weft ipam check` recounts it from the rows.
 */
export const nodeUsage = ipam.table(
  'node_usage',
  {
    poolId: integer('pool_id')
      .notNull()
      .references(() => pools.id),
    node: text('node').notNull(),
    blocks: integer('blocks').notNull().default(0),
    live: bigint('live', { mode: 'number' }).notNull().default(0),
    reserved: bigint('reserved', { mode: 'number' }).notNull().default(0),
  },
  (t) => [primaryKey({ columns: [t.poolId, t.node] })],
);

/** Released addresses, each resting until its pool's cool-down has passed; reuse takes the longest-free first. */
export const freeAddresses = ipam.table(
  'free_addresses',
  {
    address: inet('address').notNull(),
    routingDomainId: integer('routing_domain_id').notNull(),
    blockId: integer('block_id')
      .notNull()
      .references(() => blocks.id),
    freeSince: timestamp('free_since', { withTimezone: true }).notNull().defaultNow(),
    /** Held for this owner until hold_until; nobody else takes it before then. */
    owner: text('owner').notNull().default(''),
    holdUntil: timestamp('hold_until', { withTimezone: true }),
  },
  (t) => [
    primaryKey({ columns: [t.routingDomainId, t.address] }),
    index('free_addresses_block_idx').on(t.blockId, t.freeSince),
    index('free_addresses_owner_idx')
      .on(t.owner)
      .where(sql`owner <> ''`),
    // Utilization counts only the recently freed and the held (those still cooling down), each on an index.
    index('free_addresses_since_idx').on(t.freeSince),
    index('free_addresses_hold_idx')
      .on(t.holdUntil)
      .where(sql`hold_until IS NOT NULL`),
  ],
);

/**
 * Allocation attempts that name themselves (AllocateRequest.attempt_id). An Allocate upserts its row first in its
 * transaction (so its row lock lasts until it commits); a Release naming the attempt upserts it with `fenced_at` in a
 * statement of its own, which waits for such an Allocate to commit or finds the row first. An Allocate that finds its
 * attempt fenced allocates nothing. The sweeper drops fenced rows after WEFT_IPAM_ATTEMPT_RETENTION_SECONDS and
 * unfenced ones after ten minutes (they matter only while their transaction runs).
 */
export const allocationAttempts = ipam.table(
  'allocation_attempts',
  {
    handle: text('handle').notNull(),
    attemptId: text('attempt_id').notNull(),
    createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
    /** Set by a Release naming the attempt: from then on the attempt allocates nothing. */
    fencedAt: timestamp('fenced_at', { withTimezone: true }),
  },
  (t) => [primaryKey({ columns: [t.handle, t.attemptId] })],
);

/**
 * Node labels stored by SetNodeLabels (e.g. from Kubernetes Node objects), matched against pools' node selectors when
 * an Allocate carries no node labels. A node without labels has no row.
 */
export const nodeLabels = ipam.table('node_labels', {
  node: text('node').primaryKey(),
  labels: jsonb('labels').$type<Record<string, string>>().notNull(),
  updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
});

/**
 * Namespace labels stored by SetNamespaceLabels, per cluster ('' for callers that name none), matched against pools'
 * namespace selectors when an Allocate carries no namespace labels. A namespace without labels has no row.
 */
export const namespaceLabels = ipam.table(
  'namespace_labels',
  {
    cluster: text('cluster').notNull().default(''),
    namespace: text('namespace').notNull(),
    labels: jsonb('labels').$type<Record<string, string>>().notNull(),
    updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.cluster, t.namespace] })],
);

/** Address ranges that are never allocated (first..last inclusive, one family, inside one pool). */
export const reservations = ipam.table(
  'reservations',
  {
    id: serial('id').primaryKey(),
    poolId: integer('pool_id')
      .notNull()
      .references(() => pools.id),
    first: inet('first').notNull(),
    last: inet('last').notNull(),
    reason: text('reason').notNull().default(''),
    createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [index('reservations_pool_idx').on(t.poolId, t.first)],
);

/** The affinity log: every claim or release of a block, in revision order (see store DESIGN notes). */
export const blockEvents = ipam.table('block_events', {
  revision: bigint('revision', { mode: 'number' }).primaryKey(),
  cidr: cidr('cidr').notNull(),
  pool: text('pool').notNull(),
  /** null: the block is no longer affine to any node. */
  node: text('node'),
  at: timestamp('at', { withTimezone: true }).notNull().defaultNow(),
});

/** Routing domains: address spaces that may overlap one another, never within themselves. */
export const routingDomains = ipam.table('routing_domains', {
  id: serial('id').primaryKey(),
  name: text('name').notNull().unique(),
  createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
});

/** Registered clusters, each in one routing domain. */
export const clusters = ipam.table('clusters', {
  id: serial('id').primaryKey(),
  name: text('name').notNull().unique(),
  routingDomainId: integer('routing_domain_id')
    .notNull()
    .references(() => routingDomains.id),
  createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
});

/** Shared supernets from which clusters' prefixes are carved; disjoint within a domain (custom migration). */
export const aggregates = ipam.table('aggregates', {
  id: serial('id').primaryKey(),
  name: text('name').notNull().unique(),
  routingDomainId: integer('routing_domain_id')
    .notNull()
    .references(() => routingDomains.id),
  cidr: cidr('cidr').notNull(),
  createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
});

/** Prefixes carved for clusters (e.g. a cluster's pod CIDR); live ones never overlap within a domain. */
export const prefixes = ipam.table(
  'prefixes',
  {
    id: serial('id').primaryKey(),
    aggregateId: integer('aggregate_id')
      .notNull()
      .references(() => aggregates.id),
    routingDomainId: integer('routing_domain_id')
      .notNull()
      .references(() => routingDomains.id),
    clusterId: integer('cluster_id')
      .notNull()
      .references(() => clusters.id),
    purpose: text('purpose').notNull().default('pods'),
    cidr: cidr('cidr').notNull(),
    createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
    releasedAt: timestamp('released_at', { withTimezone: true }),
  },
  (t) => [
    // One live prefix per cluster, aggregate and purpose: asking again returns it (idempotent).
    uniqueIndex('prefixes_live_purpose_uq')
      .on(t.clusterId, t.aggregateId, t.purpose)
      .where(sql`released_at IS NULL`),
    index('prefixes_aggregate_idx')
      .on(t.aggregateId)
      .where(sql`released_at IS NULL`),
  ],
);
