import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { status } from '@grpc/grpc-js';
import { createClient } from '../lib/grpc/client.js';
import type { TransportSecurity } from '../lib/grpc/credentials.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService, type WatchRoutesResponse } from '../gen/weft/routes/v1/routes.js';
import { haPostgresMissing, startHaPostgres, type HaPostgres } from './support/ha-postgres.js';
import { bin, startUntil, type Started } from './support/processes.js';
import { eventually } from './support/eventually.js';

/**
 * `weft up` on a highly available PostgreSQL (scripts/ha/up.sh: Patroni, synchronous replication, HAProxy in front)
 * while several callers allocate and release through the gRPC API, and the primary's postmaster is SIGKILLed.
 * Calls during the switch must fail UNAVAILABLE (never a wrong answer); writes must work again once Patroni has
 * promoted the synchronous standby; every allocation and release acknowledged to a caller must be there afterwards;
 * no address may be live twice; WatchRoutes must still deliver changes, woken by notifications (the streams' poll
 * and bookmark periods are set to a minute, so only a notification, or the notifier's reconnect, wakes them in time).
 */
const WORKERS = 6;
const WARMUP_MS = 4000;
/** After writes work again, the hammer keeps going this long. */
const AFTER_MS = 4000;
/** Writes must work again within this long of the kill (Patroni: a loop of 1 s; HAProxy: checks every 0.5 s). */
const FAILOVER_BOUND_MS = 45_000;
/** A route change must reach the watcher this soon, far under the streams' poll of 60 s. */
const DELIVERY_BOUND_MS = 10_000;

const missing = haPostgresMissing();
// As root (the project's CI) scripts/install-deps.sh installs the packages: missing ones are a failure, not a skip.
const skip = missing && process.getuid?.() !== 0 && !process.env.CI ? missing : false;

let ha: HaPostgres | null = null;
let weft: (Started & { line: string }) | null = null;
let dataDir = '';
const closers: (() => void)[] = [];
const stopper = new AbortController();

before(async () => {
  if (skip) return;
  if (missing) throw new Error(`test/ha-failover: the HA PostgreSQL ${missing}`);
  ha = await startHaPostgres();
  dataDir = mkdtempSync(path.join(tmpdir(), 'weft-ha-cp-'));
  weft = await startUntil(bin.weft, ['up', '--data-dir', dataDir, '--listen', '127.0.0.1:0'], /"serving":true/, {
    env: {
      DATABASE_URL: ha.appUrl,
      WEFT_MIGRATION_DATABASE_URL: ha.ownerUrl,
      WEFT_LOG_LEVEL: 'warn',
      WEFT_ROUTES_POLL_MS: '60000',
      WEFT_ROUTES_BOOKMARK_MS: '60000',
    },
  });
});

