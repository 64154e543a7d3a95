import { hostname } from 'node:os';
import pg from 'pg';
import { drizzle } from 'drizzle-orm/node-postgres';
import { sleep } from '../backoff.js';
import type { Logger } from '../logger.js';
import type { Database } from './database.js';

/**
 * Leader election with fencing for what must run once however many replicas run: one PostgreSQL session-level
 * advisory lock per role, held on a session of its own, and every write of the leader made on that same session.
 *
 * - **Election.** Every replica tries `pg_try_advisory_lock(LEADER_LOCK_CLASS, role)` on its own session every
 *   `retryMs`; the one that gets it leads for as long as that session lives. PostgreSQL frees the lock when the session
 *   ends (the process died, its connection broke, keepalive gave up on it, an administrator terminated it, the primary
 *   failed over), and another replica takes it at its next try.
 * - **Fencing.** The leader writes only through `term.db`, which runs on the lock's own session: a transaction can
 *   commit only on a live session, and a live session holds the lock. So once a leader has lost its lock, nothing it
 *   still tries can commit, whatever its process believes (a paused process, a half-open connection). Writes on any
 *   other session would need a check in their transaction instead (see services/routes' affinity follower).
 * - **Noticing.** The session's `error` and `end` (TCP keepalive on it: DatabaseHandle.session) and a failed write
 *   abort `term.signal`: the leader stops, ends the session (so the lock is free at once if the server still had it)
 *   and competes again.
 *
 * The session says what it is in pg_stat_activity (`application_name` = `weft-leader:<role>:<pid>@<host>`), so operators and
 * tests find each role's leader with one query (`leaderQuery`). A connection pooler in transaction mode (PgBouncer)
 * cannot carry session locks: leaders need a direct session (HAProxy in TCP mode, as in docs/ha-postgresql.md, can).
 */

/** Weft's advisory-lock class (the first int of the two-int form, so its locks are easy to find in pg_locks). */
export const LEADER_LOCK_CLASS = 7400;

/** Every role that one replica at a time performs, as the second int of its lock. */
export const LEADER_ROLES = Object.freeze({
  /** services/routes: IPAM's block affinities into the route log. */
  'routes-affinity-follower': 1,
  /** services/routes: leases that ran out, log compaction. */
  'routes-lease-sweeper': 2,
  /** services/ipam: empty blocks, departed nodes' allocations, old allocation attempts. */
  'ipam-sweeper': 3,
});
export type LeaderRole = keyof typeof LEADER_ROLES;

/** Held (as a session lock) while a replica applies migrations: replicas starting together migrate one at a time. */
export const MIGRATION_LOCK = 100;

export interface LeaderTerm {
  /** Drizzle on the lock's own session: the only way a leader writes (fencing). */
  db: Database;
  /** The same session, for raw queries. */
  client: pg.Client;
  /** The session's backend pid: with `backendStart`, names this term exactly (a pid is reused, the pair is not). */
  pid: number;
  backendStart: Date;
  /** Aborts when the term ends: the session broke, a write failed, or the replica stops. */
  signal: AbortSignal;
  /** Ends the term now (after a failed write, say); the replica competes again after `retryMs`. */
  resign(reason: string): void;
}

export interface Leadership {
  isLeader(): boolean;
  /** Stops competing; ends the current term (its session, so its lock) and resolves once it is over. */
  stop(): Promise<void>;
}

/** The application_name of a role's contender sessions: the role, then which process (pid@host; at most 63 bytes). */
export const leaderApplicationName = (role: LeaderRole) =>
  `weft-leader:${role}:${process.pid}@${hostname()}`.slice(0, 63);

/** One row per role that has a leader now: the session holding its lock (for tests and operators). */
export const leaderQuery = `SELECT l.objid::int AS role, a.pid, a.backend_start, a.application_name, a.client_addr::text AS client_addr
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
  WHERE l.locktype = 'advisory' AND l.granted AND l.classid = ${LEADER_LOCK_CLASS} AND l.objsubid = 2
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  ORDER BY 1`;

/** Resolves with `p`, or at once when `signal` aborts (`p` is then left to settle, or not, on its own). */
function untilAborted(p: Promise<unknown>, signal: AbortSignal): Promise<unknown> {
  p.catch(() => {});
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onAbort = () => resolve(undefined);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err as Error);
      },
    );
  });
}

