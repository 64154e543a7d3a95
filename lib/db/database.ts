import pg from 'pg';
import { drizzle, type NodePgDatabase } from 'drizzle-orm/node-postgres';
import { migrate } from 'drizzle-orm/node-postgres/migrator';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { COMMIT_NOT_REPLICATED } from './unavailable.js';

export type Database = NodePgDatabase<Record<string, never>>;

export interface DatabaseHandle {
  pool: pg.Pool;
  db: Database;
  /**
   * A separate small pool whose sessions plan prepared statements once (plan_cache_mode = force_generic_plan), for
   * hot statements whose planning costs more than their execution: without it PostgreSQL keeps re-planning a
   * statement whose custom plans look cheaper than its generic one (IPAM's group-commit statement: 2.4 ms of planning
   * for 0.8 ms of execution). Closed with the handle.
   */
  preparedPool(max: number): pg.Pool;
  /**
   * A separate small pool of `max` sessions as a Database, for reads that must not queue behind the service's writes
   * (the watch streams' shared log reads while thousands of agents register again after a restart). `waitMs` replaces
   * the connect timeout (opening a session, or waiting for a free one) for callers with no deadline of their own: a
   * watch stream that waits longer for the one read it shares is cheaper than one that fails and reconnects. Closed
   * with the handle.
   */
  ownPool(max: number, opts?: { waitMs?: number }): Database;
  /**
   * Opens `sessions` of the shared pool's sessions and every session of the small pools, and keeps them open while
   * idle (pg-pool's `min`): a server calls it before it listens, so a storm of reconnecting agents after a restart
   * (thousands of TLS handshakes on the event loop) finds its sessions open instead of opening them then, where the
   * opening's round trips queue behind the handshakes past the connect timeout. Sessions the server ends later are
   * opened again on demand.
   */
  warm(sessions: number): Promise<void>;
  url: string;
  /** The settings every session of this handle uses (timeouts, keepalive): for a dedicated pg.Client (LISTEN, locks). */
  session: pg.ClientConfig;
  close(): Promise<void>;
}

/**
 * How long anything may take toward PostgreSQL, in milliseconds (0: no limit). Without them a database that stops
 * answering (a black-holed network, a stuck server) holds every caller and every pooled session forever.
 */
export interface DatabaseTimeouts {
  /** PostgreSQL cancels a statement that runs longer (statement_timeout). */
  statementMs: number;
  /** PostgreSQL fails a statement that waits longer for a lock, advisory locks included (lock_timeout). */
  lockMs: number;
  /** PostgreSQL ends a session that sits idle inside a transaction longer, releasing its locks (idle_in_transaction_session_timeout). */
  idleInTransactionMs: number;
  /**
   * A query with no answer after this long fails here ("Query read timeout") and its session is closed: this is what
   * ends a call when the database cannot be reached at all, where statement_timeout never fires. Above statementMs.
   */
  queryMs: number;
  /** Opening a session, or waiting for a free one in the pool, fails after this long. */
  connectMs: number;
  /**
   * TCP keepalive on every session, its first probe after this long idle. When a dead peer is given up is the
   * socket's probe interval and count, which Node 20 leaves at the kernel's defaults (Linux: 75 s × 9, so about 11
   * minutes). Queries are bounded by `queryMs` whatever TCP does; the LISTEN and lock sessions rely on keepalive.
   */
  keepAliveMs: number;
}

/**
 * How long a watch stream's shared read may wait for a session of its own pool (`ownPool`'s `waitMs`): a stream has no
 * deadline, and the connect timeout of unary calls failed every stream sharing a read while a restart's thousands of
 * reconnections held the event loop.
 */
export const STREAM_READ_WAIT_MS = 30_000;

export const DEFAULT_DATABASE_TIMEOUTS: DatabaseTimeouts = Object.freeze({
  statementMs: 10_000,
  lockMs: 5_000,
  idleInTransactionMs: 30_000,
  queryMs: 12_000,
  connectMs: 5_000,
  keepAliveMs: 10_000,
});

