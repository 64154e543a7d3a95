import { sql, type SQL } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import type { NodeRoutes } from '../domain/route-table.js';
import { withDatabaseErrors } from '../../../lib/db/unavailable.js';
import { LEADER_LOCK_CLASS, LEADER_ROLES } from '../../../lib/db/leadership.js';

/** NOTIFY channel raised by every transaction that appends to routes.changes (a wake-up only; the table is the record). */
export const CHANGES_CHANNEL = 'routes_changes';

/** Advisory lock keys (two-int form, so they are easy to find in pg_locks): Weft's class, then the role (lib/db/leadership.ts). */
const LOCK_CLASS = LEADER_LOCK_CLASS;
const AFFINITY_FOLLOWER_LOCK = LEADER_ROLES['routes-affinity-follower'];
const SWEEPER_LOCK = LEADER_ROLES['routes-lease-sweeper'];

/** Something that runs SQL: the database or a transaction. */
export type Executor = Pick<Database, 'execute'>;

export interface LoggedChange {
  revision: number;
  node: string;
  /** The node's whole entry for an upsert; null for a delete. */
  routes: NodeRoutes | null;
}

export type LogRead =
  /** The affinity follower has never recorded IPAM's snapshot: the table would lack every block, so it is not served. */
  | { kind: 'not_ready' }
  /** `fingerprint`: the sum of the revisions that set the table's entries (with the revision and the count, it tells two tables apart). */
  | { kind: 'snapshot'; revision: number; table: NodeRoutes[]; fingerprint: number }
  | { kind: 'changes'; changes: LoggedChange[] };

const rows = async (db: Executor, q: SQL) => (await db.execute(q)).rows as Record<string, unknown>[];

/**
 * Serializes every writer of the route table. Taken first in each writing transaction and held until commit, so
 * (1) revisions, drawn from routes.change_seq after the lock, commit in revision order, and (2) each writer compares
 * the desired state with the logged state that the previous writer committed.
 */
export async function lockChanges(tx: Executor): Promise<void> {
  await tx.execute(sql`SELECT pg_advisory_xact_lock(hashtext('routes.changes'))`);
}

/**
 * Appends a change for every node (of `names`, or all) whose desired entry differs from the logged one, and makes
 * the logged table equal to the desired one. Desired: nodes with a live lease, with the blocks the affinity follower
 * recorded for them. Idempotent: a second call with nothing changed writes nothing. Caller holds lockChanges.
 */
export async function logNodeChanges(tx: Executor, names: string[] | 'all'): Promise<LoggedChange[]> {
  const only =
    names === 'all' ? sql`true` : sql`name IN (SELECT jsonb_array_elements_text(${JSON.stringify(names)}::jsonb))`;
  const onlyLogged =
    names === 'all' ? sql`true` : sql`node IN (SELECT jsonb_array_elements_text(${JSON.stringify(names)}::jsonb))`;
  if (names !== 'all' && names.length === 0) return [];
  const res = await rows(
    tx,
    sql`
    WITH desired AS (
      SELECT n.name AS node, jsonb_build_object(
          'node', n.name, 'underlayAddress', host(n.underlay_address), 'vtepMac', n.vtep_mac::text,
          'blockCidrs', coalesce((SELECT jsonb_agg(b.cidr::text ORDER BY b.cidr::text) FROM routes.block_affinities b WHERE b.node = n.name), '[]'::jsonb)
        ) AS routes
      FROM routes.nodes n WHERE n.lease_expires_at > now() AND ${only}
    ), logged AS (
      SELECT node, routes FROM routes.route_table WHERE ${onlyLogged}
    ), diff AS (
      SELECT coalesce(d.node, l.node) AS node, d.routes FROM desired d FULL JOIN logged l ON l.node = d.node
      WHERE d.routes IS DISTINCT FROM l.routes ORDER BY 1
    ), ins AS (
      INSERT INTO routes.changes (revision, node, kind, routes)
      SELECT nextval('routes.change_seq'), node, CASE WHEN routes IS NULL THEN 'delete' ELSE 'upsert' END, routes FROM diff
      RETURNING revision, node, routes
    ), up AS (
      INSERT INTO routes.route_table (node, routes, revision) SELECT node, routes, revision FROM ins WHERE routes IS NOT NULL
      ON CONFLICT (node) DO UPDATE SET routes = excluded.routes, revision = excluded.revision
    ), del AS (
      DELETE FROM routes.route_table WHERE node IN (SELECT node FROM ins WHERE routes IS NULL)
    )
    SELECT revision, node, routes FROM ins ORDER BY revision`,
  );
  if (res.length > 0) await tx.execute(sql`SELECT pg_notify(${CHANGES_CHANNEL}, '')`);
  return res.map((r) => ({
    revision: Number(r.revision),
    node: String(r.node),
    routes: (r.routes as NodeRoutes | null) ?? null,
  }));
}

