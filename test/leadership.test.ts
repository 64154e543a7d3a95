import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { sql } from 'drizzle-orm';
import { sessionConfig } from '../lib/db/database.js';
import { leaderQuery, startLeadership, type LeaderTerm, type Leadership } from '../lib/db/leadership.js';
import { silentLogger } from '../lib/logger.js';
import { createTestDatabase, type TestDatabase } from './support/database.js';
import { eventually } from './support/eventually.js';
import { startBlackholeProxy } from './support/blackhole-proxy.js';

/**
 * Leader election with fencing (lib/db/leadership.ts) on a real PostgreSQL: three contenders for one role, one leads;
 * when the leader's session is terminated another takes over, and the old leader's writes can no longer commit.
 */
let db: TestDatabase;
let admin: pg.Client;

before(async () => {
  db = await createTestDatabase();
  admin = new pg.Client({ connectionString: db.url });
  await admin.connect();
  await admin.query('CREATE TABLE sweeps (term text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())');
});
after(async () => {
  await admin?.end();
  await db?.drop();
});

test('one of three contenders leads; when its session is terminated another leads within a retry, and the old term can no longer write', async () => {
  const terms: { name: string; term: LeaderTerm }[] = [];
  const contenders: Leadership[] = [];
  for (const name of ['a', 'b', 'c']) {
    contenders.push(
      startLeadership({
        role: 'ipam-sweeper',
        session: sessionConfig(db.url),
        logger: silentLogger,
        retryMs: 50,
        async lead(term) {
          terms.push({ name, term });
          // A periodic writer: a row per round, on the term's own session.
          while (!term.signal.aborted) {
            await term.db.execute(sql`INSERT INTO sweeps (term) VALUES (${`${name}:${term.pid}`})`);
            await new Promise((r) => setTimeout(r, 20));
          }
        },
      }),
    );
  }
  try {
    await eventually('a leader', async () => terms.length === 1, 5000, 20);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(contenders.filter((c) => c.isLeader()).length, 1, 'exactly one contender leads');
    const first = terms[0]!;
    const leaders = (await admin.query(leaderQuery)).rows as { pid: number; application_name: string }[];
    assert.deepEqual(
      leaders.map((l) => l.pid),
      [first.term.pid],
      'the database names the leader',
    );
    assert.match(leaders[0]!.application_name, new RegExp(`^weft-leader:ipam-sweeper:${process.pid}@`));

    const killedAt = Date.now();
    await admin.query('SELECT pg_terminate_backend($1)', [first.term.pid]);
    await eventually('another leader', async () => terms.length === 2, 5000, 10);
    const takeoverMs = Date.now() - killedAt;
    const second = terms[1]!;
    assert.notEqual(second.name, first.name);
    assert.ok(takeoverMs < 2000, `taken over in ${takeoverMs} ms`);
    // The old term hears of its end from its own session, which may come a little after the new leader's lock.
    await eventually('the old term knows it ended', async () => first.term.signal.aborted, 2000, 10);

    // Fencing: whatever the old leader still tries cannot commit.
    await assert.rejects(first.term.db.execute(sql`INSERT INTO sweeps (term) VALUES ('stale')`));
    await new Promise((r) => setTimeout(r, 200));
    const { rows } = await admin.query<{ term: string; first: Date; last: Date }>(
      'SELECT term, min(at) AS first, max(at) AS last FROM sweeps GROUP BY term ORDER BY 2',
    );
    assert.deepEqual(
      rows.map((r) => r.term),
      [`${first.name}:${first.term.pid}`, `${second.name}:${second.term.pid}`],
      'only the two leaders wrote, one after the other (nothing stale)',
    );
    assert.ok(rows[0]!.last < rows[1]!.first, 'the terms did not overlap');
  } finally {
    await Promise.all(contenders.map((c) => c.stop()));
  }
  const left = await admin.query(leaderQuery);
  assert.equal(left.rows.length, 0, 'stopped contenders hold no lock');
});

test('a contender stopped while its session is still connecting (the database black-holed) stops at once', async () => {
  const upstream = new URL(db.url);
  const proxy = await startBlackholeProxy(decodeURIComponent(upstream.hostname), Number(upstream.port || 5432));
  try {
    proxy.blackhole();
    const url = new URL(db.url);
    url.hostname = '127.0.0.1';
    url.port = String(proxy.port);
    // No connect timeout: the connect waits as long as the network gives nothing back.
    const { connectionTimeoutMillis: _none, ...session } = sessionConfig(url.toString());
    const contender = startLeadership({
      role: 'ipam-sweeper',
      session,
      logger: silentLogger,
      retryMs: 50,
      lead: async () => assert.fail('nothing answers: it cannot lead'),
    });
    await eventually('its session connecting through the proxy', async () => proxy.open() === 1, 5000, 20);
    let timer: NodeJS.Timeout | undefined;
    const stopped = await Promise.race([
      contender.stop().then(() => true),
      new Promise<false>((r) => (timer = setTimeout(() => r(false), 3000))),
    ]);
    clearTimeout(timer);
    assert.ok(stopped, 'stop() resolved within 3 s while the connect was unanswered');
  } finally {
    proxy.restore();
    await proxy.close();
  }
});