export function startLeadership(o: {
  role: LeaderRole;
  /** Session settings (DatabaseHandle.session: timeouts and keepalive). */
  session: pg.ClientConfig;
  logger: Logger;
  /** Runs while this replica leads; should return when `term.signal` aborts. */
  lead: (term: LeaderTerm) => Promise<void>;
  /** How often a follower tries the lock, and how long after a term ends before competing again. */
  retryMs?: number;
}): Leadership {
  const retryMs = o.retryMs ?? 1000;
  const key = LEADER_ROLES[o.role];
  const logger = o.logger.child({ leaderRole: o.role });
  const stopper = new AbortController();
  let leading = false;

  async function oneSession(): Promise<void> {
    const client = new pg.Client({ ...o.session, application_name: leaderApplicationName(o.role) });
    const term = new AbortController();
    const end = () => term.abort();
    // Stopping ends the session at once: a statement in flight is rolled back and the lock is free for another.
    const onStop = () => {
      term.abort();
      void client.end().catch(() => {});
    };
    client.on('error', end);
    client.on('end', end);
    stopper.signal.addEventListener('abort', onStop, { once: true });
    let connected = false;
    try {
      // pg's connect() never settles when the client is ended while it connects (a stop during a black-holed
      // connect): wait for it or for the term's end, whichever comes first.
      await untilAborted(client.connect(), term.signal);
      connected = !term.signal.aborted;
      while (!term.signal.aborted) {
        const r = await client.query<{ got: boolean; pid: number; backend_start: Date }>(
          `SELECT pg_try_advisory_lock($1, $2) AS got, pg_backend_pid() AS pid,
             (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()) AS backend_start`,
          [LEADER_LOCK_CLASS, key],
        );
        const row = r.rows[0]!;
        if (row.got) {
          leading = true;
          logger.info('leading', { pid: row.pid });
          try {
            await o.lead({
              db: drizzle(client) as Database,
              client,
              pid: row.pid,
              backendStart: row.backend_start,
              signal: term.signal,
              resign: (reason) => {
                if (!term.signal.aborted) logger.warn('resigning leadership', { reason });
                end();
              },
            });
          } finally {
            leading = false;
            if (!stopper.signal.aborted) logger.info('no longer leading');
          }
          return;
        }
        await sleep(retryMs, term.signal);
      }
    } catch (err) {
      if (!stopper.signal.aborted) logger.warn('leader election session failed', { err: (err as Error).message });
    } finally {
      leading = false;
      stopper.signal.removeEventListener('abort', onStop);
      // Ending the session frees the lock at once (the server may still think the session alive). A session that
      // never connected has nothing to say goodbye on: its socket is closed, not ended (an end waits for the peer).
      if (!connected)
        (client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
      await client.end().catch(() => {});
    }
  }

  const done = (async () => {
    while (!stopper.signal.aborted) {
      await oneSession();
      await sleep(retryMs, stopper.signal);
    }
  })();

  return {
    isLeader: () => leading,
    async stop() {
      stopper.abort();
      await done;
    },
  };
}

/**
 * Runs `step` every `intervalMs` while this replica leads `role` (a periodic writer: a sweeper), on the term's
 * session; a step that fails ends the term (its session may be the cause), and the replica competes again.
 */
export function startLeaderLoop(o: {
  role: LeaderRole;
  session: pg.ClientConfig;
  logger: Logger;
  intervalMs: number;
  step: (term: LeaderTerm) => Promise<void>;
  retryMs?: number;
}): Leadership {
  return startLeadership({
    role: o.role,
    session: o.session,
    logger: o.logger,
    retryMs: o.retryMs ?? Math.max(50, Math.min(1000, o.intervalMs)),
    async lead(term) {
      while (!term.signal.aborted) {
        try {
          await o.step(term);
        } catch (err) {
          const cause = (err as { cause?: { message?: string } }).cause?.message;
          term.resign(`${o.role} failed: ${(err as Error).message}${cause ? ` (${cause})` : ''}`);
          return;
        }
        await sleep(o.intervalMs, term.signal);
      }
    },
  });
}
