import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { createClient } from '../lib/grpc/client.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService, type WatchRoutesResponse } from '../gen/weft/routes/v1/routes.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/**
 * The routes service's revision log on real PostgreSQL: resume from a revision, snapshots for a compacted one,
 * two replicas on one database agreeing on every revision, gap-free order under concurrent writers, leases and
 * bookmarks.
 */
type Routes = ReturnType<typeof createClient<typeof RoutesServiceService>>;
let a: TestControlPlane; // replica A on database 1
let b: TestControlPlane; // replica B on database 1
let c: TestControlPlane; // database 2: short lease, tiny log
let routesA: Routes;
let routesB: Routes;
let routesC: Routes;
let ipamA: ReturnType<typeof createClient<typeof IpamServiceService>>;
let ipamB: ReturnType<typeof createClient<typeof IpamServiceService>>;
const LEASE_MS_C = 1000;

before(async () => {
  a = await startTestControlPlane({ settings: { nodeLeaseMs: '600000', routesBookmarkMs: '300' } });
  b = await startTestControlPlane({
    databaseUrl: a.databaseUrl,
    appDatabaseUrl: a.appDatabaseUrl,
    settings: { nodeLeaseMs: '600000', routesBookmarkMs: '300' },
  });
  c = await startTestControlPlane({
    settings: { nodeLeaseMs: String(LEASE_MS_C), routesLogKeep: '3', routesLogMaxAgeS: '0' },
  });
  routesA = createClient(RoutesServiceService, a.address, { security: a.security });
  routesB = createClient(RoutesServiceService, b.address, { security: b.security });
  routesC = createClient(RoutesServiceService, c.address, { security: c.security });
  ipamA = createClient(IpamServiceService, a.address, { security: a.security });
  ipamB = createClient(IpamServiceService, b.address, { security: b.security });
  await ipamA.createPool({ name: 'default', cidr: '10.244.0.0/16', blockPrefixLength: 26 });
});

after(async () => {
  for (const cl of [routesA, routesB, routesC, ipamA, ipamB]) cl?.close();
  await b?.stop();
  await a?.stop();
  await c?.stop();
});

/** A watch whose messages are collected as they come; bookmarks are kept apart. */
function watch(routes: Routes, sinceRevision = 0, flags: { acceptCoalesced?: boolean; acceptChunks?: boolean } = {}) {
  const ac = new AbortController();
  const messages: WatchRoutesResponse[] = [];
  const bookmarks: WatchRoutesResponse[] = [];
  const waiters = new Set<() => void>();
  const done = (async () => {
    try {
      for await (const m of routes.watchRoutes({ node: 'watcher', sinceRevision, ...flags }, { signal: ac.signal })) {
        (m.bookmark ? bookmarks : messages).push(m);
        for (const w of [...waiters]) w();
      }
    } catch (err) {
      if (!ac.signal.aborted) throw err;
    }
  })();
  return {
    messages,
    bookmarks,
    async until(pred: () => boolean, ms = 15_000) {
      const deadline = Date.now() + ms;
      while (!pred()) {
        if (Date.now() > deadline)
          throw new Error(
            `condition not met; got ${JSON.stringify(messages.map((m) => [m.revision, m.reset, m.upserts.map((u) => u.node), m.deletes]))}`,
          );
        await new Promise<void>((r) => {
          const t = setTimeout(w, 50);
          function w() {
            clearTimeout(t);
            waiters.delete(w);
            r();
          }
          waiters.add(w);
        });
      }
    },
    async close() {
      ac.abort();
      await done;
    },
  };
}

const reg = (routes: Routes, name: string, i: number) =>
  routes.registerNode({
    name,
    underlayAddress: `192.0.2.${i}`,
    vtepMac: `02:00:c0:00:02:${i.toString(16).padStart(2, '0')}`,
  });

