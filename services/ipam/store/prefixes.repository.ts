import { sql } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import { DomainError } from '../../../lib/errors.js';
import { formatCidr, parseCidr, type Cidr } from '../../../lib/net/ip.js';
import { lowestFreePrefix } from '../domain/prefixes.js';
import { PG, pgErrorOf } from './pg-errors.js';
import { withDatabaseErrors } from '../../../lib/db/unavailable.js';
import type { aggregates, clusters, prefixes, routingDomains } from './schema.js';
import { rows as rowsOf, type Tx } from './sql.js';

/**
 * Routing domains, clusters, aggregates and the prefixes carved from them for clusters. The database refuses
 * overlapping aggregates, and overlapping live prefixes, within a domain (GiST exclusion with btree_gist); the
 * carving itself (domain/prefixes.ts) runs under a per-aggregate advisory lock so that callers queue, not collide.
 */
type DomainRow = Pick<typeof routingDomains.$inferSelect, 'name' | 'createdAt'>;
type ClusterRow = Pick<typeof clusters.$inferSelect, 'id' | 'name' | 'routingDomainId' | 'createdAt'>;
type AggregateRow = Pick<typeof aggregates.$inferSelect, 'id' | 'name' | 'routingDomainId' | 'cidr' | 'createdAt'>;
type PrefixView = Pick<typeof prefixes.$inferSelect, 'id' | 'purpose' | 'cidr' | 'createdAt'> & {
  aggregate: string;
  cluster: string;
};

export interface RoutingDomain {
  name: string;
  createdAt: Date;
}
export interface Cluster {
  name: string;
  routingDomain: string;
  createdAt: Date;
}
export interface Aggregate {
  name: string;
  routingDomain: string;
  cidr: string;
  createdAt: Date;
}
export interface Prefix {
  id: number;
  aggregate: string;
  cluster: string;
  purpose: string;
  cidr: string;
  createdAt: Date;
}

const notFound = (what: string, name: string) =>
  new DomainError(`ipam.${what.replace(' ', '_')}_not_found`, 'not_found', `no ${what} named ${JSON.stringify(name)}`);

const PREFIX_COLUMNS = sql`x.id, a.name AS aggregate, c.name AS cluster, x.purpose, x.cidr::text AS cidr, x.created_at AS "createdAt"`;
const toPrefix = (r: PrefixView): Prefix => ({
  id: Number(r.id),
  aggregate: r.aggregate,
  cluster: r.cluster,
  purpose: r.purpose,
  cidr: r.cidr,
  createdAt: new Date(r.createdAt),
});

