import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import pg from 'pg';
import { createClient } from '../lib/grpc/client.js';
import { leaderQuery, LEADER_ROLES } from '../lib/db/leadership.js';
import { silentLogger } from '../lib/logger.js';
import { readCa } from '../lib/pki.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { PolicyServiceService } from '../gen/weft/policy/v1/policy.js';
import { createNodeSimulator, simUnderlay, simVtepMac, type NodeSimulator, type SimPod } from '../bench/node-sim.js';
import { createPolicyChunkJoiner } from '../node-dataplane/sources/chunks.js';
import { applyPolicyMessage } from '../node-dataplane/sources/policy-watch.js';
import type { NodeRules } from '../node-dataplane/domain/network-policy.js';
import { createTestDatabase, type TestDatabase } from './support/database.js';
import { startReplicaProcess, testPki, type ReplicaProcess, type TestPki } from './support/control-plane.js';
import { eventually } from './support/eventually.js';
import { bin } from './support/processes.js';

/**
 * Three `weft up` replicas (separate processes) on one PostgreSQL (an embedded server, as an external DATABASE_URL),
 * simulated agents (bench/node-sim.ts: the real gRPC API, the agent's own stream followers) given all three as one
 * endpoint list, and an allocation hammer. The replica that the agents and the hammer use, which also leads every
 * singleton role, is SIGKILLed. Then: no acknowledged allocation lost, no address live twice, the agents' route and
 * policy views equal what a fresh stream gives, the leaders moved to a survivor and at no moment did two sessions act
 * for one role (sampled from pg_locks and pg_stat_activity), and the time until writes work again is measured.
 */
const NODES = 6;
const LEASE_MS = 3000;

type Replica = ReplicaProcess & { index: number };

let db: TestDatabase;
let pki: TestPki;
let admin: pg.Client;
const replicas: Replica[] = [];
let sim: NodeSimulator | null = null;
const closers: (() => void)[] = [];

async function startReplica(index: number): Promise<Replica> {
  const r = await startReplicaProcess({
    db,
    pki,
    listen: '127.0.0.1:0',
    name: `replica-${index}`,
    env: { WEFT_NODE_LEASE_MS: String(LEASE_MS), WEFT_IPAM_SWEEP_SECONDS: '1' },
  });
  const replica = { index, ...r };
  replicas.push(replica);
  return replica;
}

/** Which process leads each role now, by the pid in its session's application_name. */
async function leaders(): Promise<Map<number, number>> {
  const { rows } = await admin.query<{ role: number; application_name: string }>(leaderQuery);
  return new Map(rows.map((r) => [r.role, Number(/:(\d+)@/.exec(r.application_name)?.[1])]));
}

before(async () => {
  db = await createTestDatabase();
  pki = await testPki();
  admin = new pg.Client({ connectionString: db.url });
  await admin.connect();
});

after(async () => {
  for (const c of closers) c();
  sim?.close();
  await Promise.all(replicas.map((r) => r.close()));
  await admin?.end().catch(() => {});
  await db?.drop();
});

