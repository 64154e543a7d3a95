import {
  bigint,
  check,
  cidr,
  index,
  inet,
  integer,
  jsonb,
  pgSchema,
  text,
  timestamp,
  macaddr,
} from 'drizzle-orm/pg-core';
import { sql } from 'drizzle-orm';

/** The routes service's own schema. */
export const routes = pgSchema('routes');

export const nodes = routes.table('nodes', {
  name: text('name').primaryKey(),
  underlayAddress: inet('underlay_address').notNull(),
  vtepMac: macaddr('vtep_mac').notNull(),
  registeredAt: timestamp('registered_at', { withTimezone: true }).notNull().defaultNow(),
  /** Raised on every change of the row, from routes.revision_seq. */
  revision: bigint('revision', { mode: 'number' }).notNull(),
  /** The node is in the route table only while now() < lease_expires_at; RegisterNode and RenewLease extend it. */
  leaseExpiresAt: timestamp('lease_expires_at', { withTimezone: true }).notNull().defaultNow(),
});

/**
 * Nodes that were registered and then deregistered, and have not registered again (RegisterNode removes the row):
 * when each left. IPAM asks for them (ListDepartedNodes) before it releases a node's addresses; a name never
 * registered has no row, so an allocation an external system made under it is never taken for a gone node's.
 */
export const departedNodes = routes.table('departed_nodes', {
  name: text('name').primaryKey(),
  departedAt: timestamp('departed_at', { withTimezone: true }).notNull().defaultNow(),
});

/**
 * The routes service's own copy of IPAM's block affinities, as learned over gRPC (WatchBlockAffinities) by the one
 * replica that is the affinity follower. Never IPAM's tables.
 */
export const blockAffinities = routes.table(
  'block_affinities',
  {
    cidr: cidr('cidr').primaryKey(),
    node: text('node').notNull(),
  },
  (t) => [index('block_affinities_node_idx').on(t.node)],
);

/** The route table as of the newest change: one row per node in it (live lease), with the revision that set it. */
export const routeTable = routes.table('route_table', {
  node: text('node').primaryKey(),
  routes: jsonb('routes').notNull(),
  revision: bigint('revision', { mode: 'number' }).notNull(),
});

/** The revision log: every change of the route table, revision from routes.change_seq, committed in revision order. */
export const changes = routes.table(
  'changes',
  {
    revision: bigint('revision', { mode: 'number' }).primaryKey(),
    node: text('node').notNull(),
    kind: text('kind').notNull(),
    /** The node's whole NodeRoutes for an upsert; null for a delete. */
    routes: jsonb('routes'),
    changedAt: timestamp('changed_at', { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    check(
      'changes_kind_check',
      sql`${t.kind} IN ('upsert', 'delete') AND (${t.kind} = 'delete') = (${t.routes} IS NULL)`,
    ),
  ],
);

/** One row: the highest revision compaction has removed (a watcher resuming from below it needs a snapshot), and whether block affinities were ever synced. */
export const logHorizon = routes.table('log_horizon', {
  id: integer('id').primaryKey(),
  compactedThrough: bigint('compacted_through', { mode: 'number' }).notNull(),
  /** When the affinity follower first recorded IPAM's snapshot; until then the log is not served and not swept. */
  affinitiesSyncedAt: timestamp('affinities_synced_at', { withTimezone: true }),
  /**
   * When the routes service was last seen up with its database (every lease sweep sets it). A writer that finds it
   * older than half a lease knows the control plane was down: leases still live then get a full lease from now
   * before anything is withdrawn (resumeLeases).
   */
  liveAt: timestamp('live_at', { withTimezone: true }).notNull().defaultNow(),
});