export function createPrefixesRepository(db: Database) {
  async function domainId(tx: Tx, name: string): Promise<number> {
    const [d] = await rowsOf<{ id: number }>(tx, sql`SELECT id FROM ipam.routing_domains WHERE name = ${name}`);
    if (!d) throw notFound('routing domain', name);
    return Number(d.id);
  }

  return withDatabaseErrors('ipam', {
    async createRoutingDomain(name: string): Promise<RoutingDomain> {
      try {
        const [r] = await rowsOf<DomainRow>(
          db,
          sql`INSERT INTO ipam.routing_domains (name) VALUES (${name}) RETURNING name, created_at AS "createdAt"`,
        );
        return { name: r!.name, createdAt: new Date(r!.createdAt) };
      } catch (err) {
        if (pgErrorOf(err)?.code === PG.uniqueViolation)
          throw new DomainError(
            'ipam.routing_domain_exists',
            'already_exists',
            `routing domain ${name} already exists`,
          );
        throw err;
      }
    },
    async listRoutingDomains(): Promise<RoutingDomain[]> {
      return (
        await rowsOf<DomainRow>(db, sql`SELECT name, created_at AS "createdAt" FROM ipam.routing_domains ORDER BY name`)
      ).map((r) => ({ name: r.name, createdAt: new Date(r.createdAt) }));
    },
    async registerCluster(name: string, domain: string): Promise<Cluster> {
      const id = await domainId(db, domain);
      const [r] = await rowsOf<ClusterRow>(
        db,
        sql`INSERT INTO ipam.clusters (name, routing_domain_id) VALUES (${name}, ${id})
        ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING name, routing_domain_id AS "routingDomainId", created_at AS "createdAt"`,
      );
      if (Number(r!.routingDomainId) !== id)
        throw new DomainError(
          'ipam.cluster_exists',
          'already_exists',
          `cluster ${name} is registered in another routing domain`,
        );
      return { name, routingDomain: domain, createdAt: new Date(r!.createdAt) };
    },
    async listClusters(): Promise<Cluster[]> {
      return (
        await rowsOf<Pick<ClusterRow, 'name' | 'createdAt'> & { domain: string }>(
          db,
          sql`SELECT c.name, d.name AS domain, c.created_at AS "createdAt" FROM ipam.clusters c
        JOIN ipam.routing_domains d ON d.id = c.routing_domain_id ORDER BY c.name`,
        )
      ).map((r) => ({ name: r.name, routingDomain: r.domain, createdAt: new Date(r.createdAt) }));
    },
    async createAggregate(name: string, domain: string, cidr: Cidr): Promise<Aggregate> {
      const id = await domainId(db, domain);
      try {
        const [r] = await rowsOf<Pick<AggregateRow, 'cidr' | 'createdAt'>>(
          db,
          sql`INSERT INTO ipam.aggregates (name, routing_domain_id, cidr) VALUES (${name}, ${id}, ${formatCidr(cidr)}::cidr)
          RETURNING cidr::text AS cidr, created_at AS "createdAt"`,
        );
        return { name, routingDomain: domain, cidr: r!.cidr, createdAt: new Date(r!.createdAt) };
      } catch (err) {
        const code = pgErrorOf(err)?.code;
        if (code === PG.uniqueViolation)
          throw new DomainError('ipam.aggregate_exists', 'already_exists', `an aggregate named ${name} already exists`);
        if (code === PG.exclusionViolation)
          throw new DomainError(
            'ipam.aggregate_overlaps',
            'already_exists',
            `aggregate ${formatCidr(cidr)} overlaps another in routing domain ${domain}`,
          );
        throw err;
      }
    },
    async listAggregates(): Promise<Aggregate[]> {
      return (
        await rowsOf<Pick<AggregateRow, 'name' | 'cidr' | 'createdAt'> & { domain: string }>(
          db,
          sql`SELECT a.name, d.name AS domain, a.cidr::text AS cidr,
          a.created_at AS "createdAt" FROM ipam.aggregates a JOIN ipam.routing_domains d ON d.id = a.routing_domain_id ORDER BY a.name`,
        )
      ).map((r) => ({ name: r.name, routingDomain: r.domain, cidr: r.cidr, createdAt: new Date(r.createdAt) }));
    },
    async allocatePrefix(
      clusterName: string,
      aggregateName: string,
      prefixLength: number,
      purpose: string,
    ): Promise<Prefix> {
      return db.transaction(async (tx) => {
        const [agg] = await rowsOf<Pick<AggregateRow, 'id' | 'routingDomainId' | 'cidr'>>(
          tx,
          sql`SELECT id, routing_domain_id AS "routingDomainId", cidr::text AS cidr
          FROM ipam.aggregates WHERE name = ${aggregateName}`,
        );
        if (!agg) throw notFound('aggregate', aggregateName);
        const [cl] = await rowsOf<Pick<ClusterRow, 'id' | 'routingDomainId'>>(
          tx,
          sql`SELECT id, routing_domain_id AS "routingDomainId" FROM ipam.clusters WHERE name = ${clusterName}`,
        );
        if (!cl) throw notFound('cluster', clusterName);
        if (cl.routingDomainId !== agg.routingDomainId)
          throw new DomainError(
            'ipam.routing_domain_mismatch',
            'failed_precondition',
            `cluster ${clusterName} and aggregate ${aggregateName} are in different routing domains`,
          );
        await tx.execute(sql`SELECT pg_advisory_xact_lock(hashtext('ipam.prefixes'), ${agg.id})`);
        const [existing] = await rowsOf<PrefixView>(
          tx,
          sql`SELECT ${PREFIX_COLUMNS} FROM ipam.prefixes x JOIN ipam.aggregates a ON a.id = x.aggregate_id JOIN ipam.clusters c ON c.id = x.cluster_id
          WHERE x.cluster_id = ${cl.id} AND x.aggregate_id = ${agg.id} AND x.purpose = ${purpose} AND x.released_at IS NULL`,
        );
        if (existing) {
          const p = toPrefix(existing);
          if (Number(p.cidr.split('/')[1]) !== prefixLength)
            throw new DomainError(
              'ipam.prefix_exists',
              'already_exists',
              `cluster ${clusterName} already holds ${p.cidr} for ${purpose} from ${aggregateName}; release it to change its length`,
            );
          return p;
        }
        // Everything live in the domain that overlaps the aggregate blocks a slot (other aggregates cannot overlap it).
        const taken = (
          await rowsOf<{ cidr: string }>(
            tx,
            sql`SELECT cidr::text AS cidr FROM ipam.prefixes WHERE routing_domain_id = ${agg.routingDomainId}
          AND released_at IS NULL AND cidr && ${agg.cidr}::cidr`,
          )
        ).map((r) => parseCidr(r.cidr));
        const free = lowestFreePrefix(parseCidr(agg.cidr), taken, prefixLength);
        if (!free)
          throw new DomainError(
            'ipam.aggregate_exhausted',
            'exhausted',
            `aggregate ${aggregateName} (${agg.cidr}) has no free /${prefixLength}`,
          );
        const [r] = await rowsOf<PrefixView>(
          tx,
          sql`WITH x AS (INSERT INTO ipam.prefixes (aggregate_id, routing_domain_id, cluster_id, purpose, cidr)
            VALUES (${agg.id}, ${agg.routingDomainId}, ${cl.id}, ${purpose}, ${formatCidr(free)}::cidr) RETURNING *)
          SELECT ${PREFIX_COLUMNS} FROM x JOIN ipam.aggregates a ON a.id = x.aggregate_id JOIN ipam.clusters c ON c.id = x.cluster_id`,
        );
        return toPrefix(r!);
      });
    },
    async releasePrefix(aggregateName: string, id: number): Promise<boolean> {
      const r = await rowsOf(
        db,
        sql`UPDATE ipam.prefixes x SET released_at = now() FROM ipam.aggregates a
        WHERE a.id = x.aggregate_id AND a.name = ${aggregateName} AND x.id = ${id} AND x.released_at IS NULL RETURNING x.id`,
      );
      return r.length > 0;
    },
    async listPrefixes(filter: { cluster: string | null; aggregate: string | null }): Promise<Prefix[]> {
      return (
        await rowsOf<PrefixView>(
          db,
          sql`SELECT ${PREFIX_COLUMNS} FROM ipam.prefixes x JOIN ipam.aggregates a ON a.id = x.aggregate_id JOIN ipam.clusters c ON c.id = x.cluster_id
        WHERE x.released_at IS NULL AND (${filter.cluster}::text IS NULL OR c.name = ${filter.cluster}) AND (${filter.aggregate}::text IS NULL OR a.name = ${filter.aggregate})
        ORDER BY x.cidr`,
        )
      ).map(toPrefix);
    },
  });
}

export type PrefixesRepository = ReturnType<typeof createPrefixesRepository>;