test('a watcher that resumes from its revision gets exactly the missed changes, in order, and no snapshot', async (t) => {
  await reg(routesA, 'resume-0', 20); // revision 0 means "no state", so the watcher must hold a later one
  const w1 = watch(routesA);
  await w1.until(() => w1.messages.length > 0);
  assert.equal(w1.messages[0]!.reset, true);
  const since = w1.messages[0]!.revision;
  await w1.close();

  await reg(routesA, 'resume-1', 21);
  await reg(routesB, 'resume-2', 22);
  await routesA.deregisterNode({ name: 'resume-1' });

  const t0 = performance.now();
  const w2 = watch(routesB, since);
  try {
    await w2.until(() => w2.messages.some((m) => m.deletes.includes('resume-1')));
    t.diagnostic(
      `resume latency (WatchRoutes call to the third missed change): ${(performance.now() - t0).toFixed(1)} ms`,
    );
    assert.deepEqual(
      w2.messages.map((m) => ({
        revision: m.revision,
        reset: m.reset,
        upserts: m.upserts.map((u) => u.node),
        deletes: m.deletes,
      })),
      [
        { revision: since + 1, reset: false, upserts: ['resume-1'], deletes: [] },
        { revision: since + 2, reset: false, upserts: ['resume-2'], deletes: [] },
        { revision: since + 3, reset: false, upserts: [], deletes: ['resume-1'] },
      ],
    );
    assert.equal(w2.messages[1]!.upserts[0]!.underlayAddress, '192.0.2.22');
  } finally {
    await w2.close();
  }
});

test('an idle stream gets bookmarks carrying its current revision', async () => {
  const w = watch(routesB);
  try {
    await w.until(() => w.messages.length > 0 && w.bookmarks.length >= 2, 5000);
    const snap = w.messages[0]!;
    for (const bm of w.bookmarks) {
      assert.equal(bm.revision, snap.revision);
      assert.deepEqual([bm.reset, bm.upserts, bm.deletes], [false, [], []]);
    }
  } finally {
    await w.close();
  }
});

test('two replicas on one database: under concurrent registrations and allocations their watchers see the same gap-free sequence', async (t) => {
  const wa = watch(routesA);
  const wb = watch(routesB);
  await wa.until(() => wa.messages.length > 0);
  await wb.until(() => wb.messages.length > 0);
  const start = Math.max(wa.messages[0]!.revision, wb.messages[0]!.revision);
  const clients = [
    routesA,
    routesB,
    createClient(RoutesServiceService, a.address, { security: a.security }),
    createClient(RoutesServiceService, b.address, { security: b.security }),
  ];
  const n = 40;
  const t0 = performance.now();
  try {
    await Promise.all(Array.from({ length: n }, (_, i) => reg(clients[i % clients.length]!, `con-${i}`, 100 + i)));
    t.diagnostic(`${n} registrations through 4 clients on 2 replicas: ${(performance.now() - t0).toFixed(0)} ms`);
    await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        (i % 2 ? ipamA : ipamB).allocate({
          handle: `con-pod-${i}/eth0`,
          node: `con-${i}`,
          pool: '',
          podNamespace: '',
          podName: '',
          containerId: '',
        }),
      ),
    );
    const complete = (w: ReturnType<typeof watch>) => () => {
      const seen = new Set(
        w.messages.flatMap((m) =>
          m.upserts
            .filter((u) => u.blockCidrs.length > 0 || u.node.startsWith('con-'))
            .map((u) => `${u.node}:${u.blockCidrs.length}`),
        ),
      );
      return (
        Array.from({ length: n }, (_, i) => `con-${i}:0`).every((k) => seen.has(k)) &&
        Array.from({ length: 8 }, (_, i) => `con-${i}:1`).every((k) => seen.has(k))
      );
    };
    await wa.until(complete(wa));
    await wb.until(complete(wb));
    const after = (w: ReturnType<typeof watch>) => w.messages.filter((m) => m.revision > start);
    const seqA = after(wa);
    const seqB = after(wb);
    const last = Math.min(seqA.at(-1)!.revision, seqB.at(-1)!.revision);
    const upTo = (s: WatchRoutesResponse[]) => s.filter((m) => m.revision <= last);
    assert.deepEqual(upTo(seqA), upTo(seqB), 'both replicas deliver the same revisions with the same content');
    assert.ok(seqA.length >= n + 8, `at least ${n + 8} changes, got ${seqA.length}`);
    assert.ok(
      seqA.every((m) => !m.reset),
      'no snapshot while following',
    );
    seqA.forEach((m, i) => assert.equal(m.revision, start + 1 + i, 'gap-free and strictly increasing'));
    seqB.forEach((m, i) => assert.equal(m.revision, start + 1 + i, 'gap-free and strictly increasing'));
  } finally {
    clients[2]!.close();
    clients[3]!.close();
    await wa.close();
    await wb.close();
  }
});