/**
 * Leases do not run out while the control plane is down. `log_horizon.live_at` is when the routes service was last
 * seen up with its database (each call sets it; the sweeper calls it every quarter lease, at most every second). When
 * it is older than three sweeps (at most half a lease), the control plane (or its database) was down since then, and no agent could renew:
 * every lease still live at `live_at` gets a full lease from now, so agents have one lease period to renew before
 * anything is withdrawn, and a restart after a long outage withdraws no node whose agent renews (nodes whose lease had
 * run out before the outage stay out). Run before anything compares leases with now() for nodes other than the one
 * being written (the sweep, the affinity follower's writes). Caller holds lockChanges. Returns how many were extended.
 */
export async function resumeLeases(tx: Executor, leaseMs: number): Promise<number> {
  const lease = sql`make_interval(secs => ${leaseMs / 1000})`;
  // Down: no call for three sweep periods (the sweeper's, main.ts), at most half a lease. Not half a lease alone: an
  // outage a little shorter than that (a clean stop and start) left leases renewed just before it to run out before
  // agents, whose gRPC channels reconnect with backoff, got a renewal through.
  const downAfterMs = Math.min(leaseMs / 2, 3 * Math.max(50, Math.min(1000, Math.floor(leaseMs / 4))));
  const [r] = await rows(
    tx,
    sql`WITH h AS (SELECT live_at FROM routes.log_horizon WHERE id = 1),
      ext AS (UPDATE routes.nodes n SET lease_expires_at = now() + ${lease} FROM h
        WHERE h.live_at < now() - make_interval(secs => ${downAfterMs / 1000})
          AND n.lease_expires_at > h.live_at AND n.lease_expires_at < now() + ${lease}
        RETURNING n.name),
      up AS (UPDATE routes.log_horizon SET live_at = now() WHERE id = 1)
    SELECT count(*) AS n FROM ext`,
  );
  return Number(r!.n);
}

