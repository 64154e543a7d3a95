import { sql } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import type { NodeRecord } from '../domain/route-table.js';
import { lockChanges, logNodeChanges } from './route-log.repository.js';
import { withDatabaseErrors } from '../../../lib/db/unavailable.js';

/**
 * The only queries on routes.nodes. Each write runs in one transaction with the route-log lock held and logs the
 * node's change (if its entry in the route table changed) before it commits.
 */
export function createNodesRepository(db: Database) {
  const toNode = (r: Record<string, unknown>): NodeRecord => ({
    name: String(r.name),
    underlayAddress: String(r.underlay_address),
    vtepMac: String(r.vtep_mac),
    registeredAt: new Date(r.registered_at as string),
    leaseExpiresAt: new Date(r.lease_expires_at as string),
  });
  const columns = sql`name, host(underlay_address) AS underlay_address, vtep_mac::text AS vtep_mac, registered_at, lease_expires_at`;
  return withDatabaseErrors('routes', {
    /** Adds or updates the node and (re)starts its lease; a node that had departed is no longer departed. */
    async register(
      n: { name: string; underlayAddress: string; vtepMac: string },
      leaseMs: number,
    ): Promise<NodeRecord> {
      return db.transaction(async (tx) => {
        await lockChanges(tx);
        await tx.execute(sql`DELETE FROM routes.departed_nodes WHERE name = ${n.name}`);
        const res = await tx.execute(sql`WITH up AS (
            INSERT INTO routes.nodes (name, underlay_address, vtep_mac, revision, lease_expires_at)
            VALUES (${n.name}, ${n.underlayAddress}::inet, ${n.vtepMac}::macaddr, nextval('routes.revision_seq'), now() + make_interval(secs => ${leaseMs / 1000}))
            ON CONFLICT (name) DO UPDATE SET underlay_address = excluded.underlay_address, vtep_mac = excluded.vtep_mac,
              lease_expires_at = excluded.lease_expires_at,
              revision = CASE WHEN (routes.nodes.underlay_address, routes.nodes.vtep_mac) = (excluded.underlay_address, excluded.vtep_mac)
                              THEN routes.nodes.revision ELSE excluded.revision END
            RETURNING *)
          SELECT ${columns} FROM up`);
        await logNodeChanges(tx, [n.name]);
        return toNode(res.rows[0] as Record<string, unknown>);
      });
    },
    /**
     * Extends a registered node's lease; null when the node is not registered. A withdrawn node comes back.
     *
     * A lease with more than a third of its time left (an agent renews every third) is extended in one statement
     * without the route-log lock: the route table does not change (the node is in it and stays), and no sweep can be
     * withdrawing it, since the sweeper withdraws only expired leases and a third of a lease is far longer than one
     * statement. Only a renewal near or past expiry takes the lock and logs the node's change (a withdrawn node coming
     * back). 5,000 nodes renew about 750 times a second at the default lease: under the lock they queued behind each
     * other and behind every route change.
     */
    async renew(name: string, leaseMs: number): Promise<NodeRecord | null> {
      const quick =
        await db.execute(sql`UPDATE routes.nodes SET lease_expires_at = now() + make_interval(secs => ${leaseMs / 1000})
        WHERE name = ${name} AND lease_expires_at > now() + make_interval(secs => ${leaseMs / 3000}) RETURNING ${columns}`);
      if (quick.rows.length > 0) return toNode(quick.rows[0] as Record<string, unknown>);
      return db.transaction(async (tx) => {
        await lockChanges(tx);
        const res =
          await tx.execute(sql`UPDATE routes.nodes SET lease_expires_at = now() + make_interval(secs => ${leaseMs / 1000})
          WHERE name = ${name} RETURNING ${columns}`);
        if (res.rows.length === 0) return null;
        await logNodeChanges(tx, [name]);
        return toNode(res.rows[0] as Record<string, unknown>);
      });
    },
    /** Removes the node and records when it departed (only a node that was registered departs). */
    async deregister(name: string): Promise<boolean> {
      return db.transaction(async (tx) => {
        await lockChanges(tx);
        const res = await tx.execute(sql`WITH gone AS (DELETE FROM routes.nodes WHERE name = ${name} RETURNING name),
            departed AS (INSERT INTO routes.departed_nodes (name) SELECT name FROM gone
              ON CONFLICT (name) DO UPDATE SET departed_at = excluded.departed_at)
          SELECT name FROM gone`);
        await logNodeChanges(tx, [name]);
        return res.rows.length > 0;
      });
    },
    /** Those of `names` that departed (deregistered, not registered since), with when. */
    async listDeparted(names: string[]): Promise<{ name: string; departedAt: Date }[]> {
      if (names.length === 0) return [];
      const res = await db.execute(sql`SELECT name, departed_at FROM routes.departed_nodes
        WHERE name IN (SELECT jsonb_array_elements_text(${JSON.stringify(names)}::jsonb)) ORDER BY name`);
      return (res.rows as Record<string, unknown>[]).map((r) => ({
        name: String(r.name),
        departedAt: new Date(r.departed_at as string),
      }));
    },
    /** Nodes in name order: after `after` (exclusive) when given, at most `limit` when given. */
    async list(
      page: { after: string | null; limit: number | null } = { after: null, limit: null },
    ): Promise<NodeRecord[]> {
      const res = await db.execute(sql`SELECT ${columns} FROM routes.nodes
        WHERE ${page.after}::text IS NULL OR name > ${page.after} ORDER BY name ${page.limit === null ? sql`` : sql`LIMIT ${page.limit}`}`);
      return (res.rows as Record<string, unknown>[]).map(toNode);
    },
  });
}

export type NodesRepository = ReturnType<typeof createNodesRepository>;
