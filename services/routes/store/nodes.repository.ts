import { sql } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import type { NodeRecord } from '../domain/route-table.js';

export const NODES_CHANNEL = 'routes_nodes';

/** The only queries on the routes service's tables. */
export function createNodesRepository(db: Database) {
  const toNode = (r: Record<string, unknown>): NodeRecord => ({
    name: String(r.name), underlayAddress: String(r.underlay_address), vtepMac: String(r.vtep_mac), registeredAt: new Date(r.registered_at as string),
  });
  return {
    async register(n: { name: string; underlayAddress: string; vtepMac: string }): Promise<NodeRecord> {
      const res = await db.execute(sql`WITH up AS (
          INSERT INTO routes.nodes (name, underlay_address, vtep_mac, revision)
          VALUES (${n.name}, ${n.underlayAddress}::inet, ${n.vtepMac}::macaddr, nextval('routes.revision_seq'))
          ON CONFLICT (name) DO UPDATE SET underlay_address = excluded.underlay_address, vtep_mac = excluded.vtep_mac,
            revision = CASE WHEN (routes.nodes.underlay_address, routes.nodes.vtep_mac) = (excluded.underlay_address, excluded.vtep_mac)
                            THEN routes.nodes.revision ELSE excluded.revision END
          RETURNING *), n AS (SELECT pg_notify(${NODES_CHANNEL}, ''))
        SELECT name, host(underlay_address) AS underlay_address, vtep_mac::text AS vtep_mac, registered_at FROM up, n`);
      return toNode(res.rows[0] as Record<string, unknown>);
    },
    async deregister(name: string): Promise<boolean> {
      const res = await db.execute(sql`WITH d AS (DELETE FROM routes.nodes WHERE name = ${name} RETURNING name), n AS (SELECT pg_notify(${NODES_CHANNEL}, ''))
        SELECT name FROM d, n`);
      return res.rows.length > 0;
    },
    async list(): Promise<NodeRecord[]> {
      const res = await db.execute(sql`SELECT name, host(underlay_address) AS underlay_address, vtep_mac::text AS vtep_mac, registered_at
        FROM routes.nodes ORDER BY name`);
      return (res.rows as Record<string, unknown>[]).map(toNode);
    },
  };
}

export type NodesRepository = ReturnType<typeof createNodesRepository>;
