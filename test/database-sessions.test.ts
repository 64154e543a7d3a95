import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { sql } from 'drizzle-orm';
import { connectDatabase, DEFAULT_DATABASE_TIMEOUTS, type DatabaseHandle } from '../lib/db/database.js';
import { isDatabaseUnavailable } from '../lib/db/unavailable.js';
import { createTestDatabase, type TestDatabase } from './support/database.js';
import { eventually } from './support/eventually.js';

/**
 * Sessions whose server goes away or cannot replicate, on a real PostgreSQL.
 *
 * A pooled session that the server ends while it is checked out and idle (what every session on a primary sees when
 * its postmaster is killed, or an administrator terminates it) must not end the process: its holder's next query
 * fails as "database unavailable", the pool drops it, and the next caller gets a fresh session.
 *
 * A commit cancelled while it waits for its synchronous standby is reported by PostgreSQL as a success with a
 * warning, though it exists on the primary alone: Weft must fail it instead. Played on one server by naming a
 * synchronous standby that never connects.
 */
let db: TestDatabase;
let handle: DatabaseHandle;
let admin: pg.Client;

before(async () => {
  db = await createTestDatabase();
  handle = connectDatabase(db.url, { max: 2 });
  admin = new pg.Client({ connectionString: db.url });
  await admin.connect();
});
after(async () => {
  await admin?.end();
  await handle?.close();
  await db?.drop();
});

const terminate = (pid: number) => admin.query('SELECT pg_terminate_backend($1)', [pid]);

test('a checked-out session ended by the server between two queries fails its next query UNAVAILABLE and is dropped, and the process lives', async () => {
  const client = await handle.pool.connect();
  const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
  await terminate(pid);
  // The server's FATAL arrives with no query running: pg emits 'error' on the client (fatal to the process if unheard).
  await eventually(
    'the session is seen ended',
    async () => !(client as unknown as { _queryable: boolean })._queryable,
    5000,
    20,
  );
  await assert.rejects(
    client.query('SELECT 1'),
    (err) => isDatabaseUnavailable(err),
    'its next query is "database unavailable"',
  );
  client.release();
  const next = (await handle.pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
  assert.notEqual(next, pid, 'the pool opened a fresh session');
});

test('a transaction whose session the server ends between statements fails UNAVAILABLE, and the pool serves again', async () => {
  await assert.rejects(
    handle.db.transaction(async (tx) => {
      const { rows } = await tx.execute<{ pid: number }>(sql`SELECT pg_backend_pid() AS pid`);
      await terminate(rows[0]!.pid);
      await new Promise((r) => setTimeout(r, 200)); // the FATAL arrives while the transaction holds the session, idle
      await tx.execute(sql`SELECT 1`);
    }),
    (err) => isDatabaseUnavailable(err),
  );
  assert.equal((await handle.pool.query<{ one: number }>('SELECT 1 AS one')).rows[0]!.one, 1);
});

test('a commit cancelled while it waits for the synchronous standby fails "database unavailable" instead of succeeding', async () => {
  const one = connectDatabase(db.url, { max: 1 }); // one session: its pid is the one that waits
  await admin.query('CREATE TABLE sync_probe (n int)');
  await admin.query("ALTER SYSTEM SET synchronous_standby_names = 'weft_absent_standby'");
  await admin.query('SELECT pg_reload_conf()');
  try {
    const pid = (await one.pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    await eventually(
      'the server waits for the standby',
      async () =>
        (await admin.query('SHOW synchronous_standby_names')).rows[0].synchronous_standby_names ===
        'weft_absent_standby',
      5000,
      50,
    );
    /** Cancels the session's statement once it waits for the standby (as pg_cancel_backend by an operator or a tool). */
    const cancelWhenWaiting = () =>
      eventually(
        'the statement waits for the standby',
        async () => {
          const { rows } = await admin.query(
            "SELECT pg_cancel_backend(pid) AS ok FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep'",
            [pid],
          );
          return rows[0]?.ok === true;
        },
        10_000,
        50,
      );
    const unavailable = (err: unknown) =>
      isDatabaseUnavailable(err) &&
      /synchronous standby/.test(`${(err as Error).message} ${(err as { cause?: Error }).cause?.message}`);
    // Each outcome is awaited only after the cancel, but heard from the start (it may come before the cancel returns).
    const tx = assert.rejects(
      one.db.transaction(async (t) => {
        await t.execute(sql`INSERT INTO sync_probe VALUES (1)`);
      }),
      unavailable,
      "a transaction's COMMIT",
    );
    await cancelWhenWaiting();
    await tx;
    const single = assert.rejects(
      one.pool.query('INSERT INTO sync_probe VALUES (2)'),
      unavailable,
      'a statement outside a transaction',
    );
    await cancelWhenWaiting();
    await single;
    // The server did commit both on the primary: the outcome was unknown, not "failed".
    assert.deepEqual(
      (await admin.query('SELECT n FROM sync_probe ORDER BY n')).rows.map((r) => r.n),
      [1, 2],
    );
    // The session stays usable: the next statement that needs no standby answers normally.
    assert.equal((await one.pool.query<{ one: number }>('SELECT 1 AS one')).rows[0]!.one, 1);
  } finally {
    await admin.query('ALTER SYSTEM RESET synchronous_standby_names');
    await admin.query('SELECT pg_reload_conf()');
    await one.close();
  }
});

test("a handle's own pool serves while every session of its shared pool is taken (the watch streams' reads during a restart's registrations)", async () => {
  const busy = connectDatabase(db.url, { max: 1, timeouts: { ...DEFAULT_DATABASE_TIMEOUTS, connectMs: 300 } });
  try {
    const reads = busy.ownPool(1);
    const held = await busy.pool.connect();
    try {
      await assert.rejects(
        busy.db.execute(sql`SELECT 1`),
        (err) => isDatabaseUnavailable(err),
        'the shared pool has no session to give within its connect timeout',
      );
      const r = await reads.execute(sql`SELECT 2 AS n`);
      assert.equal(Number(r.rows[0]!.n), 2, 'the own pool answers');
    } finally {
      held.release();
    }
  } finally {
    await busy.close();
  }
});

test('warm opens the sessions before they are asked for, and queries then use them instead of opening new ones', async () => {
  const warm = connectDatabase(db.url, { max: 4 });
  try {
    const reads = warm.ownPool(2);
    // Sessions opened since `since`: other handles' idle sessions may close meanwhile, so they are not counted.
    const since = (await admin.query<{ t: Date }>('SELECT clock_timestamp() AS t')).rows[0]!.t;
    const sessions = async () =>
      Number(
        (
          await admin.query(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend' AND backend_start >= $1",
            [since],
          )
        ).rows[0].n,
      );
    assert.equal(await sessions(), 0);
    await warm.warm(3);
    assert.equal(await sessions(), 3 + 2, 'three shared sessions and both of the own pool are open');
    assert.equal(warm.pool.idleCount, 3);
    // Served by the open sessions: no new session is opened for them.
    await Promise.all([warm.db.execute(sql`SELECT 1`), reads.execute(sql`SELECT 1`), reads.execute(sql`SELECT 1`)]);
    assert.equal(await sessions(), 5);
    assert.equal(warm.pool.options.min, 3, 'kept while idle (pg-pool closes idle sessions only above min)');
  } finally {
    await warm.close();
  }
});
