import { sql, type SQL } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import type { Protocol } from '../domain/model.js';

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

  return {
    async upsertNamespace(name: string, labels: Record<string, string>): Promise<number> {
      return notifying(rows(sql`INSERT INTO policy.namespaces (name, labels, revision) VALUES (${name}, ${JSON.stringify(labels)}::jsonb, ${NEXT})
        ON CONFLICT (name) DO UPDATE SET labels = excluded.labels, revision = excluded.revision RETURNING revision`).then(revisionOf));
    },
    async deleteNamespace(name: string): Promise<{ deleted: boolean; revision: number }> {
      return notifying(db.transaction(async (tx) => {
        const gone = (await tx.execute(sql`DELETE FROM policy.namespaces WHERE name = ${name} RETURNING name`)).rows.length > 0;
        await tx.execute(sql`DELETE FROM policy.pods WHERE namespace = ${name}`);
        await tx.execute(sql`DELETE FROM policy.policies WHERE namespace = ${name}`);
        const [r] = (await tx.execute(sql`SELECT ${NEXT} AS revision`)).rows as Row[];
        return { deleted: gone, revision: Number(r!.revision) };
      }));
    },
    async upsertPod(p: PodRecord): Promise<number> {
      return notifying(rows(sql`INSERT INTO policy.pods (namespace, name, labels, node, addresses, ports, revision)
        VALUES (${p.namespace}, ${p.name}, ${JSON.stringify(p.labels)}::jsonb, ${p.node},
          (SELECT coalesce(array_agg(v), '{}'::text[]) FROM jsonb_array_elements_text(${JSON.stringify(p.addresses)}::jsonb) v),
          ${JSON.stringify(p.ports)}::jsonb, ${NEXT})
        ON CONFLICT (namespace, name) DO UPDATE SET labels = excluded.labels, node = excluded.node, addresses = excluded.addresses,
          ports = excluded.ports, revision = excluded.revision
        RETURNING revision`).then(revisionOf));
    },
    async deletePod(namespace: string, name: string): Promise<{ deleted: boolean; revision: number }> {
      const r = await notifying(rows(sql`WITH d AS (DELETE FROM policy.pods WHERE namespace = ${namespace} AND name = ${name} RETURNING 1)
        SELECT (SELECT count(*) FROM d) > 0 AS deleted, ${NEXT} AS revision`));
      return { deleted: Boolean(r[0]!.deleted), revision: Number(r[0]!.revision) };
    },
    /** All or none, in one transaction. */
    async applyPolicies(items: { kind: string; namespace: string; name: string; object: unknown }[]): Promise<number> {
      return notifying(db.transaction(async (tx) => {
        let revision = 0;
        for (const p of items) {
          const [r] = (await tx.execute(sql`INSERT INTO policy.policies (kind, namespace, name, object, revision)
            VALUES (${p.kind}, ${p.namespace}, ${p.name}, ${JSON.stringify(p.object)}::jsonb, ${NEXT})
            ON CONFLICT (kind, namespace, name) DO UPDATE SET object = excluded.object, updated_at = now(), revision = excluded.revision
            RETURNING revision`)).rows as Row[];
          revision = Number(r!.revision);
        }
        return revision;
      }));
    },
    async deletePolicy(kind: string, namespace: string, name: string): Promise<{ deleted: boolean; revision: number }> {
      const r = await notifying(rows(sql`WITH d AS (DELETE FROM policy.policies WHERE kind = ${kind} AND namespace = ${namespace} AND name = ${name} RETURNING 1)
        SELECT (SELECT count(*) FROM d) > 0 AS deleted, ${NEXT} AS revision`));
      return { deleted: Boolean(r[0]!.deleted), revision: Number(r[0]!.revision) };
    },
    async listPolicies(namespace: string | null): Promise<PolicyRecord[]> {
      return (await rows(sql`SELECT kind, namespace, name, object, updated_at FROM policy.policies
        WHERE ${namespace}::text IS NULL OR namespace = ${namespace} ORDER BY kind, namespace, name`))
        .map((r) => ({ kind: String(r.kind), namespace: String(r.namespace), name: String(r.name), object: r.object, updatedAt: new Date(r.updated_at as string) }));
    },
    /** Everything, read in one snapshot (REPEATABLE READ): what Explain evaluates against. */
    async snapshot(): Promise<Snapshot> {
      return db.transaction(async (tx) => {
        const q = async (s: SQL) => (await tx.execute(s)).rows as Row[];
        const [rev] = await q(sql`SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS revision FROM policy.revision_seq`);
        const ns = await q(sql`SELECT name, labels FROM policy.namespaces`);
        const pods = await q(sql`SELECT namespace, name, labels, node, addresses, ports, revision FROM policy.pods ORDER BY namespace, name`);
        const pols = await q(sql`SELECT kind, namespace, name, object, updated_at, revision FROM policy.policies ORDER BY kind, namespace, name`);
        return {
          revision: Number(rev!.revision),
          namespaces: new Map(ns.map((r) => [String(r.name), r.labels as Record<string, string>])),
          pods: pods.map((r) => ({ namespace: String(r.namespace), name: String(r.name), labels: r.labels as Record<string, string>, node: String(r.node), addresses: r.addresses as string[], ports: r.ports as PodRecord['ports'], revision: Number(r.revision) })),
          policies: pols.map((r) => ({ kind: String(r.kind), namespace: String(r.namespace), name: String(r.name), object: r.object, updatedAt: new Date(r.updated_at as string), revision: Number(r.revision) })),
        };
      }, { isolationLevel: 'repeatable read', accessMode: 'read only' });
    },
  };
}

export type PolicyRepository = ReturnType<typeof createPolicyRepository>;
