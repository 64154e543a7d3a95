import { sql } from 'drizzle-orm';
import { bigint, bigserial, cidr, index, inet, integer, pgSchema, serial, text, timestamp, uniqueIndex } from 'drizzle-orm/pg-core';

/** IPAM's own schema. Exclusion constraints (no overlapping pools or blocks) are in a custom migration. */
export const ipam = pgSchema('ipam');

export const pools = ipam.table('pools', {
  id: serial('id').primaryKey(),
  name: text('name').notNull().unique(),
  cidr: cidr('cidr').notNull(),
  blockPrefixLength: integer('block_prefix_length').notNull(),
  createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
});

export const blocks = ipam.table(
  'blocks',
  {
    id: serial('id').primaryKey(),
    poolId: integer('pool_id').notNull().references(() => pools.id),
    cidr: cidr('cidr').notNull().unique(),
    node: text('node').notNull(),
    claimedAt: timestamp('claimed_at', { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [index('blocks_node_idx').on(t.node, t.poolId)],
);

export const allocations = ipam.table(
  'allocations',
  {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    handle: text('handle').notNull(),
    address: inet('address').notNull(),
    poolId: integer('pool_id').notNull().references(() => pools.id),
    blockId: integer('block_id').notNull().references(() => blocks.id),
    node: text('node').notNull(),
    podNamespace: text('pod_namespace').notNull().default(''),
    podName: text('pod_name').notNull().default(''),
    containerId: text('container_id').notNull().default(''),
    allocatedAt: timestamp('allocated_at', { withTimezone: true }).notNull().defaultNow(),
    releasedAt: timestamp('released_at', { withTimezone: true }),
  },
  (t) => [
    // The database itself refuses two live allocations of one address, and two live allocations of one handle.
    uniqueIndex('allocations_live_address_uq').on(t.address).where(sql`released_at IS NULL`),
    uniqueIndex('allocations_live_handle_uq').on(t.handle).where(sql`released_at IS NULL`),
    index('allocations_block_idx').on(t.blockId).where(sql`released_at IS NULL`),
  ],
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