/** The table a watcher holds after applying `messages` in turn (snapshot, then changes), by node. */
function applied(messages: WatchRoutesResponse[], from = new Map<string, string>()) {
  const table = new Map(from);
  for (const m of messages) {
    if (m.reset) table.clear();
    for (const u of m.upserts) table.set(u.node, `${u.underlayAddress}|${u.vtepMac}|${u.blockCidrs.join(',')}`);
    for (const d of m.deletes) table.delete(d);
  }
  return table;
}

test('a watcher that accepts coalesced messages gets the missed changes in one message, the same table as each revision in turn; an older watcher still gets one message per revision', async () => {
  await reg(routesA, 'co-0', 40);
  const w0 = watch(routesA);
  await w0.until(() => w0.messages.length > 0);
  const since = w0.messages[0]!.revision;
  const before = applied(w0.messages);
  await w0.close();

  await reg(routesA, 'co-1', 41);
  await reg(routesB, 'co-2', 42);
  await routesA.deregisterNode({ name: 'co-1' });
  await routesA.registerNode({ name: 'co-2', underlayAddress: '198.51.100.42', vtepMac: '02:00:c6:33:64:2a' });
  await reg(routesB, 'co-3', 43);

  const old = watch(routesB, since);
  const co = watch(routesB, since, { acceptCoalesced: true, acceptChunks: true });
  try {
    await old.until(() => old.messages.length >= 5);
    await co.until(() => co.messages.length >= 1);
    assert.deepEqual(
      old.messages.map((m) => m.revision),
      [since + 1, since + 2, since + 3, since + 4, since + 5],
      'one message per revision for a watcher without the flag',
    );
    assert.equal(co.messages.length, 1, `the five revisions in one message: ${JSON.stringify(co.messages)}`);
    const m = co.messages[0]!;
    assert.equal(m.revision, since + 5, "the message carries the last revision's number");
    assert.equal(m.reset, false);
    assert.deepEqual(m.deletes, ['co-1'], 'a node added and removed within the run is a delete');
    assert.deepEqual(
      m.upserts.map((u) => [u.node, u.underlayAddress]),
      [
        ['co-2', '198.51.100.42'],
        ['co-3', '192.0.2.43'],
      ],
      'each changed node once, with its entry as of the last revision',
    );
    assert.deepEqual(applied(co.messages, before), applied(old.messages, before), 'the same table');
  } finally {
    await old.close();
    await co.close();
  }
});

test('under concurrent registrations a coalesced watcher sees increasing revisions, each a revision of the log with the table as of it, ending at the last', async (t) => {
  const old = watch(routesA);
  const co = watch(routesA, 0, { acceptCoalesced: true });
  await old.until(() => old.messages.length > 0);
  await co.until(() => co.messages.length > 0);
  const clients = [routesA, routesB, createClient(RoutesServiceService, a.address, { security: a.security })];
  const n = 60;
  try {
    await Promise.all(
      Array.from({ length: n }, (_, i) => reg(clients[i % clients.length]!, `coc-${i}`, 100 + (i % 150))),
    );
    await Promise.all(Array.from({ length: n / 3 }, (_, i) => routesB.deregisterNode({ name: `coc-${i * 3}` })));
    const head = async () => {
      const w = watch(routesB);
      await w.until(() => w.messages.length > 0);
      await w.close();
      return w.messages[0]!.revision;
    };
    const last = await head();
    await old.until(() => old.messages.at(-1)!.revision >= last);
    await co.until(() => co.messages.at(-1)!.revision >= last);
    // The per-revision watcher's table after each revision, to compare the coalesced one with.
    const start = Math.max(old.messages[0]!.revision, co.messages[0]!.revision);
    const tables = new Map<number, Map<string, string>>();
    let held = new Map<string, string>();
    for (const m of old.messages) {
      held = applied([m], held);
      tables.set(m.revision, held);
    }
    let coHeld = new Map<string, string>();
    let prev = 0;
    let coalesced = 0;
    for (const m of co.messages) {
      assert.ok(m.revision > prev, `revisions increase: ${m.revision} after ${prev}`);
      prev = m.revision;
      coHeld = applied([m], coHeld);
      if (m.upserts.length + m.deletes.length > 1) coalesced++;
      if (m.revision < start) continue;
      assert.ok(tables.has(m.revision), `revision ${m.revision} is a revision of the log`);
      assert.deepEqual(coHeld, tables.get(m.revision), `the table as of revision ${m.revision}`);
      for (const u of m.upserts) assert.ok(!m.deletes.includes(u.node), 'a node is upserted or deleted, not both');
    }
    assert.equal(co.messages.at(-1)!.revision, old.messages.at(-1)!.revision, 'both end at the last revision');
    // Over the same span (the two may start from snapshots of different revisions: a coalescing watcher without state
    // may get the replica's snapshot of the last second), coalescing never sends more messages than one per revision.
    const after = (ms: typeof co.messages) => ms.filter((m) => m.revision > start).length;
    assert.ok(
      after(co.messages) <= after(old.messages),
      `${after(co.messages)} > ${after(old.messages)} after ${start}`,
    );
    t.diagnostic(
      `${old.messages.length} messages without the flag, ${co.messages.length} with it (${coalesced} of them coalesced)`,
    );
  } finally {
    clients[2]!.close();
    await old.close();
    await co.close();
  }
});

