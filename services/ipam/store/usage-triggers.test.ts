import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import pg from 'pg';
import { applyMigrations, sessionConfig } from '../../../lib/db/database.js';
import { createTestDatabase, type TestDatabase } from '../../../test/support/database.js';

/**
 * The triggers on ipam.blocks (migrations/ipam/0013_usage_counters.sql, described in README.md), one test per thing
 * they guarantee, on real PostgreSQL: node_usage (pool, node) holds the live blocks, their live_count and their
 * reserved, whatever statement changes blocks, in that statement's transaction; a statement that changes no counter
 * writes no usage row.
 */
let db: TestDatabase;
let sql: pg.Client;
let pool: number;
before(async () => {
  db = await createTestDatabase();
  await applyMigrations(sessionConfig(db.url), 'ipam');
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
});
after(async () => {
  await sql?.end().catch(() => {});
  await db?.drop();
});
beforeEach(async () => {
  await sql.query('TRUNCATE ipam.node_usage, ipam.blocks, ipam.pools RESTART IDENTITY CASCADE');
  pool = (
    await sql.query(`INSERT INTO ipam.pools (name, cidr, block_prefix_length, routing_domain_id)
    VALUES ('p', '10.0.0.0/16', 26, (SELECT id FROM ipam.routing_domains WHERE name = 'default')) RETURNING id`)
  ).rows[0].id;
});

/** Inserts blocks in one statement: [third octet, node, live_count, reserved, released]. */
async function insertBlocks(...blocks: [number, string, number, number, boolean?][]): Promise<number[]> {
  const values = blocks.map(
    (_, i) =>
      `($1, (SELECT routing_domain_id FROM ipam.pools WHERE id = $1), $${i * 5 + 2}::cidr, $${i * 5 + 3}, $${i * 5 + 4}::int, $${i * 5 + 5}::int, CASE WHEN $${i * 5 + 6}::bool THEN now() END)`,
  );
  const params = blocks.flatMap(([octet, node, live, reserved, released]) => [
    `10.0.${octet}.0/26`,
    node,
    live,
    reserved,
    released ?? false,
  ]);
  const r = await sql.query(
    `INSERT INTO ipam.blocks (pool_id, routing_domain_id, cidr, node, live_count, reserved, released_at) VALUES ${values.join(', ')} RETURNING id`,
    [pool, ...params],
  );
  return r.rows.map((x) => x.id);
}
/** node -> [blocks, live, reserved] */
async function usage(): Promise<Record<string, [number, number, number]>> {
  const r = await sql.query(
    'SELECT node, blocks, live::int, reserved::int FROM ipam.node_usage WHERE pool_id = $1 ORDER BY node',
    [pool],
  );
  return Object.fromEntries(r.rows.map((x) => [x.node, [x.blocks, x.live, x.reserved]]));
}
/** The transaction that last wrote each usage row. */
async function writers(): Promise<Record<string, string>> {
  const r = await sql.query('SELECT node, xmin::text AS x FROM ipam.node_usage WHERE pool_id = $1', [pool]);
  return Object.fromEntries(r.rows.map((x) => [x.node, x.x]));
}

describe('usage triggers on ipam.blocks', () => {
  test('an insert adds each live block, its live count and its reserved to its (pool, node) row, summed per statement', async () => {
    await insertBlocks([0, 'n1', 3, 2], [1, 'n1', 4, 0], [2, 'n2', 0, 1]);
    assert.deepEqual(await usage(), { n1: [2, 7, 2], n2: [1, 0, 1] });
    await insertBlocks([3, 'n1', 1, 0]);
    assert.deepEqual(await usage(), { n1: [3, 8, 2], n2: [1, 0, 1] });
  });

  test('a block inserted already released counts nothing', async () => {
    await insertBlocks([0, 'n1', 0, 0, true]);
    assert.deepEqual(await usage(), {});
  });

  test("an update adds the difference of the counters it changed, also for several nodes' blocks in one statement", async () => {
    const [a, b, c] = await insertBlocks([0, 'n1', 3, 0], [1, 'n1', 0, 0], [2, 'n2', 5, 0]);
    await sql.query('UPDATE ipam.blocks SET live_count = live_count + 1, reserved = reserved + 2 WHERE id = ANY($1)', [
      [a, b, c],
    ]);
    assert.deepEqual(await usage(), { n1: [2, 5, 4], n2: [1, 6, 2] });
    await sql.query('UPDATE ipam.blocks SET live_count = live_count - 6 WHERE id = $1', [c]);
    assert.deepEqual(await usage(), { n1: [2, 5, 4], n2: [1, 0, 2] });
  });

  test('releasing a block takes away what it counted; a node whose last block goes keeps a zero row', async () => {
    const [a, b] = await insertBlocks([0, 'n1', 0, 3], [1, 'n2', 2, 0]);
    await sql.query('UPDATE ipam.blocks SET released_at = now() WHERE id = $1', [a]);
    assert.deepEqual(await usage(), { n1: [0, 0, 0], n2: [1, 2, 0] });
    await sql.query('UPDATE ipam.blocks SET released_at = now() WHERE id = $1', [a]);
    assert.deepEqual(await usage(), { n1: [0, 0, 0], n2: [1, 2, 0] }, 'a released block updated again counts nothing');
    await sql.query('UPDATE ipam.blocks SET node = $2 WHERE id = $1', [b, 'n3']);
    assert.deepEqual(
      await usage(),
      { n1: [0, 0, 0], n2: [0, 0, 0], n3: [1, 2, 0] },
      'a block moved to another node moves its counts',
    );
  });

  test('a delete takes away the live blocks it removes', async () => {
    await insertBlocks([0, 'n1', 2, 1], [1, 'n1', 1, 0], [2, 'n1', 0, 0, true]);
    await sql.query('DELETE FROM ipam.blocks WHERE node = $1', ['n1']);
    assert.deepEqual(await usage(), { n1: [0, 0, 0] });
  });

  test('a statement that changes no counter (next_offset alone, or counts that cancel out) writes no usage row', async () => {
    const [a, b] = await insertBlocks([0, 'n1', 2, 0], [1, 'n1', 0, 0]);
    const before = await writers();
    await sql.query('UPDATE ipam.blocks SET next_offset = next_offset + 1 WHERE id = $1', [a]);
    await sql.query(
      'UPDATE ipam.blocks SET live_count = CASE WHEN id = $1 THEN live_count - 1 ELSE live_count + 1 END WHERE id = ANY($2)',
      [a, [a, b]],
    );
    assert.deepEqual(await writers(), before);
    assert.deepEqual(await usage(), { n1: [2, 2, 0] });
  });

  test("the counters change in the statement's transaction: rolled back with it", async () => {
    const [a] = await insertBlocks([0, 'n1', 1, 0]);
    await sql.query('BEGIN');
    await sql.query('UPDATE ipam.blocks SET live_count = 9 WHERE id = $1', [a]);
    assert.deepEqual(await usage(), { n1: [1, 9, 0] }, 'seen inside it');
    await sql.query('ROLLBACK');
    assert.deepEqual(await usage(), { n1: [1, 1, 0] });
  });
});
