import { sql } from 'drizzle-orm';
import { bigint, customType, index, pgSchema, text, timestamp, uniqueIndex } from 'drizzle-orm/pg-core';

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
  (t) => [
    uniqueIndex('tokens_live_name_idx')
      .on(t.name)
      .where(sql`revoked_at IS NULL`),
  ],
);

/**
 * Client certificates Weft's CA issued (`weft ca issue` records them through CertificateService, the bootstrap as it
 * issues): what revoking an identity finds. Serials are lowercase hex without leading zeros.
 */
export const certificates = auth.table(
  'certificates',
  {
    serial: text('serial').primaryKey(),
    /** kind:name ("node:node1"). */
    identity: text('identity').notNull(),
    issuedAt: timestamp('issued_at', { withTimezone: true }).notNull(),
    notAfter: timestamp('not_after', { withTimezone: true }).notNull(),
    /** kind:name of who recorded it ("admin:local"), or "bootstrap". */
    issuedBy: text('issued_by').notNull(),
  },
  (t) => [index('certificates_identity_idx').on(t.identity, t.issuedAt)],
);

/**
 * Revoked certificates, append-only: one row per serial (a serial is revoked once). Every replica keeps the serials in
 * memory and reads the rows after the last id it has (services/auth/revocations.ts), woken by NOTIFY weft_revocations.
 */
export const certificateRevocations = auth.table(
  'certificate_revocations',
  {
    id: bigint('id', { mode: 'number' }).primaryKey().generatedAlwaysAsIdentity(),
    serial: text('serial').notNull(),
    /** kind:name when known (recorded, or read from the PEM); '' for a bare serial. */
    identity: text('identity').notNull().default(''),
    /** The certificate's end of validity when known: past it, the row need not be kept in memory. */
    notAfter: timestamp('not_after', { withTimezone: true }),
    revokedAt: timestamp('revoked_at', { withTimezone: true }).notNull(),
    reason: text('reason').notNull().default(''),
    revokedBy: text('revoked_by').notNull(),
  },
  (t) => [uniqueIndex('certificate_revocations_serial_idx').on(t.serial)],
);