after(async () => {
  stopper.abort();
  for (const close of closers) close();
  await weft?.stop();
  await ha?.stop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
type Ipam = ReturnType<typeof createClient<typeof IpamServiceService>>;
type Routes = ReturnType<typeof createClient<typeof RoutesServiceService>>;

/** Watches routes as an agent does: resumes from its last revision when the stream breaks. Keeps when each node was first seen with a block. */
function watchRoutes(routes: Routes) {
  const seen = new Map<string, number>();
  let last = 0;
  let breaks = 0;
  void (async () => {
    while (!stopper.signal.aborted) {
      try {
        for await (const m of routes.watchRoutes(
          { node: 'watcher', sinceRevision: last },
          { signal: stopper.signal },
        ) as AsyncIterable<WatchRoutesResponse>) {
          last = m.revision;
          for (const u of m.upserts) if (u.blockCidrs.length > 0 && !seen.has(u.node)) seen.set(u.node, Date.now());
        }
      } catch {
        if (!stopper.signal.aborted) breaks++;
      }
      await sleep(200);
    }
  })();
  return { seen, breaks: () => breaks };
}

test(
  'weft up on Patroni PostgreSQL: SIGKILL of the primary mid-hammer loses no acknowledged write, answers only UNAVAILABLE meanwhile, and writes and route watches work again',
  { skip, timeout: 240_000 },
  async (t) => {
    const info = JSON.parse(weft!.line) as { port: number };
    const address = `127.0.0.1:${info.port}`;
    // The local admin's credentials that `weft up` made in <data-dir>/pki.
    const security: TransportSecurity = {
      mode: 'mtls',
      caFile: path.join(dataDir, 'pki', 'ca.crt'),
      certFile: path.join(dataDir, 'pki', 'admin.crt'),
      keyFile: path.join(dataDir, 'pki', 'admin.key'),
    };
    const ipamClient = (): Ipam => {
      const c = createClient(IpamServiceService, address, { security });
      closers.push(() => c.close());
      return c;
    };
    const routes = createClient(RoutesServiceService, address, { security });
    closers.push(() => routes.close());
    const admin = ipamClient();
    await admin.createPool({ name: 'ha', cidr: '10.91.0.0/16', blockPrefixLength: 26 });

    const watcher = watchRoutes(routes);
    await routes.registerNode({ name: 'before', underlayAddress: '192.0.2.11', vtepMac: '02:00:c0:00:02:0b' });
    await admin.allocate({ handle: 'before-pod/eth0', node: 'before', pool: 'ha' });
    await eventually(
      'the watcher sees node "before" with its block',
      async () => watcher.seen.has('before'),
      DELIVERY_BOUND_MS,
    );

    // The hammer: each worker allocates new handles, retries the ones whose outcome it does not know, and releases.
    const acknowledged = new Map<string, string>(); // handle -> address, every allocation a caller was told of
    const released = new Set<string>(); // every release a caller was told of
    const wrong: string[] = []; // anything but success or UNAVAILABLE
    const refusals = new Map<string, number>(); // UNAVAILABLE details -> how many
    const calls: { start: number; end: number; ok: boolean }[] = [];
    let killedAt = 0;
    let lastRefusal = 0;
    let stopAt = Infinity;
    let seq = 0;
    const worker = async (w: number) => {
      const client = ipamClient();
      const node = `hn-${w % 3}`;
      const held: string[] = [];
      const unknown: string[] = []; // allocations refused UNAVAILABLE: committed or not, the caller cannot tell
      while (Date.now() < stopAt) {
        const start = Date.now();
        let handle: string;
        let release = false;
        if (unknown.length > 0 && Math.random() < 0.5) handle = unknown.shift()!;
        else if (held.length > 4 && Math.random() < 0.5) {
          release = true;
          handle = held.splice(Math.floor(Math.random() * held.length), 1)[0]!;
        } else handle = `w${w}-${seq++}/eth0`;
        try {
          if (release) {
            await client.release({ handle }, { timeoutMs: 30_000 });
            released.add(handle);
          } else {
            const { allocation } = await client.allocate({ handle, node, pool: 'ha' }, { timeoutMs: 30_000 });
            const before = acknowledged.get(handle);
            if (before && before !== allocation!.address)
              wrong.push(`${handle} got ${allocation!.address} after ${before}`);
            acknowledged.set(handle, allocation!.address);
            held.push(handle);
          }
          calls.push({ start, end: Date.now(), ok: true });
        } catch (err) {
          const e = err as { code?: number; details?: string };
          calls.push({ start, end: Date.now(), ok: false });
          lastRefusal = Date.now();
          if (e.code === status.UNAVAILABLE)
            refusals.set(String(e.details), (refusals.get(String(e.details)) ?? 0) + 1);
          if (e.code !== status.UNAVAILABLE)
            wrong.push(`${release ? 'release' : 'allocate'} ${handle}: ${e.code} ${e.details}`);
          else if (release) held.push(handle);
          else unknown.push(handle);
          await sleep(50);
        }
      }
      // Settle what is still unknown now that the database serves again: a retry answers it.
      for (const handle of unknown) {
        const { allocation } = await client.allocate({ handle, node, pool: 'ha' }, { timeoutMs: 30_000 });
        acknowledged.set(handle, allocation!.address);
      }
    };
    const hammer = Promise.all(Array.from({ length: WORKERS }, (_, w) => worker(w)));

    await sleep(WARMUP_MS);
    const beforeKill = calls.length;
    const oldPrimary = await ha!.primary();
    const killed = await ha!.killPrimary();
    killedAt = killed.killedAt;
    t.diagnostic(`killed postmaster ${killed.pid} of primary ${killed.member}`);
    // When Patroni reports another member running as primary (the rest of the switch is HAProxy's check and Weft's sessions).
    const promoted = (async () => {
      while (Date.now() - killedAt < FAILOVER_BOUND_MS) {
        const now = await ha!.primary().catch(() => null);
        if (now && now !== killed.member) return Date.now() - killedAt;
        await sleep(100);
      }
      return -1;
    })();
    try {
      // Writes work again: calls begun after the kill succeed, and none was refused for a while.
      await eventually(
        'writes work again after the kill',
        async () =>
          calls.some((c) => c.ok && c.start > killedAt) && Date.now() - Math.max(lastRefusal, killedAt) > 2000,
        FAILOVER_BOUND_MS,
        100,
      );
    } catch (err) {
      stopAt = 0;
      await hammer.catch(() => {});
      throw new Error(
        `${(err as Error).message}; refusals: ${JSON.stringify([...refusals])}; members: ${JSON.stringify(await ha!.members().catch((e) => String(e)))}; weft up said:\n${weft!.output().slice(-4000)}`,
        { cause: err },
      );
    } finally {
      stopAt = Date.now() + AFTER_MS;
    }
    await hammer;
    // When writes worked again: the first success begun after the last refused call began (or after the kill, if none was).
    const lastRefusedStart = Math.max(killedAt, ...calls.filter((c) => !c.ok).map((c) => c.start));
    const writesBackAt = Math.min(...calls.filter((c) => c.ok && c.start >= lastRefusedStart).map((c) => c.end));
    const newPrimary = await ha!.primary();

    // Route changes after the failover still reach the watcher: the first (the notifier has reconnected, or is about
    // to, and wakes everyone), then a second one well after, which only a notification on the new primary can bring.
    const deliver = async (node: string, i: number) => {
      const t0 = Date.now();
      await eventually(
        `register ${node}`,
        async () => {
          await routes.registerNode(
            { name: node, underlayAddress: `192.0.2.${20 + i}`, vtepMac: `02:00:c0:00:02:${(20 + i).toString(16)}` },
            { timeoutMs: 5000 },
          );
          await admin.allocate({ handle: `${node}-pod/eth0`, node, pool: 'ha' }, { timeoutMs: 5000 });
          return true;
        },
        20_000,
      );
      await eventually(
        `the watcher sees node "${node}" with its block`,
        async () => watcher.seen.has(node),
        DELIVERY_BOUND_MS,
        50,
      );
      return watcher.seen.get(node)! - t0;
    };
    const firstMs = await deliver('after1', 1);
    await sleep(2000);
    const secondMs = await deliver('after2', 2);

    // Under the API, on the new primary.
    const sql = new pg.Client({ connectionString: ha!.ownerUrl });
    await sql.connect();
    try {
      const rows = (
        await sql.query<{ handle: string; address: string; live: boolean }>(
          `SELECT handle, host(address) AS address, released_at IS NULL AS live FROM ipam.allocations WHERE handle LIKE 'w%'`,
        )
      ).rows;
      const history = new Set(rows.map((r) => `${r.handle}=${r.address}`));
      const liveHandles = new Map(rows.filter((r) => r.live).map((r) => [r.handle, r.address]));
      const lost = [...acknowledged].filter(([h, a]) => !history.has(`${h}=${a}`));
      assert.deepEqual(lost, [], 'every allocation acknowledged to a caller is in the database after the failover');
      const held = [...acknowledged].filter(([h]) => !released.has(h));
      assert.deepEqual(
        held.filter(([h, a]) => liveHandles.get(h) !== a),
        [],
        'every acknowledged allocation not released is live, with its address',
      );
      assert.deepEqual(
        [...released].filter((h) => liveHandles.has(h)),
        [],
        'every acknowledged release stayed released',
      );
      const overlaps =
        await sql.query(`SELECT a.address FROM ipam.allocations a JOIN ipam.allocations b ON a.address = b.address AND a.id < b.id
      WHERE tstzrange(a.allocated_at, coalesce(a.released_at, 'infinity')) && tstzrange(b.allocated_at, coalesce(b.released_at, 'infinity')) LIMIT 5`);
      assert.deepEqual(overlaps.rows, [], 'no address was ever live for two handles at once');
    } finally {
      await sql.end();
    }

    const afterKill = calls.filter((c) => c.start >= killedAt);
    const refused = afterKill.filter((c) => !c.ok).length;
    const beforeKillMs = calls
      .filter((c) => c.ok && c.end < killedAt)
      .map((c) => c.end - c.start)
      .sort((a, b) => a - b);
    const figures = {
      writesBackMs: writesBackAt - killedAt,
      promotedMs: await promoted,
      callMsBeforeKill: {
        p50: beforeKillMs[Math.floor(beforeKillMs.length / 2)],
        p99: beforeKillMs[Math.floor(beforeKillMs.length * 0.99)],
      },
      callsBeforeKill: beforeKill,
      callsAfterKill: afterKill.length,
      refusedDuringSwitch: refused,
      refusedInFlightAtKill: calls.filter((c) => c.start < killedAt && c.end >= killedAt && !c.ok).length,
      slowestRefusalMs: Math.max(0, ...calls.filter((c) => !c.ok).map((c) => c.end - c.start)),
      acknowledgedAllocations: acknowledged.size,
      acknowledgedReleases: released.size,
      routeAfterFailoverMs: firstMs,
      routeLaterMs: secondMs,
      watchStreamBreaks: watcher.breaks(),
      primary: `${oldPrimary} -> ${newPrimary}`,
      refusals: Object.fromEntries(refusals),
    };
    process.stderr.write(`ha-failover: ${JSON.stringify(figures)}\n`);
    assert.deepEqual(
      wrong,
      [],
      'every call either succeeded or failed UNAVAILABLE, and a retried handle kept its address',
    );
    assert.ok(
      newPrimary && newPrimary !== oldPrimary,
      `Patroni promoted another member (was ${oldPrimary}, now ${newPrimary})`,
    );
    assert.ok(
      acknowledged.size > 100 && afterKill.some((c) => c.ok),
      `enough work on both sides of the kill: ${JSON.stringify(figures)}`,
    );
  },
);
