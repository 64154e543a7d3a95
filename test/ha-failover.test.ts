import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { status } from '@grpc/grpc-js';
import { agentLog, clusterAdminSecurity, type ClusterState, type PodState } from '../cli/cluster/cluster.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService, type WatchRoutesResponse } from '../gen/weft/routes/v1/routes.js';
import type { PromiseClient } from '../lib/grpc/client.js';
import { vtepMacFor } from '../node-dataplane/kernel/vxlan-device.js';
import { haPostgresMissing, startHaPostgres, type HaPostgres } from './support/ha-postgres.js';
import { bringUpTestCluster, takeDownTestCluster, type TestCluster } from './support/local-cluster.js';
import { assertStreamHeld, pings, startEchoStream, startPingLoop } from './support/pod-probes.js';
import { privilegedSkipReason, skipOutsideCi } from './support/privileges.js';
import { bin } from './support/processes.js';
import { agentPeers, connectionsIn } from './support/control-plane-connections.js';
import { replicaFailoverClient } from './support/replica-clients.js';
import { eventually } from './support/eventually.js';

/**
 * The local cluster (two nodes, two pods on each, two control-plane replicas: `cluster up --replicas 2`) with its
 * control plane on a highly available PostgreSQL (scripts/ha/up.sh: Patroni, synchronous replication, HAProxy in
 * front, reached through HAProxy's unix socket from the replicas' namespaces) while several callers allocate and
 * release through the gRPC API and nodes come and go (route changes). First the primary's postmaster is SIGKILLed;
 * once writes work again, the control-plane replica that most agents' connections, most of the hammer's callers and
 * the route changes use is SIGKILLed. Calls during each switch must fail UNAVAILABLE (never a wrong answer); writes
 * must work again after each (once Patroni has promoted the synchronous standby; once callers have moved to the other
 * replica), and both times are measured; every allocation and release acknowledged to a caller must be there
 * afterwards; no address may be live twice; pods on the two nodes keep exchanging traffic throughout; the agents move
 * to the surviving replica, and afterwards every agent's kernel holds exactly the route table (nothing lost, nothing
 * stale); WatchRoutes must still deliver changes, woken by notifications (the streams' poll and bookmark periods are
 * set to a minute, so only a notification, or the notifier's reconnect, wakes them in time).
 *
 * The agents reach the replicas at their TCP addresses (grpc-js pick_first over both, lib/grpc/endpoints.ts); the test
 * process reaches each only by its unix socket, so its callers move between them as those channels do
 * (support/replica-clients.ts).
 */
const WORKERS = 6;
const WARMUP_MS = 4000;
/** After writes work again, the hammer keeps going this long. */
const AFTER_MS = 4000;
/** Writes must work again within this long of the kill (Patroni: a loop of 1 s; HAProxy: checks every 0.5 s). */
const FAILOVER_BOUND_MS = 45_000;
/** …and within this long of the replica's kill (callers move at their next call). */
const REPLICA_FAILOVER_BOUND_MS = 20_000;
/** A route change must reach the watcher this soon, far under the streams' poll of 60 s. */
const DELIVERY_BOUND_MS = 10_000;

/** Pod traffic may pause this long at most (a TCP echo every 10 ms, a ping every 200 ms). */
const TRAFFIC_GAP_BOUND_MS = 1500;
/** Probes end on their own after this long, even if the test never stops them. */
const PROBE_MAX_MS = 180_000;

const missing = haPostgresMissing();
// As root (the project's CI) scripts/install-deps.sh installs the packages: missing ones are a failure, not a skip.
// The local cluster needs root too.
const skip =
  missing && process.getuid?.() !== 0 && !process.env.CI ? missing : skipOutsideCi(privilegedSkipReason()).skip;

const run = promisify(execFile);
let ha: HaPostgres | null = null;
let cluster: TestCluster | undefined;
let envDir = '';
const pods: PodState[] = [];
const children: ChildProcess[] = [];
const closers: (() => void)[] = [];
const stopper = new AbortController();
const weftCli = async (...args: string[]) =>
  (await run(bin.weft, [...args, '--state-dir', cluster!.stateDir], { timeout: 60_000 })).stdout;
const controlPlaneLog = () => {
  try {
    return readFileSync(path.join(cluster!.stateDir, 'cp', 'control-plane.log'), 'utf8').slice(-4000);
  } catch {
    return '(no log)';
  }
};

