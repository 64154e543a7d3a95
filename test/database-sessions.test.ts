import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { sql } from 'drizzle-orm';
import { connectDatabase, type DatabaseHandle } from '../lib/db/database.js';
import { isDatabaseUnavailable } from '../lib/db/unavailable.js';
import { createTestDatabase, type TestDatabase } from './support/database.js';
import { eventually } from './support/eventually.js';

/**
 * A pooled session that the server ends while it is checked out and idle (what every session on a primary sees when
 * its postmaster is killed, or an administrator terminates it) must not end the process: its holder's next query
 * fails as "database unavailable", the pool drops it, and the next caller gets a fresh session.
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
  await eventually('the session is seen ended', async () => !(client as unknown as { _queryable: boolean })._queryable, 5000, 20);
  await assert.rejects(client.query('SELECT 1'), (err) => isDatabaseUnavailable(err), 'its next query is "database unavailable"');
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
