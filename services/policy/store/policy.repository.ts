import { sql, type SQL } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import type { Protocol } from '../domain/model.js';
import { withDatabaseErrors } from '../../../lib/db/unavailable.js';

/** The only queries on the policy schema. Every change takes the next `policy.revision_seq` value. */
export interface PodRecord {
  namespace: string;
  name: string;
  labels: Record<string, string>;
  node: string;
  addresses: string[];
  ports: { name: string; port: number; protocol: Protocol }[];
  /** The revision of the row's last change (in a snapshot). */
  revision?: number;
}

/** A pod as listed: with whether a controller described it and the sandbox of its attachment ('' when none). */
export interface ListedPodRecord extends PodRecord {
  described: boolean;
  containerId: string;
}

export interface PolicyRecord {
  kind: string;
  namespace: string;
  name: string;
  object: unknown;
  updatedAt: Date;
  /** The revision of the row's last change (in a snapshot). */
  revision?: number;
}

export interface Snapshot {
  revision: number;
  namespaces: Map<string, Record<string, string>>;
  pods: PodRecord[];
  policies: PolicyRecord[];
}

type Row = Record<string, unknown>;
const NEXT = sql`nextval('policy.revision_seq')`;
/** NOTIFY'd after every change: wakes the WatchNodePolicy streams (which also re-read on a timer). */
export const POLICY_CHANNEL = 'policy_changes';
const NOTIFY = sql`SELECT pg_notify('policy_changes', '')`;

