import { bigint, inet, pgSchema, text, timestamp, macaddr } from 'drizzle-orm/pg-core';

/** The routes service's own schema. */
export const routes = pgSchema('routes');

export const nodes = routes.table('nodes', {
  name: text('name').primaryKey(),
  underlayAddress: inet('underlay_address').notNull(),
  vtepMac: macaddr('vtep_mac').notNull(),
  registeredAt: timestamp('registered_at', { withTimezone: true }).notNull().defaultNow(),
  /** Raised on every change of the row, from routes.revision_seq. */
  revision: bigint('revision', { mode: 'number' }).notNull(),
});