test('a node whose underlay address or VTEP MAC changes is updated for every watcher', async () => {
  await reg(routesA, 'mover', 30);
  const w = watch(routesB);
  try {
    await w.until(() => w.messages.length > 0);
    assert.equal(w.messages[0]!.upserts.find((u) => u.node === 'mover')?.underlayAddress, '192.0.2.30');
    await routesA.registerNode({ name: 'mover', underlayAddress: '198.51.100.30', vtepMac: '02:00:c6:33:64:1e' });
    await w.until(() =>
      w.messages.some((m) => m.upserts.some((u) => u.node === 'mover' && u.underlayAddress === '198.51.100.30')),
    );
    const moved = w.messages.at(-1)!.upserts.find((u) => u.node === 'mover')!;
    assert.equal(moved.vtepMac, '02:00:c6:33:64:1e');
    const count = w.messages.length;
    await routesB.registerNode({ name: 'mover', underlayAddress: '198.51.100.30', vtepMac: '02:00:c6:33:64:1e' });
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(w.messages.length, count, 're-registering unchanged data logs nothing');
  } finally {
    await w.close();
  }
});

test('when the affinity follower loses its session, another follower takes over and logs new blocks exactly once', async (t) => {
  await reg(routesA, 'takeover', 60);
  const w = watch(routesB);
  const admin = new pg.Client({ connectionString: a.databaseUrl });
  await admin.connect();
  try {
    await w.until(() => w.messages.length > 0);
    const holder = async () =>
      (
        await admin.query(`SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = 7400 AND objid = 1 AND objsubid = 2
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`)
      ).rows as { pid: number }[];
    const [first] = await holder();
    assert.ok(first, 'one replica follows');
    const t0 = Date.now();
    await admin.query('SELECT pg_terminate_backend($1)', [first!.pid]);
    await ipamA.allocate({
      handle: 'takeover-pod/eth0',
      node: 'takeover',
      pool: '',
      podNamespace: '',
      podName: '',
      containerId: '',
    });
    await w.until(
      () => w.messages.some((m) => m.upserts.some((u) => u.node === 'takeover' && u.blockCidrs.length === 1)),
      10_000,
    );
    t.diagnostic(`new block logged ${Date.now() - t0} ms after the follower's session was killed`);
    const after = await holder();
    assert.equal(after.length, 1, 'exactly one follower again');
    assert.notEqual(after[0]!.pid, first!.pid);
    await new Promise((r) => setTimeout(r, 1500));
    const withBlock = w.messages.filter((m) =>
      m.upserts.some((u) => u.node === 'takeover' && u.blockCidrs.length === 1),
    );
    assert.equal(withBlock.length, 1, "the new follower logged the block once, despite replaying IPAM's snapshot");
  } finally {
    await admin.end();
    await w.close();
  }
});