before(async () => {
  if (skip) return;
  if (missing) throw new Error(`test/ha-failover: the HA PostgreSQL ${missing}`);
  const t0 = Date.now();
  ha = await startHaPostgres();
  const haMs = Date.now() - t0;
  // The control plane's settings: the HA PostgreSQL through HAProxy's unix socket (the control plane runs in a network
  // namespace of its own), watch streams woken only by notifications.
  envDir = mkdtempSync(path.join(tmpdir(), 'weft-ha-env-'));
  const envFile = path.join(envDir, 'control-plane.env');
  writeFileSync(
    envFile,
    `${readFileSync(ha.socketEnvFile, 'utf8')}WEFT_ROUTES_POLL_MS=60000\nWEFT_ROUTES_BOOKMARK_MS=60000\n`,
    { mode: 0o600 },
  );
  const started = bringUpTestCluster('hacluster', 2, ['--control-plane-env', envFile, '--replicas', '2']);
  cluster = started.cluster;
  await started.up;
  const clusterMs = Date.now() - t0 - haMs;
  for (const [node, name] of [
    ['node1', 'p1a'],
    ['node1', 'p1b'],
    ['node2', 'p2a'],
    ['node2', 'p2b'],
  ] as const)
    pods.push(
      JSON.parse(await weftCli('cluster', 'pod', 'add', node, name, '--namespace', 'ha', '--json')) as PodState,
    );
  process.stderr.write(
    `ha-failover: set up in ${Date.now() - t0} ms (HA PostgreSQL ${haMs} ms, local cluster ${clusterMs} ms, pods ${Date.now() - t0 - haMs - clusterMs} ms)\n`,
  );
});