/** Session settings for a pg.Client or pg.Pool on `url` with these timeouts (0 leaves a limit off). */
export function sessionConfig(url: string, t: DatabaseTimeouts = DEFAULT_DATABASE_TIMEOUTS): pg.ClientConfig {
  return {
    connectionString: url,
    ...(t.statementMs > 0 ? { statement_timeout: t.statementMs } : {}),
    ...(t.lockMs > 0 ? { lock_timeout: t.lockMs } : {}),
    ...(t.idleInTransactionMs > 0 ? { idle_in_transaction_session_timeout: t.idleInTransactionMs } : {}),
    ...(t.queryMs > 0 ? { query_timeout: t.queryMs } : {}),
    ...(t.connectMs > 0 ? { connectionTimeoutMillis: t.connectMs } : {}),
    keepAlive: t.keepAliveMs > 0,
    keepAliveInitialDelayMillis: t.keepAliveMs,
  };
}

const READ_TIMEOUT = 'Query read timeout';
/**
 * PostgreSQL's warning when a statement stops waiting for the synchronous standby (it was cancelled, as by
 * pg_cancel_backend, or its session is being ended; statement_timeout does not apply to COMMIT) although the commit is
 * already done on the primary: a cancelled one then succeeds, but the write may exist on the primary alone and be lost
 * if it dies. Matched in English: the server's
 * lc_messages must be C or en (docs/ha-postgresql.md).
 */
const SYNC_REP_CANCELLED = /^cancel+ing (the )?wait for synchronous replication/i;

/**
 * Four guards on every pooled session, because a database that stops answering now makes queries fail instead of hang:
 * - a session that the server ends while it is checked out with no query running (a primary killed or demoted under
 *   a transaction between two statements, an administrator's pg_terminate_backend) emits 'error' with nobody
 *   listening: pg-pool listens only while a session is idle, and an unheard 'error' ends the process. Heard here, the
 *   session is simply unusable: its holder's next query fails (UNAVAILABLE) and the pool drops it when it comes back;
 * - a statement cancelled while it waits for the synchronous standby (PostgreSQL then warns, and reports success, but
 *   the commit is on the primary alone) fails instead (COMMIT_NOT_REPLICATED, "database unavailable"): Weft never
 *   acknowledges a write that the primary's death could take back. Its outcome is unknown to the caller, as for a
 *   session that ends during COMMIT, and a retry (idempotent by handle) finds what was committed;
 * - a session whose query got no answer within query_timeout is closed (so the pool drops it and opens a new one):
 *   its next query would queue behind the unanswered one, and a rollback on it would wait out the timeout again;
 * - a session whose `begin` fails goes back to the pool (closed): drizzle-orm's transaction() (0.45) releases its
 *   session only once `begin` succeeded, so each failed `begin` would otherwise keep a pool slot forever, and after
 *   `max` of them the service could never reach its database again. (Only drizzle sends BEGIN on a pooled session.)
 */
