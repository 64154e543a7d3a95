import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from '../lib/grpc/client.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService, type WatchRoutesResponse } from '../gen/weft/routes/v1/routes.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';
import { createTestDatabase, type TestDatabase } from './support/database.js';
import { freePort } from './support/ports.js';

/**
 * A control-plane outage longer than the node lease, on real PostgreSQL: the control plane (IPAM and routes) stops,
 * the database stays, the same control plane starts again on the same database and address. Agents (played here
 * by renewal loops that behave as the agent's: renew every third of the lease, retry a failed renewal soon) must
 * get a lease period to renew before anything is withdrawn.
 */
const LEASE_MS = 1500;
const OUTAGE_MS = 2 * LEASE_MS;
const settings = { nodeLeaseMs: String(LEASE_MS), routesBookmarkMs: '200', routesPollMs: '200' };
type Routes = ReturnType<typeof createClient<typeof RoutesServiceService>>;

let db: TestDatabase;
let cp: TestControlPlane | null = null;
let listen = '';
const clients: { close(): void }[] = [];
const stopper = new AbortController();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  db = await createTestDatabase();
  listen = `127.0.0.1:${await freePort()}`;
  cp = await startTestControlPlane({
    databaseUrl: db.url,
    appDatabaseUrl: db.appUrl,
    settings: { ...settings, listen },
  });
});

after(async () => {
  stopper.abort();
  for (const c of clients) c.close();
  await cp?.stop();
  await db?.drop();
});

/** A client that reconnects within 200 ms once the server is back (as a test, not gRPC's backoff, sets the pace). */
function routesClient(): Routes {
  const c = createClient(RoutesServiceService, listen, {
    security: cp!.security,
    channel: { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 200 },
  });
  clients.push(c);
  return c;
}

/** What an agent does with its lease: renew every third of it; after a failure, retry within a sixth (at most 1 s). */
function renewLoop(routes: Routes, name: string, signal: AbortSignal) {
  void (async () => {
    while (!signal.aborted) {
      let delay = LEASE_MS / 3;
      try {
        await routes.renewLease({ name }, { timeoutMs: 500 });
      } catch {
        delay = Math.min(1000, LEASE_MS / 6);
      }
      await sleep(delay);
    }
  })();
}

/** Watches from `since`, collecting every message but bookmarks; a broken stream resumes from its last revision, as an agent's does. */
function watch(routes: Routes, since: number) {
  const ac = new AbortController();
  const messages: WatchRoutesResponse[] = [];
  let last = since;
  const done = (async () => {
    while (!ac.signal.aborted) {
      try {
        for await (const m of routes.watchRoutes({ node: 'watcher', sinceRevision: last }, { signal: ac.signal })) {
          last = m.revision;
          if (!m.bookmark) messages.push(m);
        }
      } catch {
        if (!ac.signal.aborted) await sleep(100);
      }
    }
  })();
  return {
    messages,
    close: async () => {
      ac.abort();
      await done;
    },
  };
}

test('after a control-plane outage of twice the node lease, no node whose agent renews is withdrawn (no cluster-wide route flap); a node whose agent is gone still is, a lease after the restart', async (t) => {
  const routes = routesClient();
  const ipam = createClient(IpamServiceService, listen, { security: cp!.security });
  clients.push(ipam);
  await ipam.createPool({ name: 'default', cidr: '10.244.0.0/16', blockPrefixLength: 26 });
  const live = ['n1', 'n2', 'n3'];
  for (const [i, name] of [...live, 'gone'].entries()) {
    await routes.registerNode({
      name,
      underlayAddress: `192.0.2.${21 + i}`,
      vtepMac: `02:00:c0:00:02:${(21 + i).toString(16)}`,
    });
    await ipam.allocate({ handle: `${name}-pod/eth0`, node: name, pool: 'default' });
  }
  const agents = new AbortController();
  stopper.signal.addEventListener('abort', () => agents.abort(), { once: true });
  for (const name of live) renewLoop(routesClient(), name, stopper.signal);
  renewLoop(routesClient(), 'gone', agents.signal);

  // Every node is in the table with its block (the affinity follower has recorded IPAM's snapshot).
  const w0 = watch(routes, 0);
  let since = 0;
  for (const deadline = Date.now() + 15_000; Date.now() < deadline; await sleep(50)) {
    const table = w0.messages.filter((m) => m.reset).at(-1);
    const last = w0.messages.at(-1);
    if (
      table &&
      w0.messages
        .slice(w0.messages.indexOf(table))
        .flatMap((m) => m.upserts)
        .filter((u) => u.blockCidrs.length > 0).length >= 4
    ) {
      since = last!.revision;
      break;
    }
  }
  await w0.close();
  assert.ok(since > 0, 'every node is in the route table with its block');
  await sleep(LEASE_MS); // leases renewed a few times: each is well inside its lease

  // The outage: the whole control plane stops (the node whose agent is gone stops renewing at the same moment).
  agents.abort();
  await cp!.stop();
  cp = null;
  await sleep(OUTAGE_MS);
  const restarted = Date.now();
  cp = await startTestControlPlane({
    databaseUrl: db.url,
    appDatabaseUrl: db.appUrl,
    settings: { ...settings, listen },
  });
  const w = watch(routesClient(), since);
  try {
    await sleep(2 * LEASE_MS);
    const deletes = w.messages.flatMap((m) =>
      m.deletes.map((d) => ({ node: d, revision: m.revision, reset: m.reset })),
    );
    t.diagnostic(
      `after the restart: ${JSON.stringify(w.messages.map((m) => [m.revision, m.reset, m.upserts.map((u) => u.node), m.deletes]))}`,
    );
    assert.ok(!w.messages.some((m) => m.reset), 'the watcher resumed from its revision (no snapshot)');
    assert.deepEqual(
      deletes.filter((d) => live.includes(d.node)),
      [],
      'no node whose agent renews was withdrawn',
    );
    assert.deepEqual(
      deletes.map((d) => d.node),
      ['gone'],
      'the node whose agent is gone was withdrawn',
    );
    const listed = (await routes.listNodes({}, { timeoutMs: 2000 })).nodes;
    for (const name of live)
      assert.ok(
        listed.find((n) => n.name === name)!.leaseExpireTime!.getTime() > Date.now(),
        `${name}'s lease is live`,
      );
    t.diagnostic(`restart to now: ${Date.now() - restarted} ms`);
  } finally {
    await w.close();
  }
});