export function createPolicyRepository(db: Database) {
  const rows = async (q: SQL) => (await db.execute(q)).rows as Row[];
  const revisionOf = (r: Row[]) => Number(r[0]?.revision ?? 0);
  /** Runs a change, then wakes the watchers (after its commit: a watcher woken early would read the old state). */
  const notifying = async <T>(change: Promise<T>): Promise<T> => {
    const out = await change;
    await db.execute(NOTIFY);
    return out;
  };

  return withDatabaseErrors('policy', {
    async upsertNamespace(name: string, labels: Record<string, string>): Promise<number> {
      return notifying(
        rows(sql`INSERT INTO policy.namespaces (name, labels, revision) VALUES (${name}, ${JSON.stringify(labels)}::jsonb, ${NEXT})
        ON CONFLICT (name) DO UPDATE SET labels = excluded.labels, revision = excluded.revision RETURNING revision`).then(
          revisionOf,
        ),
      );
    },
    async deleteNamespace(name: string): Promise<{ deleted: boolean; revision: number }> {
      return notifying(
        db.transaction(async (tx) => {
          const gone =
            (await tx.execute(sql`DELETE FROM policy.namespaces WHERE name = ${name} RETURNING name`)).rows.length > 0;
          await tx.execute(sql`DELETE FROM policy.pods WHERE namespace = ${name}`);
          await tx.execute(sql`DELETE FROM policy.policies WHERE namespace = ${name}`);
          const [r] = (await tx.execute(sql`SELECT ${NEXT} AS revision`)).rows as Row[];
          return { deleted: gone, revision: Number(r!.revision) };
        }),
      );
    },
    async upsertPod(p: PodRecord): Promise<number> {
      return notifying(
        rows(sql`INSERT INTO policy.pods (namespace, name, labels, node, addresses, ports, revision)
        VALUES (${p.namespace}, ${p.name}, ${JSON.stringify(p.labels)}::jsonb, ${p.node},
          (SELECT coalesce(array_agg(v), '{}'::text[]) FROM jsonb_array_elements_text(${JSON.stringify(p.addresses)}::jsonb) v),
          ${JSON.stringify(p.ports)}::jsonb, ${NEXT})
        ON CONFLICT (namespace, name) DO UPDATE SET labels = excluded.labels, node = excluded.node, addresses = excluded.addresses,
          ports = excluded.ports, described = true, revision = excluded.revision
        RETURNING revision`).then(revisionOf),
      );
    },
    /**
     * A controller's description (UpsertPod with keep_attachment): sets labels and ports and marks the pod described,
     * keeping the node and addresses of its attachment; a pod not attached (no sandbox) takes `node` and keeps the
     * addresses it has (none when new). A description that changes nothing takes no revision and wakes nobody: a
     * controller re-sends every pod after each relist.
     */
    async describePod(p: Omit<PodRecord, 'addresses' | 'revision'>): Promise<number> {
      const r =
        await rows(sql`INSERT INTO policy.pods AS p (namespace, name, labels, node, addresses, ports, described, revision)
        VALUES (${p.namespace}, ${p.name}, ${JSON.stringify(p.labels)}::jsonb, ${p.node}, '{}'::text[], ${JSON.stringify(p.ports)}::jsonb, true, ${NEXT})
        ON CONFLICT (namespace, name) DO UPDATE SET labels = excluded.labels, ports = excluded.ports, described = true,
          node = CASE WHEN p.container_id = '' THEN excluded.node ELSE p.node END, revision = excluded.revision
          WHERE (p.labels, p.ports, p.described, p.node)
            IS DISTINCT FROM (excluded.labels, excluded.ports, true, CASE WHEN p.container_id = '' THEN excluded.node ELSE p.node END)
        RETURNING revision`);
      if (r.length === 0) {
        const held = await rows(
          sql`SELECT revision FROM policy.pods WHERE namespace = ${p.namespace} AND name = ${p.name}`,
        );
        return Number(held[0]?.revision ?? 0);
      }
      await db.execute(NOTIFY);
      return Number(r[0]!.revision);
    },
    /** Sets the pod's node, sandbox and addresses, keeping its labels and ports; creates it, undescribed, when unknown. */
    async attachPod(
      namespace: string,
      name: string,
      node: string,
      containerId: string,
      addresses: string[],
      resync = false,
    ): Promise<{ revision: number; known: boolean }> {
      // A report that changes nothing (an agent re-reporting its pods at start) takes no revision and wakes nobody.
      const r =
        await rows(sql`INSERT INTO policy.pods AS p (namespace, name, node, container_id, addresses, described, revision)
        VALUES (${namespace}, ${name}, ${node}, ${containerId},
          (SELECT coalesce(array_agg(v), '{}'::text[]) FROM jsonb_array_elements_text(${JSON.stringify(addresses)}::jsonb) v),
          false, ${NEXT})
        ON CONFLICT (namespace, name) DO UPDATE SET node = excluded.node, container_id = excluded.container_id,
          addresses = excluded.addresses, revision = excluded.revision
          WHERE (p.node, p.container_id, p.addresses) IS DISTINCT FROM (excluded.node, excluded.container_id, excluded.addresses)
            AND (NOT ${resync} OR p.container_id IN ('', excluded.container_id))
        RETURNING revision, (xmax <> 0) AS known`);
      if (r.length === 0) {
        const held = await rows(
          sql`SELECT revision FROM policy.pods WHERE namespace = ${namespace} AND name = ${name}`,
        );
        return { revision: Number(held[0]?.revision ?? 0), known: true };
      }
      await db.execute(NOTIFY);
      return { revision: Number(r[0]!.revision), known: Boolean(r[0]!.known) };
    },
    /** The node of the pod attached under the sandbox (who may detach it), or null when none is. */
    async nodeOfContainer(containerId: string): Promise<string | null> {
      const [r] = await rows(sql`SELECT node FROM policy.pods WHERE container_id = ${containerId} LIMIT 1`);
      return r ? String(r.node) : null;
    },
    /**
     * The pod attached under the sandbox loses its addresses and sandbox; one that only attachments made known is
     * deleted. Nothing changes (and no revision is taken) when no pod is attached under it any more.
     */
    async detachPod(
      containerId: string,
    ): Promise<{ namespace: string; name: string; deleted: boolean; revision: number }> {
      const r =
        await rows(sql`WITH p AS (SELECT namespace, name, described FROM policy.pods WHERE container_id = ${containerId} FOR UPDATE),
          d AS (DELETE FROM policy.pods x USING p WHERE x.namespace = p.namespace AND x.name = p.name AND NOT p.described RETURNING x.namespace),
          u AS (UPDATE policy.pods x SET addresses = '{}', container_id = '', revision = ${NEXT}
            FROM p WHERE x.namespace = p.namespace AND x.name = p.name AND p.described RETURNING x.revision)
        SELECT p.namespace, p.name, NOT p.described AS deleted,
          coalesce((SELECT revision FROM u), CASE WHEN EXISTS (SELECT 1 FROM d) THEN ${NEXT} END) AS revision FROM p`);
      if (r.length === 0) return { namespace: '', name: '', deleted: false, revision: 0 };
      await db.execute(NOTIFY);
      return {
        namespace: String(r[0]!.namespace),
        name: String(r[0]!.name),
        deleted: Boolean(r[0]!.deleted),
        revision: Number(r[0]!.revision ?? 0),
      };
    },
    async deletePod(namespace: string, name: string): Promise<{ deleted: boolean; revision: number }> {
      const r = await notifying(
        rows(sql`WITH d AS (DELETE FROM policy.pods WHERE namespace = ${namespace} AND name = ${name} RETURNING 1)
        SELECT (SELECT count(*) FROM d) > 0 AS deleted, ${NEXT} AS revision`),
      );
      return { deleted: Boolean(r[0]!.deleted), revision: Number(r[0]!.revision) };
    },
    /** All or none, in one transaction. */
    async applyPolicies(items: { kind: string; namespace: string; name: string; object: unknown }[]): Promise<number> {
      return notifying(
        db.transaction(async (tx) => {
          let revision = 0;
          for (const p of items) {
            const [r] = (
              await tx.execute(sql`INSERT INTO policy.policies (kind, namespace, name, object, revision)
            VALUES (${p.kind}, ${p.namespace}, ${p.name}, ${JSON.stringify(p.object)}::jsonb, ${NEXT})
            ON CONFLICT (kind, namespace, name) DO UPDATE SET object = excluded.object, updated_at = now(), revision = excluded.revision
            RETURNING revision`)
            ).rows as Row[];
            revision = Number(r!.revision);
          }
          return revision;
        }),
      );
    },
    async deletePolicy(kind: string, namespace: string, name: string): Promise<{ deleted: boolean; revision: number }> {
      const r = await notifying(
        rows(sql`WITH d AS (DELETE FROM policy.policies WHERE kind = ${kind} AND namespace = ${namespace} AND name = ${name} RETURNING 1)
        SELECT (SELECT count(*) FROM d) > 0 AS deleted, ${NEXT} AS revision`),
      );
      return { deleted: Boolean(r[0]!.deleted), revision: Number(r[0]!.revision) };
    },
    /** Policies by kind, namespace and name: after the key `after` (exclusive) when given, at most `limit` when given. */
    async listPolicies(
      namespace: string | null,
      page: { after: string[] | null; limit: number | null } = { after: null, limit: null },
    ): Promise<PolicyRecord[]> {
      const [k, ns, n] = page.after ?? [null, null, null];
      return (
        await rows(sql`SELECT kind, namespace, name, object, updated_at FROM policy.policies
        WHERE (${namespace}::text IS NULL OR namespace = ${namespace}) AND (${k}::text IS NULL OR (kind, namespace, name) > (${k}::text, ${ns}::text, ${n}::text))
        ORDER BY kind, namespace, name ${page.limit === null ? sql`` : sql`LIMIT ${page.limit}`}`)
      ).map((r) => ({
        kind: String(r.kind),
        namespace: String(r.namespace),
        name: String(r.name),
        object: r.object,
        updatedAt: new Date(r.updated_at as string),
      }));
    },
    /** Namespaces by name, after `after` (exclusive) when given, at most `limit`. */
    async listNamespaces(page: {
      after: string | null;
      limit: number;
    }): Promise<{ name: string; labels: Record<string, string> }[]> {
      return (
        await rows(sql`SELECT name, labels FROM policy.namespaces WHERE (${page.after}::text IS NULL OR name > ${page.after}::text)
        ORDER BY name LIMIT ${page.limit}`)
      ).map((r) => ({ name: String(r.name), labels: r.labels as Record<string, string> }));
    },
    /** Pods (of one namespace, or all) by namespace and name, after the key `after` (exclusive) when given, at most `limit`. */
    async listPods(
      namespace: string | null,
      page: { after: [string, string] | null; limit: number },
    ): Promise<ListedPodRecord[]> {
      const [ns, n] = page.after ?? [null, null];
      return (
        await rows(sql`SELECT namespace, name, labels, node, addresses, ports, described, container_id FROM policy.pods
        WHERE (${namespace}::text IS NULL OR namespace = ${namespace}::text) AND (${ns}::text IS NULL OR (namespace, name) > (${ns}::text, ${n}::text))
        ORDER BY namespace, name LIMIT ${page.limit}`)
      ).map((r) => ({
        namespace: String(r.namespace),
        name: String(r.name),
        labels: r.labels as Record<string, string>,
        node: String(r.node),
        addresses: r.addresses as string[],
        ports: r.ports as PodRecord['ports'],
        described: Boolean(r.described),
        containerId: String(r.container_id),
      }));
    },
    /** Everything, read in one snapshot (REPEATABLE READ): what Explain evaluates against. */
    async snapshot(): Promise<Snapshot> {
      return db.transaction(
        async (tx) => {
          const q = async (s: SQL) => (await tx.execute(s)).rows as Row[];
          const [rev] = await q(
            sql`SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS revision FROM policy.revision_seq`,
          );
          const ns = await q(sql`SELECT name, labels FROM policy.namespaces`);
          const pods = await q(
            sql`SELECT namespace, name, labels, node, addresses, ports, revision FROM policy.pods ORDER BY namespace, name`,
          );
          const pols = await q(
            sql`SELECT kind, namespace, name, object, updated_at, revision FROM policy.policies ORDER BY kind, namespace, name`,
          );
          return {
            revision: Number(rev!.revision),
            namespaces: new Map(ns.map((r) => [String(r.name), r.labels as Record<string, string>])),
            pods: pods.map((r) => ({
              namespace: String(r.namespace),
              name: String(r.name),
              labels: r.labels as Record<string, string>,
              node: String(r.node),
              addresses: r.addresses as string[],
              ports: r.ports as PodRecord['ports'],
              revision: Number(r.revision),
            })),
            policies: pols.map((r) => ({
              kind: String(r.kind),
              namespace: String(r.namespace),
              name: String(r.name),
              object: r.object,
              updatedAt: new Date(r.updated_at as string),
              revision: Number(r.revision),
            })),
          };
        },
        { isolationLevel: 'repeatable read', accessMode: 'read only' },
      );
    },
  });
}

export type PolicyRepository = ReturnType<typeof createPolicyRepository>;