test('three replicas on one PostgreSQL: SIGKILL the one the agents use and that leads; nothing acknowledged is lost, agents move and converge, one leader per role throughout', async () => {
  // The first replica alone, until it leads every role: the one killed below then holds them all.
  const first = await startReplica(0);
  const roles = Object.values(LEADER_ROLES);
  await eventually(
    'the first replica leads every role',
    async () => {
      const l = await leaders();
      return roles.every((role) => l.get(role) === first.proc.child.pid);
    },
    20_000,
  );
  // Started together: they migrate one at a time (nothing to do) and contend for the roles.
  await Promise.all([startReplica(1), startReplica(2)]);
  const [r0, r1, r2] = [0, 1, 2].map((i) => replicas.find((r) => r.index === i)!);
  const endpoints = [r0!, r1!, r2!].map((r) => `127.0.0.1:${r.port}`).join(',');
  // pick_first in the order given (no shuffle, unlike the default): every client prefers the first replica, so the
  // kill below hits all of them.
  const ordered = { 'grpc.service_config': JSON.stringify({ loadBalancingConfig: [{ pick_first: {} }] }) };

  // Sample the database every 50 ms: who holds each role's lock, and which contender sessions are doing anything
  // but trying the lock. Every acting session must hold its role's lock.
  const violations: string[] = [];
  const holders = new Map<number, Set<number>>();
  let samples = 0;
  let exiting = 0;
  const sampler = new pg.Client({ connectionString: db.url });
  await sampler.connect();
  let sampling = true;
  const sampled = (async () => {
    while (sampling) {
      const { rows } = await sampler.query<{ app: string; pid: number; holds: number[] }>(
        `SELECT a.application_name AS app, a.pid,
           ARRAY(SELECT l.objid::int FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted
                   AND l.classid = 7400 AND l.objsubid = 2) AS holds
         FROM pg_stat_activity a
         WHERE a.application_name LIKE 'weft-leader:%' AND a.state <> 'idle' AND a.query NOT LIKE '%pg_try_advisory_lock%'`,
      );
      for (const r of rows) {
        const role = LEADER_ROLES[r.app.split(':')[1] as keyof typeof LEADER_ROLES];
        if (r.holds.includes(role)) continue;
        // A backend that is exiting (its client was killed) releases its locks after aborting its transaction and
        // before it leaves pg_stat_activity: seen in that moment, it is gone shortly after and committed nothing.
        await new Promise((res) => setTimeout(res, 300));
        const still = await sampler.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [r.pid]);
        if (still.rows.length > 0) violations.push(`${r.app} (pid ${r.pid}) acted without the lock`);
        else exiting++;
      }
      for (const [role, pid] of await leaders()) {
        if (!holders.has(role)) holders.set(role, new Set());
        holders.get(role)!.add(pid);
      }
      samples++;
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  closers.push(() => {
    sampling = false;
  });

  const ipam = createClient(IpamServiceService, endpoints, { security: pki.admin, channel: ordered });
  const policy = createClient(PolicyServiceService, endpoints, { security: pki.admin, channel: ordered });
  closers.push(
    () => ipam.close(),
    () => policy.close(),
  );
  await ipam.createPool({ name: 'rep', cidr: '10.72.0.0/16', blockPrefixLength: 28 });
  await policy.upsertNamespace({ name: 'ns-0', labels: { team: 'a' } });
  await policy.applyPolicies({
    objectsJson: [
      JSON.stringify({
        apiVersion: 'networking.k8s.io/v1',
        kind: 'NetworkPolicy',
        metadata: { name: 'p', namespace: 'ns-0' },
        spec: { podSelector: {}, ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: 'a' } } }] }] },
      }),
    ],
  });
  sim = createNodeSimulator({
    target: endpoints,
    ca: await readCa(pki.pkiDir),
    logger: silentLogger,
    channel: ordered,
  });
  await sim.addNodes(
    Array.from({ length: NODES }, (_, i) => ({
      name: `rep-${i}`,
      underlayAddress: simUnderlay(i),
      vtepMac: simVtepMac(i),
      cluster: '',
      pool: 'rep',
    })),
  );
  await eventually('every agent holds every node and a policy view', async () =>
    sim!.nodes.every((n) => n.routesSynced && n.routeView.size === NODES && n.policyRules !== null),
  );

  // The hammer: four workers attach pods (Allocate, through the agents' own clients) and detach every third.
  const acked = new Map<string, SimPod & { node: string }>();
  const detached = new Set<string>();
  const releasing = new Set<string>();
  const outcomes: { startedAt: number; ok: boolean }[] = [];
  let hammering = true;
  let seq = 0;
  const workers = Array.from({ length: 4 }, async (_, w) => {
    while (hammering) {
      const node = sim!.nodes[seq++ % NODES]!;
      const startedAt = Date.now();
      try {
        const pod = await sim!.attachPod(node, { namespace: 'ns-0', name: `p-${w}-${seq}` });
        acked.set(pod.handle, { ...pod, node: node.spec.name });
        outcomes.push({ startedAt, ok: true });
        if (seq % 3 === 0) {
          // A Release refused at the kill may still have committed: its pod is no longer counted as live.
          releasing.add(pod.handle);
          await sim!.detachPod(node, pod);
          detached.add(pod.handle);
        }
      } catch {
        outcomes.push({ startedAt, ok: false });
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  });
  closers.push(() => {
    hammering = false;
  });
  await new Promise((r) => setTimeout(r, 3000));
  const beforeKill = acked.size;
  assert.ok(beforeKill > 20, `the hammer allocates before the kill (${beforeKill})`);
  const breaksBefore = sim.stats().streamBreaks;

  // Moving to another replica resumes each route stream from its revision: no snapshot again (no re-sync storm).
  let routeSnapshotsAfterKill = 0;
  const moving = new Set(sim.nodes);
  sim.onRoutes((n, m) => {
    if (m.reset && moving.has(n)) routeSnapshotsAfterKill++;
  });
  const policyViews = () => [...moving].reduce((n, x) => n + x.policyCompleteViews, 0);
  const policyViewsBefore = policyViews();
  const killedAt = Date.now();
  r0!.proc.child.kill('SIGKILL');
  // Writes work again: the first allocation begun after the kill that succeeds.
  const recovered = await eventually(
    'an allocation begun after the kill succeeds',
    async () => outcomes.find((o) => o.ok && o.startedAt >= killedAt),
    20_000,
    10,
  );
  const writesAgainMs = Date.now() - killedAt;
  const leadersMoved = await eventually(
    'every role led by a survivor',
    async () => {
      const l = await leaders();
      return roles.every((role) => [r1!.proc.child.pid, r2!.proc.child.pid].includes(l.get(role))) && l;
    },
    20_000,
    20,
  );
  const leadersAgainMs = Date.now() - killedAt;
  await new Promise((r) => setTimeout(r, 3000));
  hammering = false;
  await Promise.all(workers);

  // A policy change after the kill: a pod in another namespace that the policy admits joins every agent's address set.
  await policy.upsertNamespace({ name: 'ns-1', labels: { team: 'a' } });
  await sim.attachPod(sim.nodes[0]!, { namespace: 'ns-1', name: 'late' });
  // A route change after the kill: a new node, in every agent's view.
  await sim.addNodes([
    { name: 'rep-late', underlayAddress: simUnderlay(NODES), vtepMac: simVtepMac(NODES), cluster: '', pool: 'rep' },
  ]);

  // No acknowledged allocation lost, none live twice.
  const live = new Map(
    (
      await admin.query<{ handle: string; address: string }>(
        'SELECT handle, host(address) AS address FROM ipam.allocations WHERE released_at IS NULL',
      )
    ).rows.map((r) => [r.handle, r.address]),
  );
  const lost = [...acked.values()].filter((p) => !releasing.has(p.handle) && live.get(p.handle) !== p.address);
  const unknown = [...releasing].filter((h) => !detached.has(h));
  assert.deepEqual(
    unknown.filter((h) => live.has(h) && live.get(h) !== acked.get(h)!.address),
    [],
    'a release whose outcome is unknown left the pod its address or nothing',
  );
  assert.deepEqual(
    lost.map((p) => p.handle),
    [],
    'every acknowledged allocation is live with its address',
  );
  const twice = await admin.query(
    'SELECT address FROM ipam.allocations WHERE released_at IS NULL GROUP BY address, routing_domain_id HAVING count(*) > 1',
  );
  assert.deepEqual(twice.rows, [], 'no address live twice');
  assert.deepEqual((await ipam.checkConsistency({})).problems, []);

  // The agents moved (their streams broke and reopened) and their views equal the database's and a fresh stream's.
  assert.ok(sim.stats().streamBreaks > breaksBefore, 'the agents were on the killed replica');
  assert.equal(routeSnapshotsAfterKill, 0, 'route streams resumed from their revision, without a snapshot');
  await eventually(
    "every agent's route view equals the logged route table",
    async () => {
      const { rows } = await admin.query<{
        routes: { node: string; underlayAddress: string; vtepMac: string; blockCidrs: string[] };
      }>('SELECT routes FROM routes.route_table');
      const table = new Map(
        rows.map(({ routes: r }) => [r.node, `${r.underlayAddress}|${r.vtepMac}|${r.blockCidrs.join(',')}`]),
      );
      if (table.size !== NODES + 1) throw new Error(`the route table holds ${table.size} nodes`);
      for (const n of sim!.nodes) {
        const wrong = [...table].filter(([k, v]) => n.routeView.get(k) !== v).map(([k]) => k);
        if (wrong.length > 0 || n.routeView.size !== table.size)
          throw new Error(
            `${n.spec.name} (revision ${n.routeRevision}) differs on ${wrong.join(', ')}: ${JSON.stringify([...n.routeView].filter(([k]) => wrong.includes(k)))} vs ${JSON.stringify([...table].filter(([k]) => wrong.includes(k)))}`,
          );
      }
      return true;
    },
    20_000,
  );
  const fresh = async (node: string): Promise<NodeRules> => {
    const joiner = createPolicyChunkJoiner();
    const stopper = new AbortController();
    try {
      for await (const chunk of policy.watchNodePolicy(
        { node, acceptDeltas: true, acceptChunks: true },
        { signal: stopper.signal },
      )) {
        const m = joiner.push(chunk);
        if (m && !m.bookmark) return applyPolicyMessage(null, m, () => {});
      }
    } finally {
      stopper.abort();
    }
    throw new Error('the policy stream ended');
  };
  // Order carries no meaning (a view built from deltas lists pods in the order they came).
  const comparable = (r: NodeRules | null) =>
    JSON.stringify(
      r && {
        pods: [...r.pods].sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`)),
        sets: [...r.sets].map(([k, v]) => [k, [...v].sort()]).sort(),
      },
    );
  await eventually(
    "every agent's policy view equals a fresh stream's",
    async () => {
      for (const n of sim!.nodes) {
        if (!n.policyRules) return false;
        const [held, truth] = [comparable(n.policyRules), comparable(await fresh(n.spec.name))];
        if (held !== truth) {
          let i = 0;
          while (held[i] === truth[i]) i++;
          throw new Error(`${n.spec.name}: …${held.slice(i - 200, i + 200)} vs …${truth.slice(i - 200, i + 200)}`);
        }
      }
      return true;
    },
    20_000,
    500,
  );

  // The CLI, given the dead replica first, answers from another.
  const cli = spawnSync(bin.weft, ['ipam', 'check', '--server', endpoints, '--tls-dir', pki.adminTlsDir], {
    encoding: 'utf8',
    timeout: 30_000,
    env: { ...process.env, WEFT_CLUSTER_DIR: path.join(r1!.dataDir, 'no-cluster') },
  });
  assert.equal(cli.status, 0, cli.stderr);

  sampling = false;
  await sampled;
  await sampler.end();
  assert.deepEqual(violations, [], 'no contender acted without its lock');
  assert.ok(samples > 50, `samples: ${samples}`);
  const resigned = replicas.flatMap((r) =>
    r.proc
      .output()
      .split('\n')
      .filter((l) => /resigning leadership|leader election session failed/.test(l)),
  );
  for (const role of roles)
    assert.ok(
      holders.get(role)!.has(r0!.proc.child.pid!) && [...holders.get(role)!].length === 2,
      `role ${role} went from the killed replica to exactly one survivor: ${[...holders.get(role)!].join(', ')}\n${resigned.join('\n')}`,
    );
  const failed = outcomes.filter((o) => !o.ok).length;
  process.stdout.write(
    `# replicas: writes again ${writesAgainMs} ms after the kill (first: an allocation begun ${recovered.startedAt - killedAt} ms after it); ` +
      `every role led by a survivor after ${leadersAgainMs} ms (${[...leadersMoved.values()].join(', ')}); ` +
      `route snapshots after the kill ${routeSnapshotsAfterKill}, complete policy views ${policyViews() - policyViewsBefore} (one per reopened stream); ` +
      `${acked.size} allocations acknowledged (${beforeKill} before the kill), ${failed} calls refused (${unknown.length} of them releases); ${samples} database samples (${exiting} saw an exiting backend)\n`,
  );
});