/** Reads and writes of the revision log that are not node registrations. `leaseMs`: the node lease (resumeLeases). */
export function createRouteLogRepository(db: Database, opts: { leaseMs: number }) {
  return withDatabaseErrors('routes', {
    /**
     * What a watcher at `since` needs, read in one snapshot: the changes after it (at most `limit`) when they are all
     * still in the log, else the whole logged table and its revision (a REPEATABLE READ transaction).
     */
    async read(since: number, limit = 500): Promise<LogRead> {
      // A watcher following the log (the read of every wake-up): the horizon and the changes after `since` in one
      // statement, so one snapshot and one round trip (not BEGIN, horizon, changes, COMMIT). Only when it is owed the
      // table does it read again, below.
      if (since > 0) {
        const res = await rows(
          db,
          sql`WITH h AS (
              SELECT compacted_through, affinities_synced_at IS NOT NULL AS ready,
                greatest(compacted_through, (SELECT coalesce(max(revision), 0) FROM routes.changes)) AS head
              FROM routes.log_horizon WHERE id = 1)
            SELECT h.ready, h.compacted_through, h.head, c.revision, c.node, c.routes
            FROM h LEFT JOIN LATERAL (
              SELECT revision, node, routes FROM routes.changes
              WHERE h.ready AND h.compacted_through <= ${since} AND ${since} <= h.head AND revision > ${since}
              ORDER BY revision LIMIT ${limit}
            ) c ON true
            ORDER BY c.revision`,
        );
        const h = res[0]!;
        if (!h.ready) return { kind: 'not_ready' };
        if (Number(h.compacted_through) <= since && since <= Number(h.head))
          return {
            kind: 'changes',
            changes: res
              .filter((r) => r.revision !== null)
              .map((r) => ({
                revision: Number(r.revision),
                node: String(r.node),
                routes: (r.routes as NodeRoutes | null) ?? null,
              })),
          };
      }
      return db.transaction(
        async (tx) => {
          const [h] = await rows(
            tx,
            sql`SELECT compacted_through, affinities_synced_at IS NOT NULL AS ready,
            greatest(compacted_through, (SELECT coalesce(max(revision), 0) FROM routes.changes)) AS head
          FROM routes.log_horizon WHERE id = 1`,
          );
          if (!h!.ready) return { kind: 'not_ready' };
          const compacted = Number(h!.compacted_through);
          const head = Number(h!.head);
          if (since === 0 || since < compacted || since > head) {
            const table = await rows(tx, sql`SELECT routes, revision FROM routes.route_table ORDER BY node`);
            return {
              kind: 'snapshot',
              revision: head,
              table: table.map((r) => r.routes as NodeRoutes),
              fingerprint: table.reduce((s, r) => s + Number(r.revision), 0),
            };
          }
          const res = await rows(
            tx,
            sql`SELECT revision, node, routes FROM routes.changes WHERE revision > ${since} ORDER BY revision LIMIT ${limit}`,
          );
          return {
            kind: 'changes',
            changes: res.map((r) => ({
              revision: Number(r.revision),
              node: String(r.node),
              routes: (r.routes as NodeRoutes | null) ?? null,
            })),
          };
        },
        { isolationLevel: 'repeatable read', accessMode: 'read only' },
      );
    },

    /**
     * Records one message of IPAM's affinity watch (a reset replaces everything) and logs the nodes it affects,
     * but only while `followerPid` (the affinity follower's session, which is also the session this repository
     * writes on: services/routes/affinity-follower.ts) still holds the follower lock, checked under lockChanges, which
     * every writer of the log takes: a follower that lost its lock can no longer write. Returns false when fenced off.
     */
    async applyAffinities(
      followerPid: number,
      msg: { reset: boolean; upserts: { cidr: string; node: string }[]; deletes: string[] },
    ): Promise<boolean> {
      return db.transaction(async (tx) => {
        await lockChanges(tx);
        const [fence] = await rows(
          tx,
          sql`SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
            AND classid = ${LOCK_CLASS} AND objid = ${AFFINITY_FOLLOWER_LOCK} AND objsubid = 2 AND pid = ${followerPid}
            AND pid = pg_backend_pid()
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) AS held`,
        );
        if (!fence!.held) return false;
        await resumeLeases(tx, opts.leaseMs);
        const affected = new Set<string>();
        const ups = JSON.stringify(msg.upserts.map((u) => ({ cidr: u.cidr, node: u.node })));
        if (msg.reset) {
          // The first reset makes the log servable: wake streams that wait for it even when no entry changes.
          await tx.execute(sql`WITH u AS (UPDATE routes.log_horizon SET affinities_synced_at = now() WHERE id = 1 AND affinities_synced_at IS NULL RETURNING 1)
            SELECT pg_notify(${CHANGES_CHANNEL}, '') FROM u`);
          for (const r of await rows(tx, sql`DELETE FROM routes.block_affinities RETURNING node`))
            affected.add(String(r.node));
        } else if (msg.deletes.length > 0 || msg.upserts.length > 0) {
          const gone = JSON.stringify([...msg.deletes, ...msg.upserts.map((u) => u.cidr)]);
          for (const r of await rows(
            tx,
            sql`DELETE FROM routes.block_affinities
              WHERE cidr IN (SELECT c::cidr FROM jsonb_array_elements_text(${gone}::jsonb) c) RETURNING node`,
          ))
            affected.add(String(r.node));
        }
        if (msg.upserts.length > 0) {
          await tx.execute(sql`INSERT INTO routes.block_affinities (cidr, node)
            SELECT (u->>'cidr')::cidr, u->>'node' FROM jsonb_array_elements(${ups}::jsonb) u
            ON CONFLICT (cidr) DO UPDATE SET node = excluded.node`);
          for (const u of msg.upserts) affected.add(u.node);
        }
        await logNodeChanges(tx, [...affected]);
        return true;
      });
    },

    /**
     * One sweep, by the lease sweeper's leader on its lock's session (services/routes/lease-sweeper.ts; the
     * transaction-scoped try-lock of the same key succeeds in that session and keeps anyone else out), once block
     * affinities were synced (before that, logging every node without its blocks would withdraw routes): withdraws nodes
     * whose lease ran out, logs anything else that differs (e.g. after an upgrade), and compacts the log: a change
     * goes once it is neither among the newest `keep` nor younger than `maxAgeSeconds` (the newest one always stays).
     */
    async sweep(compaction: {
      keep: number;
      maxAgeSeconds: number;
    }): Promise<{ swept: boolean; changes: LoggedChange[]; compacted: number; resumed: number }> {
      return db.transaction(async (tx) => {
        const [got] = await rows(tx, sql`SELECT pg_try_advisory_xact_lock(${LOCK_CLASS}, ${SWEEPER_LOCK}) AS got`);
        if (!got!.got) return { swept: false, changes: [], compacted: 0, resumed: 0 };
        await lockChanges(tx);
        // Also while not ready: the service is up and agents can renew, so that time counts against leases.
        const resumed = await resumeLeases(tx, opts.leaseMs);
        const [ready] = await rows(
          tx,
          sql`SELECT affinities_synced_at IS NOT NULL AS ready FROM routes.log_horizon WHERE id = 1`,
        );
        if (!ready!.ready) return { swept: false, changes: [], compacted: 0, resumed };
        const changes = await logNodeChanges(tx, 'all');
        const [c] = await rows(
          tx,
          sql`WITH head AS (SELECT coalesce(max(revision), 0) AS r FROM routes.changes),
            gone AS (DELETE FROM routes.changes WHERE revision < (SELECT r FROM head)
              AND revision <= (SELECT r FROM head) - ${compaction.keep} AND changed_at < now() - make_interval(secs => ${compaction.maxAgeSeconds})
              RETURNING revision),
            h AS (UPDATE routes.log_horizon SET compacted_through = greatest(compacted_through, (SELECT max(revision) FROM gone))
              WHERE id = 1 AND EXISTS (SELECT 1 FROM gone))
          SELECT count(*) AS n FROM gone`,
        );
        return { swept: true, changes, compacted: Number(c!.n), resumed };
      });
    },
  });
}

export type RouteLogRepository = ReturnType<typeof createRouteLogRepository>;
