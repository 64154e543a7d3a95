import { and, desc, eq, gt, isNull, lte, or, sql } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import { withDatabaseErrors } from '../../../lib/db/unavailable.js';
import {
  certificateErrors,
  type CertificateRecord,
  type Revocation,
  type RevocationTarget,
} from '../domain/certificate.js';
import { certificateRevocations, certificates, tokens } from './schema.js';

/** Wakes every replica's revocation list (services/auth/revocations.ts) when a certificate or a token is revoked. */
export const REVOCATIONS_CHANNEL = 'weft_revocations';

/** A recorded certificate with its revocation, or a revoked serial that was never recorded. */
export interface CertificateView {
  serial: string;
  identity: string;
  issuedAt: Date | null;
  notAfter: Date | null;
  issuedBy: string;
  revokedAt: Date | null;
  reason: string;
}

/** What a replica keeps in memory: revoked serials still valid, and revoked tokens' key ids. */
export interface RevokedCredentials {
  certificates: Map<string, { revokedAt: Date; reason: string; identity: string }>;
  tokens: Map<string, { name: string; revokedAt: Date }>;
}

export interface CertificateRepository {
  /** Records an issued certificate; a serial recorded already is kept as it was. */
  record(c: CertificateRecord): Promise<CertificateRecord>;
  /**
   * Revokes what `target` names at `at`, and wakes every replica. For an identity: every recorded certificate of it
   * issued at or before `at` and not yet expired (auth.no_certificates when there is none).
   */
  revoke(
    target: RevocationTarget,
    r: { at: Date; reason: string; by: string },
  ): Promise<{ revoked: CertificateView[]; alreadyRevoked: number }>;
  /** Recorded certificates and revocations, newest first; of one identity when given. */
  list(identity: string): Promise<CertificateView[]>;
  /** A cheap fingerprint of what is revoked (row counts): when it is unchanged, `revoked()` would answer the same. */
  revocationVersion(): Promise<string>;
  /** Every revoked certificate not yet expired, and every revoked token. */
  revoked(now: Date): Promise<RevokedCredentials>;
}

const notify = sql`SELECT pg_notify(${REVOCATIONS_CHANNEL}, '')`;

/** The only queries on `auth.certificates` and `auth.certificate_revocations`. */
export function createCertificateRepository(db: Database): CertificateRepository {
  const view = (c: Partial<CertificateRecord> & { serial: string }, r: Revocation | null): CertificateView => ({
    serial: c.serial,
    identity: c.identity || r?.identity || '',
    issuedAt: c.issuedAt ?? null,
    notAfter: c.notAfter ?? r?.notAfter ?? null,
    issuedBy: c.issuedBy ?? r?.revokedBy ?? '',
    revokedAt: r?.revokedAt ?? null,
    reason: r?.reason ?? '',
  });
  return withDatabaseErrors('auth', {
    async record(c: CertificateRecord): Promise<CertificateRecord> {
      await db.insert(certificates).values(c).onConflictDoNothing();
      const rows = await db.select().from(certificates).where(eq(certificates.serial, c.serial));
      return rows[0] ?? c;
    },
    async revoke(target: RevocationTarget, r: { at: Date; reason: string; by: string }) {
      return db.transaction(async (tx) => {
        let named: { serial: string; identity: string; notAfter: Date | null; record: CertificateRecord | null }[];
        if (target.kind === 'serial') {
          const record =
            (await tx.select().from(certificates).where(eq(certificates.serial, target.serial)))[0] ?? null;
          named = [
            {
              serial: target.serial,
              identity: record?.identity ?? target.identity,
              notAfter: record?.notAfter ?? target.notAfter,
              record,
            },
          ];
        } else {
          const records = await tx
            .select()
            .from(certificates)
            .where(
              and(
                eq(certificates.identity, target.identity),
                lte(certificates.issuedAt, r.at),
                gt(certificates.notAfter, r.at),
              ),
            );
          if (records.length === 0) throw certificateErrors.noCertificates(target.identity);
          named = records.map((record) => ({
            serial: record.serial,
            identity: record.identity,
            notAfter: record.notAfter,
            record,
          }));
        }
        const inserted = await tx
          .insert(certificateRevocations)
          .values(
            named.map((n) => ({
              serial: n.serial,
              identity: n.identity,
              notAfter: n.notAfter,
              revokedAt: r.at,
              reason: r.reason,
              revokedBy: r.by,
            })),
          )
          .onConflictDoNothing()
          .returning();
        if (inserted.length > 0) await tx.execute(notify);
        const bySerial = new Map(named.map((n) => [n.serial, n.record]));
        return {
          revoked: inserted.map((row) => view(bySerial.get(row.serial) ?? { serial: row.serial }, row)),
          alreadyRevoked: named.length - inserted.length,
        };
      });
    },
    async list(identity: string): Promise<CertificateView[]> {
      const rows = await db
        .select({ c: certificates, r: certificateRevocations })
        .from(certificates)
        .leftJoin(certificateRevocations, eq(certificateRevocations.serial, certificates.serial))
        .where(identity ? eq(certificates.identity, identity) : undefined)
        .orderBy(desc(certificates.issuedAt));
      const bare = await db
        .select({ r: certificateRevocations })
        .from(certificateRevocations)
        .leftJoin(certificates, eq(certificates.serial, certificateRevocations.serial))
        .where(and(isNull(certificates.serial), identity ? eq(certificateRevocations.identity, identity) : undefined))
        .orderBy(desc(certificateRevocations.revokedAt));
      return [...rows.map(({ c, r }) => view(c, r)), ...bare.map(({ r }) => view({ serial: r.serial }, r))];
    },
    async revocationVersion(): Promise<string> {
      const rows = await db.execute<{ certs: string; tokens: string }>(sql`SELECT
        (SELECT count(*) FROM ${certificateRevocations})::text AS certs,
        (SELECT count(*) FROM ${tokens} WHERE ${tokens.revokedAt} IS NOT NULL)::text AS tokens`);
      const row = rows.rows[0]!;
      return `${row.certs}/${row.tokens}`;
    },
    async revoked(now: Date): Promise<RevokedCredentials> {
      const certs = await db
        .select()
        .from(certificateRevocations)
        .where(or(isNull(certificateRevocations.notAfter), gt(certificateRevocations.notAfter, now)));
      const toks = await db
        .select({ keyId: tokens.keyId, name: tokens.name, revokedAt: tokens.revokedAt })
        .from(tokens)
        .where(sql`${tokens.revokedAt} IS NOT NULL`);
      return {
        certificates: new Map(
          certs.map((c) => [c.serial, { revokedAt: c.revokedAt, reason: c.reason, identity: c.identity }]),
        ),
        tokens: new Map(toks.map((t) => [t.keyId, { name: t.name, revokedAt: t.revokedAt! }])),
      };
    },
  });
}
