import { and, asc, eq, isNull, sql } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import { withDatabaseErrors } from '../../../lib/db/unavailable.js';
import { pgErrorOf, PG } from '../../../lib/db/pg-errors.js';
import { tokenErrors, type StoredToken, type Token } from '../domain/token.js';
import { tokens } from './schema.js';
import { REVOCATIONS_CHANNEL } from './certificate.repository.js';

export interface TokenRepository {
  /** Stores a new token; auth.token_exists when a live token has its name. */
  create(token: StoredToken): Promise<Token>;
  /** Every token, by name then creation. */
  list(): Promise<Token[]>;
  /** Revokes the live token of that name at `at` (and wakes every replica's revocation list); auth.token_not_found when there is none. */
  revoke(name: string, at: Date): Promise<Token>;
  /** The token of a key id (with its hash), for verification; null when none. */
  find(keyId: string): Promise<StoredToken | null>;
}

const publicOf = ({ secretHash: _h, ...t }: StoredToken): Token => t;

/** The only queries on `auth.tokens`. */
export function createTokenRepository(db: Database): TokenRepository {
  return withDatabaseErrors('auth', {
    async create(token: StoredToken): Promise<Token> {
      try {
        await db.insert(tokens).values(token);
      } catch (err) {
        if (pgErrorOf(err)?.code === PG.uniqueViolation) throw tokenErrors.exists(token.name);
        throw err;
      }
      return publicOf(token);
    },
    async list(): Promise<Token[]> {
      const rows = await db.select().from(tokens).orderBy(asc(tokens.name), asc(tokens.createdAt));
      return rows.map(publicOf);
    },
    async revoke(name: string, at: Date): Promise<Token> {
      // With a NOTIFY in the same transaction: every replica's revocation list ends the token's open streams.
      return db.transaction(async (tx) => {
        const rows = await tx
          .update(tokens)
          .set({ revokedAt: at })
          .where(and(eq(tokens.name, name), isNull(tokens.revokedAt)))
          .returning();
        if (rows.length === 0) throw tokenErrors.notFound(name);
        await tx.execute(sql`SELECT pg_notify(${REVOCATIONS_CHANNEL}, '')`);
        return publicOf(rows[0]!);
      });
    },
    async find(keyId: string): Promise<StoredToken | null> {
      const rows = await db.select().from(tokens).where(eq(tokens.keyId, keyId)).limit(1);
      return rows[0] ?? null;
    },
  });
}