function guardSession(client: pg.PoolClient): void {
  client.on('error', () => {});
  // Set by the server's warning that a statement stopped waiting for the synchronous standby; taken by the next answer.
  let notReplicated = false;
  client.on('notice', (notice: { message?: string }) => {
    if (SYNC_REP_CANCELLED.test(notice.message ?? '')) notReplicated = true;
  });
  const unconfirmed = () => {
    notReplicated = false;
    return new Error(COMMIT_NOT_REPLICATED);
  };
  const query = client.query.bind(client) as (...args: unknown[]) => unknown;
  const close = (err: unknown) => {
    if ((err as Error | undefined)?.message === READ_TIMEOUT)
      (client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
  };
  (client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
    const last = args.length - 1;
    const callback = args[last];
    if (typeof callback === 'function') {
      args[last] = (err: unknown, res: unknown) => {
        close(err);
        if (!err && notReplicated) (callback as (e: unknown) => void)(unconfirmed());
        else (callback as (e: unknown, r: unknown) => void)(err, res);
      };
    }
    let out = query(...args);
    if (out instanceof Promise) {
      // Answers come in order, and the warning comes before the answer of the statement it belongs to.
      out = out.then((res: unknown) => {
        if (notReplicated) throw unconfirmed();
        return res;
      });
      const text = (args[0] as { text?: unknown } | undefined)?.text ?? args[0];
      (out as Promise<unknown>).catch((err: unknown) => {
        close(err);
        if (typeof text === 'string' && /^\s*begin\b/i.test(text))
          client.release(err instanceof Error ? err : new Error(String(err)));
      });
    }
    return out;
  };
}

function createPool(config: pg.PoolConfig): pg.Pool {
  const pool = new pg.Pool(config);
  // An idle client's error (e.g. the server restarting) must not crash the process; the pool replaces it.
  pool.on('error', () => {});
  pool.on('connect', guardSession);
  return pool;
}

export function connectDatabase(url: string, opts: { max?: number; timeouts?: DatabaseTimeouts } = {}): DatabaseHandle {
  const session = sessionConfig(url, opts.timeouts);
  const pool = createPool({ ...session, max: opts.max ?? 20 });
  const db = drizzle(pool) as Database;
  const extra: pg.Pool[] = [];
  return {
    pool,
    db,
    url,
    session,
    preparedPool(n) {
      const p = createPool({ ...session, max: n, min: n, options: '-c plan_cache_mode=force_generic_plan' });
      extra.push(p);
      return p;
    },
    ownPool(n, o = {}) {
      const p = createPool({
        ...session,
        ...(o.waitMs !== undefined ? { connectionTimeoutMillis: o.waitMs } : {}),
        max: n,
        min: n,
      });
      extra.push(p);
      return drizzle(p) as Database;
    },
    async warm(sessions) {
      const n = Math.min(sessions, pool.options.max);
      pool.options.min = n;
      const open = async (p: pg.Pool, count: number) => {
        const clients = await Promise.all(Array.from({ length: count }, () => p.connect()));
        for (const c of clients) c.release();
      };
      await Promise.all([open(pool, n), ...extra.map((p) => open(p, p.options.max))]);
    },
    close: async () => {
      await Promise.all([pool.end(), ...extra.map((p) => p.end())]);
    },
  };
}

/** The project's migrations folder: migrations/<service>/, made with drizzle-kit. */
export function migrationsFolder(service: string): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // Both lib/db (source, via tsx) and dist/lib/db sit two or three levels under the package root.
  for (const up of ['../..', '../../..']) {
    const candidate = path.resolve(here, up, 'migrations', service);
    if (existsSync(candidate)) return candidate;
  }
  throw new Error(`migrations for ${service} not found near ${here}`);
}

import { existsSync } from 'node:fs';

/**
 * Applies a service's migrations to its own schema; each service keeps its own journal table. Migrations run as the
 * owner (`session`: the owner's URL with the handle's connect timeout and keepalive) on a session of their own,
 * without statement, lock or query limits (building an index on a big table may take minutes).
 */
export async function applyMigrations(session: pg.ClientConfig, service: string): Promise<void> {
  const { connectionString, connectionTimeoutMillis, keepAlive, keepAliveInitialDelayMillis } = session;
  const client = new pg.Client({ connectionString, connectionTimeoutMillis, keepAlive, keepAliveInitialDelayMillis });
  client.on('error', () => {});
  await client.connect();
  try {
    await migrate(drizzle(client), {
      migrationsFolder: migrationsFolder(service),
      migrationsSchema: 'drizzle',
      migrationsTable: `${service}_migrations`,
    });
  } finally {
    await client.end().catch(() => {});
  }
}