test('a revision that compaction has removed gets a snapshot', async () => {
  const w1 = watch(routesC);
  await w1.until(() => w1.messages.length > 0);
  const since = w1.messages[0]!.revision;
  await w1.close();
  for (let i = 0; i < 6; i++) await reg(routesC, `old-${i}`, 40 + i);
  await new Promise((r) => setTimeout(r, LEASE_MS_C / 4 + 300)); // one sweep compacts to the newest 3
  const w2 = watch(routesC, since);
  try {
    await w2.until(() => w2.messages.length > 0);
    assert.equal(w2.messages[0]!.reset, true);
    assert.deepEqual(
      w2.messages[0]!.upserts.map((u) => u.node).filter((n) => n.startsWith('old-')),
      Array.from({ length: 6 }, (_, i) => `old-${i}`),
    );
  } finally {
    await w2.close();
  }
});

test('a node whose lease runs out is withdrawn, and comes back when it renews', async (t) => {
  const w = watch(routesC);
  try {
    await w.until(() => w.messages.length > 0);
    const registered = await reg(routesC, 'leased', 50);
    assert.equal(registered.leaseMillis, LEASE_MS_C);
    const expires = registered.node!.leaseExpireTime!.getTime();
    await w.until(() => w.messages.some((m) => m.upserts.some((u) => u.node === 'leased')));
    // Renewals keep it: one lease period with two renewals, no delete.
    for (let i = 0; i < 3; i++) {
      await new Promise((r) => setTimeout(r, LEASE_MS_C / 3));
      await routesC.renewLease({ name: 'leased' });
    }
    assert.ok(!w.messages.some((m) => m.deletes.includes('leased')), 'a renewed node stays');
    const lastRenew = Date.now();
    await w.until(() => w.messages.some((m) => m.deletes.includes('leased')), 5000);
    const withdrawnAfter = Date.now() - lastRenew;
    t.diagnostic(
      `withdrawn ${withdrawnAfter} ms after the last renewal (lease ${LEASE_MS_C} ms, sweep every ${LEASE_MS_C / 4} ms)`,
    );
    assert.ok(
      withdrawnAfter >= LEASE_MS_C - 100 && withdrawnAfter < LEASE_MS_C + 1000,
      `withdrawn after ${withdrawnAfter} ms`,
    );
    assert.ok(expires > 0);
    const listed = (await routesC.listNodes({})).nodes.find((n) => n.name === 'leased');
    assert.ok(listed, 'a withdrawn node stays registered until it is deregistered');
    const before = w.messages.length;
    await routesC.renewLease({ name: 'leased' });
    await w.until(
      () =>
        w.messages
          .slice(before)
          .some((m) => m.upserts.some((u) => u.node === 'leased' && u.underlayAddress === '192.0.2.50')),
      2000,
    );
    await assert.rejects(routesC.renewLease({ name: 'never-registered' }), (e: { code: number }) => e.code === 5);
  } finally {
    await w.close();
  }
});

test('a live lease is renewed without waiting for the route-log lock (renewals of thousands of nodes do not queue behind route changes)', async () => {
  await reg(routesA, 'renewer', 60);
  const holder = new pg.Client({ connectionString: a.databaseUrl });
  await holder.connect();
  try {
    await holder.query('BEGIN');
    await holder.query(`SELECT pg_advisory_xact_lock(hashtext('routes.changes'))`);
    const t0 = Date.now();
    const renewed = await routesA.renewLease({ name: 'renewer' }, { timeoutMs: 3000 });
    const tookMs = Date.now() - t0;
    assert.equal(renewed.leaseMillis, 600_000);
    const listed = (await routesA.listNodes({})).nodes.find((n) => n.name === 'renewer');
    assert.ok(listed!.leaseExpireTime!.getTime() > Date.now() + 500_000, 'the lease runs a full period from now');
    assert.ok(tookMs < 2000, `renewed in ${tookMs} ms while the route log was locked`);
    // A change to the route table does wait for the lock.
    await assert.rejects(
      routesA.registerNode(
        { name: 'renewer-2', underlayAddress: '192.0.2.61', vtepMac: '02:57:00:00:00:61' },
        { timeoutMs: 1000 },
      ),
      (e: { code: number }) => e.code === 4,
      'a registration waits for the lock',
    );
  } finally {
    await holder.query('ROLLBACK').catch(() => {});
    await holder.end();
  }
});
