import { and, asc, eq, gt, gte, inArray, like, type SQL } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import { withDatabaseErrors } from '../../../lib/db/unavailable.js';
import type { AuditEvent, AuditSink } from '../../../lib/audit.js';
import { events } from './schema.js';

/** What ListAuditEvents asks for (services/audit/rpc). */
export interface AuditQuery {
  since: Date | null;
  /** Exact actor; '' for all. */
  actor: string;
  /** Exact resource, or a prefix when it ends with "/"; '' for all. */
  resource: string;
  /** Only events with one of these results; empty for all. */
  results: string[];
  /** Only events with a larger id (the page token's). */
  afterId: number;
  limit: number;
}

export type StoredAuditEvent = AuditEvent & { id: number };

export interface AuditRepository extends AuditSink {
  list(q: AuditQuery): Promise<StoredAuditEvent[]>;
}

const likeEscape = (s: string) => s.replace(/[\\%_]/g, (c) => `\\${c}`);

/** The only queries on `audit.events`: one multi-row INSERT per batch, and a keyset-paged read. */
export function createAuditRepository(db: Database): AuditRepository {
  return withDatabaseErrors('audit', {
    async insert(batch: AuditEvent[]): Promise<void> {
      if (batch.length === 0) return;
      await db.insert(events).values(batch);
    },
    async list(q: AuditQuery): Promise<StoredAuditEvent[]> {
      const where: SQL[] = [gt(events.id, q.afterId)];
      if (q.since) where.push(gte(events.at, q.since));
      if (q.actor) where.push(eq(events.actor, q.actor));
      if (q.results.length > 0) where.push(inArray(events.result, q.results));
      if (q.resource)
        where.push(
          q.resource.endsWith('/')
            ? like(events.resource, `${likeEscape(q.resource)}%`)
            : eq(events.resource, q.resource),
        );
      return db
        .select()
        .from(events)
        .where(and(...where))
        .orderBy(asc(events.id))
        .limit(q.limit);
    },
  });
}
