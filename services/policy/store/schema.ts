import { sql } from 'drizzle-orm';
import { bigint, boolean, index, jsonb, pgSchema, primaryKey, text, timestamp } from 'drizzle-orm/pg-core';

/**
 * The policy service's own schema: what policies select (namespaces and pods with their labels, addresses and named
 * ports) and the policies, each row stamped with the revision of its last change (`policy.revision_seq`), from which
 * per-node rule streams will follow.
 */
export const policy = pgSchema('policy');

export const namespaces = policy.table('namespaces', {
  name: text('name').primaryKey(),
  labels: jsonb('labels')
    .$type<Record<string, string>>()
    .notNull()
    .default(sql`'{}'::jsonb`),
  revision: bigint('revision', { mode: 'number' }).notNull(),
});

export const pods = policy.table(
  'pods',
  {
    namespace: text('namespace').notNull(),
    name: text('name').notNull(),
    labels: jsonb('labels')
      .$type<Record<string, string>>()
      .notNull()
      .default(sql`'{}'::jsonb`),
    node: text('node').notNull().default(''),
    addresses: text('addresses')
      .array()
      .notNull()
      .default(sql`'{}'::text[]`),
    ports: jsonb('ports')
      .$type<{ name: string; port: number; protocol: string }[]>()
      .notNull()
      .default(sql`'[]'::jsonb`),
    /** True once UpsertPod (a controller) described the pod; false while only agents' attachments made it known. */
    described: boolean('described').notNull().default(true),
    /** The sandbox (CNI container id) of the pod's current attachment, as its agent reported it; '' when none. */
    containerId: text('container_id').notNull().default(''),
    revision: bigint('revision', { mode: 'number' }).notNull(),
  },
  (t) => [
    primaryKey({ columns: [t.namespace, t.name] }),
    index('pods_node_idx').on(t.node),
    index('pods_container_idx').on(t.containerId),
  ],
);

export const policies = policy.table(
  'policies',
  {
    kind: text('kind').notNull(),
    /** '' for the cluster-scoped kinds. */
    namespace: text('namespace').notNull().default(''),
    name: text('name').notNull(),
    object: jsonb('object').notNull(),
    updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
    revision: bigint('revision', { mode: 'number' }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.kind, t.namespace, t.name] })],
);
