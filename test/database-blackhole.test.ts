import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import { createClient, type PromiseClient } from '../lib/grpc/client.js';
import { errorCodeOf } from '../lib/grpc/errors.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { createTestDatabase, type TestDatabase } from './support/database.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';
import { startBlackholeProxy, type BlackholeProxy } from './support/blackhole-proxy.js';

/**
 * A database that stops answering (a black-holed network: nothing comes back, nothing is closed) must give IPAM's
 * callers UNAVAILABLE within a bounded time, hold a bounded number of sessions and queued requests meanwhile, and
 * serve again once the database is back. The control plane reaches the real PostgreSQL through a userspace proxy that
 * can swallow everything.
 */
const QUERY_TIMEOUT_MS = 1500;
/** No answer from the database within the query timeout, plus a connect timeout and slack for a busy machine. */
const BOUND_MS = QUERY_TIMEOUT_MS + 1000 + 1500;
// The shared pool, the group-commit pool, the route watch streams' and the policy views' read pools, the notifier and
// the affinity follower.
const POOL_SESSIONS = 20 + 3 + 4 + 2 + 2;

let database: TestDatabase;
let proxy: BlackholeProxy;
let cp: TestControlPlane;
let ipam: PromiseClient<typeof IpamServiceService>;

before(async () => {
  database = await createTestDatabase();
  // Both the owner's and the services' sessions go through the proxy (the embedded server's URLs name its socket folder).
  const upstream = new URL(database.url);
  const host = decodeURIComponent(upstream.hostname);
  proxy = await startBlackholeProxy(host, Number(upstream.port || 5432));
  const viaProxy = (u: string) => {
    const url = new URL(u);
    url.hostname = '127.0.0.1';
    url.port = String(proxy.port);
    return url.toString();
  };
  cp = await startTestControlPlane({
    databaseUrl: viaProxy(database.url),
    appDatabaseUrl: viaProxy(database.appUrl),
    settings: {
      dbStatementTimeoutMs: '1000',
      dbLockTimeoutMs: '500',
      dbQueryTimeoutMs: String(QUERY_TIMEOUT_MS),
      dbConnectTimeoutMs: '1000',
      dbKeepAliveMs: '1000',
    },
  });
  ipam = createClient(IpamServiceService, cp.address, { security: cp.security });
  await ipam.createPool({ name: 'main', cidr: '10.40.0.0/16', blockPrefixLength: 26 });
});

after(async () => {
  proxy?.restore();
  ipam?.close();
  await cp?.stop();
  await proxy?.close();
  await database?.drop();
});

const isUnavailable = (e: { code?: number; details?: string }) =>
  e.code === status.UNAVAILABLE && /database/.test(e.details ?? '');

/** Runs `call`, and says how long it took to fail and with what. */
async function failure(call: Promise<unknown>): Promise<{ ms: number; err: { code?: number; details?: string } }> {
  const started = Date.now();
  try {
    await call;
  } catch (err) {
    return { ms: Date.now() - started, err: err as { code?: number; details?: string } };
  }
  assert.fail('the call succeeded while the database was black-holed');
}

test('a black-holed database gives Allocate and ListPools UNAVAILABLE within a bounded time, with bounded sessions and queue, and serves again after', async () => {
  let n = 0;
  const allocate = () =>
    ipam.allocate(
      { handle: `c${n++}/eth0`, node: 'n1', podNamespace: 'ns', podName: `p${n}` },
      { timeoutMs: 4 * BOUND_MS },
    );
  await allocate();
  // Every pooled session open and idle (as on a busy server), so the transactions below find sessions to begin on.
  await Promise.all(Array.from({ length: 30 }, () => ipam.listReservations({})));
  proxy.resetPeak();
  proxy.blackhole();
  try {
    // Allocate, ListPools: with the pools cached (the first call) an allocation meets the group-commit statement, else
    // the pool read.
    const check = async (what: string, call: () => Promise<unknown>) => {
      const { ms, err } = await failure(call());
      assert.ok(isUnavailable(err), `${what}: ${err.code} ${err.details}`);
      assert.ok(ms < BOUND_MS, `${what} took ${ms} ms to fail, more than ${BOUND_MS}`);
      assert.match(errorCodeOf(err) ?? '', /^ipam\.(database_unavailable|overloaded)$/);
    };
    await check('Allocate', allocate);
    // Transactions that cannot even begin (more of them than the pool has sessions): each fails, and none keeps its
    // session from the pool (or the service could not serve again below).
    for (let wave = 0; wave < 2; wave++) {
      const failed = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          failure(
            ipam.createReservation(
              { pool: 'main', cidr: `10.40.${200 + wave}.${i * 8}/29`, reason: 'test' },
              { timeoutMs: 4 * BOUND_MS },
            ),
          ),
        ),
      );
      assert.ok(
        failed.every((m) => isUnavailable(m.err)),
        `CreateReservation: ${failed.map((m) => m.err.details).join('; ')}`,
      );
    }
    await check('ListPools', () => ipam.listPools({}, { timeoutMs: 4 * BOUND_MS }));
    await check('Allocate again', allocate);
    // Many callers at once: each fails within the bound; the sessions toward the database stay bounded.
    const many = await Promise.all(Array.from({ length: 400 }, () => failure(allocate())));
    const worst = Math.max(...many.map((m) => m.ms));
    assert.ok(
      many.every((m) => isUnavailable(m.err)),
      'every caller got UNAVAILABLE',
    );
    assert.ok(worst < 2 * BOUND_MS, `the slowest of 400 callers took ${worst} ms`);
    assert.ok(proxy.peak() <= POOL_SESSIONS + 5, `${proxy.peak()} sessions toward the database at once`);
  } finally {
    proxy.restore();
  }
  // Back: calls succeed again (within a few seconds: sessions that timed out are replaced).
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      const { allocations } = await allocate();
      assert.equal(allocations.length, 1);
      break;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  const { pools } = await ipam.listPools({});
  assert.deepEqual(
    pools.map((p) => p.name),
    ['main'],
  );
});