after(async () => {
  stopper.abort();
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const close of closers) close();
  // The cluster first (its control plane uses the database), then the database.
  const t0 = Date.now();
  await takeDownTestCluster(cluster);
  const clusterMs = Date.now() - t0;
  await ha?.stop();
  process.stderr.write(`ha-failover: torn down in ${Date.now() - t0} ms (local cluster ${clusterMs} ms)\n`);
  if (envDir) rmSync(envDir, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
type Routes = PromiseClient<typeof RoutesServiceService>;

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

/** `weft routes NODE --json`: what the node's kernel should hold (from the route table) and what differs. */
async function routesReport(node: string) {
  const out = await run(bin.weft, ['routes', node, '--json', '--state-dir', cluster!.stateDir], {
    timeout: 30_000,
  }).then(
    (r) => r.stdout,
    (e: { code?: number; stdout?: string }) => {
      if (e.code === 1 && e.stdout) return e.stdout; // exit 1: the kernel differs (missing or stale entries)
      throw e;
    },
  );
  return JSON.parse(out) as {
    peers: { node: string; mode: string }[];
    desired: { kind: string; cidr?: string }[];
    missing: unknown[];
    stale: unknown[];
  };
}

test(
  'the local cluster with two control-plane replicas on Patroni PostgreSQL: SIGKILL of the primary, then of the replica most agents use, mid-hammer and mid-route-changes loses no acknowledged write, answers only UNAVAILABLE meanwhile, pods keep talking, and afterwards writes, route watches and every kernel are right',
  { skip, timeout: 300_000 },
  async (t) => {
    const state: ClusterState = cluster!.state!;
    const replicas = [state.controlPlane, ...(state.replicas ?? [])];
    assert.equal(replicas.length, 2, 'two control-plane replicas');
    // The replica holding most of the agents' connections (each agent's clients pick one of the two at random) is the
    // one killed second; most of the hammer's callers, the route changes and the watcher use it too.
    const agentConnections = await Promise.all(replicas.map((r) => connectionsIn(r.netns)));
    const victim = agentConnections[0]! >= agentConnections[1]! ? 0 : 1;
    const survivor = 1 - victim;
    // The local admin's credentials of the cluster's control plane.
    const security = clusterAdminSecurity(state);
    const sockets = replicas.map((r) => r.socket);
    const failoverClient = <D extends typeof IpamServiceService | typeof RoutesServiceService>(
      def: D,
      first: number,
    ) => {
      const c = replicaFailoverClient(def, sockets, { first, security });
      closers.push(() => c.close());
      return c;
    };
    const ipamClient = (first = victim) => failoverClient(IpamServiceService, first);
    const routes = failoverClient(RoutesServiceService, victim);
    const admin = ipamClient();
    await admin.createPool({ name: 'ha', cidr: '10.91.0.0/16', blockPrefixLength: 26 });

    // Nodes the test registers are kept alive as their agents would: their leases renewed every 3 s (of 20 s).
    const renewed = new Set<string>();
    const renewals = setInterval(() => {
      for (const name of renewed) void routes.renewLease({ name }, { timeoutMs: 2500 }).catch(() => {});
    }, 3000);
    closers.push(() => clearInterval(renewals));
    // Before anything: every node's kernel holds the route table, and every pod reaches the others.
    for (const n of state.nodes.map((x) => x.name))
      await eventually(
        `${n}'s kernel holds the route table`,
        async () => {
          const r = await routesReport(n);
          return r.missing.length === 0 && r.stale.length === 0;
        },
        20_000,
      );
    for (const from of pods)
      for (const to of pods)
        if (to !== from) assert.ok(await pings(from, to.addresses[0]!), `${from.name} reaches ${to.name}`);
    // Pod traffic across nodes throughout: a TCP echo stream node1 → node2, pings node2 → node1.
    const [p1a, p1b, p2a, p2b] = pods as [PodState, PodState, PodState, PodState];
    const stream = await startEchoStream(p1a, p2a, { maxMs: PROBE_MAX_MS, children });
    const ping = startPingLoop(p2b, p1b.addresses[0]!, { maxMs: PROBE_MAX_MS, children });

    const watcher = watchRoutes(routes);
    renewed.add('before');
    // On the other underlay subnet: every agent reaches it through VXLAN.
    await routes.registerNode({
      name: 'before',
      underlayAddress: '198.51.100.80',
      vtepMac: vtepMacFor('198.51.100.80'),
    });
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
    const workerClients: ReturnType<typeof ipamClient>[] = [];
    const worker = async (w: number) => {
      // Two of three workers on the replica killed second, the others on the survivor.
      const client = ipamClient(w % 3 === 2 ? survivor : victim);
      workerClients.push(client);
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

    // Route changes: nodes rc-0..rc-7 registered (and given a block) and deregistered in turn, on both underlay subnets
    // (direct routes and VXLAN entries in the agents). An operation refused UNAVAILABLE is retried until acknowledged
    // (each is idempotent), so which nodes are registered is known at every moment.
    const churnOps = { registered: 0, deregistered: 0, refused: 0 };
    const churn = (async () => {
      for (let i = 0; Date.now() < stopAt; i++) {
        const idx = i % 8;
        const name = `rc-${idx}`;
        const underlay = idx % 2 === 0 ? `192.0.2.${100 + idx}` : `198.51.100.${100 + idx}`;
        const deregister = renewed.has(name);
        for (;;) {
          try {
            if (deregister) {
              renewed.delete(name);
              await routes.deregisterNode({ name }, { timeoutMs: 10_000 }).catch((err: { code?: number }) => {
                if (err.code !== status.NOT_FOUND) throw err; // gone already: a refused call had committed
              });
              churnOps.deregistered++;
            } else {
              await routes.registerNode(
                { name, underlayAddress: underlay, vtepMac: vtepMacFor(underlay) },
                { timeoutMs: 10_000 },
              );
              renewed.add(name);
              await admin.allocate({ handle: `${name}-pod-${i}/eth0`, node: name, pool: 'ha' }, { timeoutMs: 10_000 });
              churnOps.registered++;
            }
            break;
          } catch (err) {
            const e = err as { code?: number; details?: string };
            if (e.code !== status.UNAVAILABLE) {
              wrong.push(`${deregister ? 'deregister' : 'register'} ${name}: ${e.code} ${e.details}`);
              break;
            }
            churnOps.refused++;
            lastRefusal = Date.now();
            if (Date.now() > stopAt + 30_000) break;
            await sleep(100);
          }
        }
        await sleep(300);
      }
    })();

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
    // Writes work again: calls begun after `since` succeed, and none was refused for a while.
    const writesWorkAgain = async (what: string, since: number, boundMs: number) => {
      try {
        await eventually(
          `writes work again after ${what}`,
          async () => calls.some((c) => c.ok && c.start > since) && Date.now() - Math.max(lastRefusal, since) > 2000,
          boundMs,
          100,
        );
      } catch (err) {
        stopAt = 0;
        await hammer.catch(() => {});
        await churn.catch(() => {});
        throw new Error(
          `${(err as Error).message}; refusals: ${JSON.stringify([...refusals])}; members: ${JSON.stringify(await ha!.members().catch((e) => String(e)))}; the control plane said:\n${controlPlaneLog()}`,
          { cause: err },
        );
      }
    };
    await writesWorkAgain("the primary's kill", killedAt, FAILOVER_BOUND_MS);

    // Then the replica most agents, most workers, the route changes and the watcher use.
    const agentConnectionsAtKill = await Promise.all(replicas.map((r) => connectionsIn(r.netns)));
    const replicaKilledAt = Date.now();
    process.kill(replicas[victim]!.pid, 'SIGKILL');
    t.diagnostic(`killed control-plane replica ${victim + 1} (pid ${replicas[victim]!.pid})`);
    // The agents move: every agent holds a connection to the survivor, none to the killed replica.
    const moved = eventually(
      'every agent connected to the surviving replica alone',
      async () => {
        for (const n of state.nodes) {
          const peers = await agentPeers(n.netns);
          if (!peers.has(replicas[survivor]!.address) || peers.has(replicas[victim]!.address)) return false;
        }
        return Date.now() - replicaKilledAt;
      },
      30_000,
      100,
    );
    moved.catch(() => {}); // awaited below; a failure before then is reported by what failed first
    try {
      await writesWorkAgain("the replica's kill", replicaKilledAt, REPLICA_FAILOVER_BOUND_MS);
    } finally {
      stopAt = Date.now() + AFTER_MS;
    }
    await hammer;
    await churn;
    // When writes worked again after a kill: the first success begun after the last refused call began (or after the
    // kill, if none was), among the calls that ended before the next kill.
    const writesBackMs = (from: number, to: number) => {
      const window = calls.filter((c) => c.start >= from && c.end < to);
      const lastRefusedStart = Math.max(from, ...window.filter((c) => !c.ok).map((c) => c.start));
      return Math.min(...window.filter((c) => c.ok && c.start >= lastRefusedStart).map((c) => c.end)) - from;
    };
    const newPrimary = await ha!.primary();
    const movedMs = await moved;

    // Route changes after the failover still reach the watcher: the first (the notifier has reconnected, or is about
    // to, and wakes everyone), then a second one well after, which only a notification on the new primary can bring.
    const deliver = async (node: string, i: number) => {
      const t0 = Date.now();
      await eventually(
        `register ${node}`,
        async () => {
          renewed.add(node);
          await routes.registerNode(
            { name: node, underlayAddress: `192.0.2.${90 + i}`, vtepMac: vtepMacFor(`192.0.2.${90 + i}`) },
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
    // What each agent logged about its streams after the replica's kill (milliseconds after it).
    const agentsSaid = state.nodes.map((n) => {
      const lines = readFileSync(agentLog(n), 'utf8')
        .split('\n')
        .flatMap((l) => {
          try {
            const r = JSON.parse(l) as { time: string; msg: string };
            const at = Date.parse(r.time) - replicaKilledAt;
            return at >= 0 && /watch|stream|reconnect/i.test(r.msg) ? [`+${at} ms ${r.msg}`] : [];
          } catch {
            return [];
          }
        });
      return `${n.name}: ${lines.slice(0, 4).join('; ')}`;
    });
    t.diagnostic(`after the replica's kill the agents said: ${agentsSaid.join(' | ')}`);
    // A pod attached now gets its address through its agent (CNI ADD, IPAM on the surviving replica) and is reached.
    const attachStart = Date.now();
    const late = JSON.parse(
      await weftCli('cluster', 'pod', 'add', 'node1', 'late', '--namespace', 'ha', '--json'),
    ) as PodState;
    const lateAttachMs = Date.now() - attachStart;
    assert.ok(
      await pings(pods[2]!, late.addresses[0]!),
      "a pod attached after the replica's kill is reached from node2",
    );
    const firstMs = await deliver('after1', 1);
    await sleep(2000);
    const secondMs = await deliver('after2', 2);

    // Every agent's kernel holds the route table as it is now: no route lost, none stale (the nodes registered
    // and deregistered during the failover included), and its peers are exactly the registered nodes.
    const registered = (await routes.listNodes({}, { timeoutMs: 10_000 })).nodes.map((n) => n.name).sort();
    const kernelsRightMs: string[] = [];
    for (const n of state.nodes.map((x) => x.name)) {
      const t0 = Date.now();
      const report = await eventually(
        `${n}'s kernel holds the route table after the failover`,
        async () => {
          const r = await routesReport(n);
          return r.missing.length === 0 && r.stale.length === 0 && r;
        },
        20_000,
        100,
      );
      kernelsRightMs.push(`${n} ${Date.now() - t0} ms`);
      assert.deepEqual(
        report.peers.map((p) => p.node).sort(),
        registered.filter((r) => r !== n),
        `${n}'s peers are the registered nodes`,
      );
      assert.deepEqual(
        [...new Set(report.peers.map((p) => p.mode))].sort(),
        ['direct', 'vxlan'],
        `${n} routes directly and through VXLAN: ${JSON.stringify(report.peers)}`,
      );
    }
    const streamResult = await stream.stop();
    const pingResult = await ping.stop();

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

    const between = calls.filter((c) => c.start >= killedAt && c.start < replicaKilledAt);
    const afterReplicaKill = calls.filter((c) => c.start >= replicaKilledAt);
    const beforeKillMs = calls
      .filter((c) => c.ok && c.end < killedAt)
      .map((c) => c.end - c.start)
      .sort((a, b) => a - b);
    const inFlightRefused = (at: number) => calls.filter((c) => c.start < at && c.end >= at && !c.ok).length;
    const hammerMoves = workerClients.map((c) => c.moves());
    const figures = {
      writesBackAfterPrimaryKillMs: writesBackMs(killedAt, replicaKilledAt),
      writesBackAfterReplicaKillMs: writesBackMs(replicaKilledAt, Infinity),
      promotedMs: await promoted,
      agentsMovedMs: movedMs,
      podAttachAfterReplicaKillMs: lateAttachMs,
      callMsBeforeKill: {
        p50: beforeKillMs[Math.floor(beforeKillMs.length / 2)],
        p99: beforeKillMs[Math.floor(beforeKillMs.length * 0.99)],
      },
      callsBeforeKill: beforeKill,
      callsBetweenKills: between.length,
      callsAfterReplicaKill: afterReplicaKill.length,
      refusedAfterPrimaryKill: between.filter((c) => !c.ok).length,
      refusedAfterReplicaKill: afterReplicaKill.filter((c) => !c.ok).length,
      refusedInFlightAtKills: [inFlightRefused(killedAt), inFlightRefused(replicaKilledAt)],
      slowestRefusalMs: Math.max(0, ...calls.filter((c) => !c.ok).map((c) => c.end - c.start)),
      agentConnections: `${agentConnectionsAtKill.join(' / ')} (replica ${victim + 1} killed)`,
      hammerWorkersMoved: hammerMoves.filter((m) => m > 0).length,
      acknowledgedAllocations: acknowledged.size,
      acknowledgedReleases: released.size,
      routeAfterFailoverMs: firstMs,
      routeLaterMs: secondMs,
      watchStreamBreaks: watcher.breaks(),
      routeChanges: churnOps,
      kernelsMatchRouteTable: kernelsRightMs.join(', '),
      podTcpLongestSilenceMs: streamResult.maxGapMs,
      podTcpStreamMs: streamResult.ms,
      podPings: `${pingResult.received}/${pingResult.sent}`,
      podPingLongestGapMs: pingResult.longestGapMs,
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
      acknowledged.size > 100 && between.some((c) => c.ok) && afterReplicaKill.some((c) => c.ok),
      `enough work on every side of the kills: ${JSON.stringify(figures)}`,
    );
    assert.ok(
      agentConnectionsAtKill[victim]! > 0 && hammerMoves.filter((m) => m > 0).length >= 4,
      `the killed replica served agents and the hammer's workers, which moved: ${JSON.stringify(figures)}`,
    );
    assert.ok(
      churnOps.registered + churnOps.deregistered >= 6,
      `routes changed during the run: ${JSON.stringify(churnOps)}`,
    );
    assertStreamHeld(streamResult, TRAFFIC_GAP_BOUND_MS);
    assert.ok(pingResult.received >= pingResult.sent - 2, `pings answered throughout: ${figures.podPings}`);
    assert.ok(
      pingResult.longestGapMs < TRAFFIC_GAP_BOUND_MS,
      `no ping gap over ${TRAFFIC_GAP_BOUND_MS} ms (longest ${pingResult.longestGapMs} ms)`,
    );
  },
);
