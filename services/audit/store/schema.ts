import { bigint, index, pgSchema, text, timestamp } from 'drizzle-orm/pg-core';

/**
 * The audit log: one row per call of a mutation (lib/audit.ts), append-only. The services' role may INSERT and
 * SELECT here and nothing else (lib/db/roles.ts); only the owner can change or remove rows.
 */
export const audit = pgSchema('audit');

export const events = audit.table(
  'events',
  {
    id: bigint('id', { mode: 'number' }).primaryKey().generatedAlwaysAsIdentity(),
    /** When the call finished. */
    at: timestamp('at', { withTimezone: true }).notNull(),
    /** The caller's identity, kind:name ("node:node1", "admin:local"), or "none". */
    actor: text('actor').notNull(),
    /** Full gRPC method path. */
    method: text('method').notNull(),
    /** What the call acted on ("pool/default", "handle/c1/eth0"); '' when unknown. */
    resource: text('resource').notNull().default(''),
    requestId: text('request_id').notNull().default(''),
    traceId: text('trace_id').notNull().default(''),
    /** gRPC status code name of the outcome ("OK", "INVALID_ARGUMENT", ...). */
    result: text('result').notNull(),
    /** The error message of a failed call; '' for OK. */
    message: text('message').notNull().default(''),
  },
  (t) => [
    index('events_at_idx').on(t.at),
    index('events_actor_idx').on(t.actor, t.id),
    index('events_resource_idx').on(t.resource, t.id),
  ],
);
