import { sql } from 'drizzle-orm';
import { customType, pgSchema, text, timestamp, uniqueIndex } from 'drizzle-orm/pg-core';

const bytea = customType<{ data: Buffer; driverData: Buffer }>({ dataType: () => 'bytea' });

/**
 * API tokens (services/auth/DESIGN.md): one row per token ever made; revoking sets revoked_at. The services' role
 * reads and writes it (lib/db/roles.ts); the secret itself is never stored, only the SHA-256 of its secret part.
 */
export const auth = pgSchema('auth');

export const tokens = auth.table(
  'tokens',
  {
    /** The public part of the secret ("weft_" + 16 hex digits). */
    keyId: text('key_id').primaryKey(),
    name: text('name').notNull(),
    /** SHA-256 of the secret part (32 bytes). */
    secretHash: bytea('secret_hash').notNull(),
    scopes: text('scopes').array().notNull(),
    createdAt: timestamp('created_at', { withTimezone: true }).notNull(),
    /** null: never expires. */
    expiresAt: timestamp('expires_at', { withTimezone: true }),
    /** null: not revoked. */
    revokedAt: timestamp('revoked_at', { withTimezone: true }),
    /** kind:name of the identity that made it. */
    createdBy: text('created_by').notNull(),
  },
  // One live token per name: `weft token revoke NAME` names exactly one.
  (t) => [uniqueIndex('tokens_live_name_idx').on(t.name).where(sql`revoked_at IS NULL`)],
);
