import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { applyMigrations, sessionConfig } from '../../../lib/db/database.js';
import { grantAppPrivileges, userOf } from '../../../lib/db/roles.js';
import { createTestDatabase, type TestDatabase } from '../../../test/support/database.js';
import { FAST_ALLOCATE_BATCH } from './fast-allocate.js';

/**
 * ipam.refresh_statistics() (migrations/ipam/0016_planner_statistics.sql), which the sweeper's leader calls every few
 * seconds: in a new database a session's generic plan of the group-commit statement, made while the tables were
 * empty, reads whole indexes per request; the function analyzes the tables that outgrew their statistics, which
 * makes every session plan again. Autovacuum is off for these tables here, so only the function takes statistics.
 */
let db: TestDatabase;
let owner: pg.Client;
let app: pg.Client;
let pool: number;
before(async () => {
  db = await createTestDatabase();
  await applyMigrations(sessionConfig(db.url), 'ipam');
  owner = new pg.Client({ connectionString: db.url });
  await owner.connect();
  await grantAppPrivileges(owner, userOf(db.appUrl));
  for (const t of ['allocations', 'blocks', 'free_addresses', 'allocation_attempts', 'node_usage', 'pools'])
    await owner.query(`ALTER TABLE ipam.${t} SET (autovacuum_enabled = false)`);
  app = new pg.Client({ connectionString: db.appUrl, options: '-c plan_cache_mode=force_generic_plan' });
  await app.connect();
  pool = (
    await owner.query(`INSERT INTO ipam.pools (name, cidr, block_prefix_length, routing_domain_id)
    VALUES ('p', '10.0.0.0/8', 26, (SELECT id FROM ipam.routing_domains WHERE name = 'default')) RETURNING id`)
  ).rows[0].id;
});
after(async () => {
  await app?.end().catch(() => {});
  await owner?.end().catch(() => {});
  await db?.drop();
});

/** The group-commit statement for one handle on node n1 (which holds no block: it reads, then allocates nothing). */
const execute = (handle: string) =>
  `EXECUTE fast('{${handle}/eth0}', '{4}', '{n1}', '{${pool}}', '{64}', '{ns}', '{p}', '{c}', '{1}', '{""}', '{a-${handle}}', '{uid}')`;

/** Rows the statement's plan read from allocations and threw away (a whole-index scan filtered per request). */
async function rowsThrownAway(handle: string): Promise<number> {
  const { rows } = await app.query(`EXPLAIN (ANALYZE, COSTS OFF) ${execute(handle)}`);
  const plan = rows.map((r) => String(r['QUERY PLAN'])).join('\n');
  return [...plan.matchAll(/Rows Removed by Filter: (\d+)/g)].reduce((s, m) => s + Number(m[1]), 0);
}

/** 20,000 live allocations on 1,000 nodes' blocks, added under the statistics (flushed to the statistics views). */
async function fill() {
  await owner.query(
    `INSERT INTO ipam.blocks (pool_id, routing_domain_id, cidr, node, next_offset, live_count)
    SELECT $1, 1, ('10.1.0.0'::inet + g * 64)::text::cidr, 'x' || g, 20, 20 FROM generate_series(0, 999) g`,
    [pool],
  );
  await owner.query(
    `INSERT INTO ipam.allocations (handle, address, family, pool_id, block_id, routing_domain_id, cluster, node, pod_namespace, pod_name, container_id, owner, pod_uid)
    SELECT 'h' || g || '/eth0', '10.1.0.0'::inet + (g / 20) * 64 + g % 20, 4, $1, b.id, 1, '', b.node, 'ns', 'p' || g, 'c', '', ''
    FROM generate_series(0, 19999) g JOIN ipam.blocks b ON b.node = 'x' || (g / 20)`,
    [pool],
  );
  await owner.query('SELECT pg_stat_force_next_flush()');
}

const refresh = async (): Promise<string[]> =>
  (await app.query<{ t: string[] }>('SELECT ipam.refresh_statistics() AS t')).rows[0]!.t;

describe('planner statistics of IPAM tables that grew fast', () => {
  test('a plan made while the tables were empty reads allocations by index again once the function ran', async () => {
    await app.query(`PREPARE fast AS ${FAST_ALLOCATE_BATCH}`);
    await app.query(execute('first')); // the session's generic plan, made now, on empty tables
    assert.deepEqual(await refresh(), [], 'empty tables are not analyzed');
    await fill();
    // Without statistics the plan stays: each request filters every live row (the failure this guards against).
    assert.ok((await rowsThrownAway('before')) >= 20_000, 'the empty-table plan reads every live row');
    const analyzed = await refresh();
    assert.ok(analyzed.includes('ipam.allocations') && analyzed.includes('ipam.blocks'), analyzed.join(', '));
    assert.ok((await rowsThrownAway('after')) < 100, 'the plan made again reaches rows by index');
  });

  test('tables at their statistics are left alone: only a doubling analyzes again', async () => {
    assert.deepEqual(await refresh(), []);
    await owner.query(
      `INSERT INTO ipam.allocations (handle, address, family, pool_id, block_id, routing_domain_id, cluster, node, pod_namespace, pod_name, container_id, owner, pod_uid)
      SELECT 'more' || g || '/eth0', '10.2.0.0'::inet + g, 4, $1, 1, 1, '', 'y', 'ns', 'q' || g, 'c', '', '' FROM generate_series(0, 999) g`,
      [pool],
    );
    await owner.query('SELECT pg_stat_force_next_flush()');
    assert.deepEqual(await refresh(), [], '5% more rows: autovacuum’s business, not this');
  });

  test('only the services’ role and the owner may call it', async () => {
    const probe = `weft_stats_probe_${process.pid}`;
    await owner.query(`CREATE ROLE ${probe} LOGIN`);
    try {
      const { rows } = await owner.query(
        `SELECT has_function_privilege('${probe}', 'ipam.refresh_statistics()', 'EXECUTE') AS other,
          has_function_privilege($1, 'ipam.refresh_statistics()', 'EXECUTE') AS app`,
        [userOf(db.appUrl)],
      );
      assert.deepEqual(rows[0], { other: false, app: true });
    } finally {
      await owner.query(`DROP ROLE ${probe}`);
    }
  });
});
