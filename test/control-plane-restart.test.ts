import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createClient } from '../lib/grpc/client.js';
import { silentLogger } from '../lib/logger.js';
import { readCa } from '../lib/pki.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { PolicyServiceService } from '../gen/weft/policy/v1/policy.js';
import { createNodeSimulator, simUnderlay, simVtepMac, type NodeSimulator } from '../bench/node-sim.js';
import { createTestDatabase, type TestDatabase } from './support/database.js';
import { startWeftUp, type WeftUp } from './support/weft-up.js';

/**
 * `weft up` restarted (SIGTERM, then a start on the same data and port) under N simulated agents (bench/node-sim.ts,
 * the agent's own followStream and lease code): every agent is back in sync soon after the control plane serves
 * again, and its streams break only while the control plane is away, not again once it serves. N is
 * WEFT_TEST_RESTART_NODES (100).
 */
const N = Number(process.env.WEFT_TEST_RESTART_NODES ?? 100);
let db: TestDatabase;
let dir: string;
let cp: WeftUp;
let sim: NodeSimulator;

before(async () => {
  db = await createTestDatabase();
  dir = mkdtempSync(path.join(tmpdir(), 'weft-test-restart-'));
  cp = await startWeftUp({ dataDir: path.join(dir, 'cp'), databaseUrl: db.appUrl, migrationDatabaseUrl: db.url });
  const { target, security } = cp;
  const ipam = createClient(IpamServiceService, target, { security });
  const policy = createClient(PolicyServiceService, target, { security });
  try {
    await ipam.createPool({ name: 'sim', cidr: '10.70.0.0/16', blockPrefixLength: 26 });
    await policy.upsertNamespace({ name: 'ns-0' });
  } finally {
    ipam.close();
    policy.close();
  }
  sim = createNodeSimulator({ target, ca: await readCa(cp.pkiDir), logger: silentLogger });
  await sim.addNodes(
    Array.from({ length: N }, (_, i) => ({
      name: `sim-${i}`,
      underlayAddress: simUnderlay(i),
      vtepMac: simVtepMac(i),
      cluster: '',
      pool: 'sim',
    })),
  );
  const deadline = Date.now() + 120_000;
  while (!sim.nodes.every((n) => n.routesSynced && n.routeView.size === N && n.policyRules !== null)) {
    if (Date.now() > deadline) throw new Error('the simulated agents did not settle');
    await new Promise((r) => setTimeout(r, 50));
  }
});

after(async () => {
  sim?.close();
  await cp?.stop();
  await db?.drop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test(`${N} agents: after a restart every agent is back in sync, and streams break only while the control plane is away`, async () => {
  const views = sim.nodes.map((n) => n.policyCompleteViews);
  const back: number[] = [];
  const seen = new Set<string>();
  sim.onPolicy((node, m) => {
    if (m.delta || m.bookmark || seen.has(node.spec.name)) return;
    seen.add(node.spec.name);
    back.push(performance.now());
  });
  const s0 = sim.stats();
  const reasons0 = new Map(s0.reasons);
  const t0 = performance.now();
  await cp.stop(30_000);
  await cp.start();
  const tServing = performance.now();
  const deadline = tServing + 60_000;
  while (!sim.nodes.every((n, i) => n.policyCompleteViews > views[i]!)) {
    if (performance.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const tSynced = performance.now();
  // A little longer: a stream that broke again after reconnecting would show here.
  await new Promise((r) => setTimeout(r, 3000));
  const s1 = sim.stats();
  const why = [...s1.reasons]
    .map(([k, v]) => [k, v - (reasons0.get(k) ?? 0)] as const)
    .filter(([, v]) => v > 0)
    .sort((a, b) => b[1] - a[1]);
  const afterServing = s1.breakTimes.filter((t) => t > tServing).length;
  const report = {
    stopStartMs: Math.round(tServing - t0),
    servingToSyncedMs: Math.round(tSynced - tServing),
    breaks: s1.streamBreaks - s0.streamBreaks,
    breaksAfterServing: afterServing,
    renewalFailures: s1.renewalFailures - s0.renewalFailures,
    why: Object.fromEntries(why.slice(0, 12)),
    policyBackAfterServingMs: [0, 0.1, 0.5, 0.9, 1].map((q) =>
      Math.round(back.sort((a, b) => a - b)[Math.min(back.length - 1, Math.floor(q * back.length))]! - tServing),
    ),
  };
  process.stderr.write(`${JSON.stringify(report, null, 1)}\n`);
  assert.ok(
    sim.nodes.every((n, i) => n.policyCompleteViews > views[i]!),
    'not every agent was back within 60 s',
  );
  // Each stream breaks once, when the control plane ends it; its reopening waits for the connection (waitForReady)
  // instead of failing at every retry with the last connection error, also after the control plane serves again
  // (grpc-js's channel backoff, up to 120 s, kept failing calls for tens of seconds).
  assert.ok(afterServing <= N / 20, `${afterServing} streams broke after the control plane served again`);
  assert.ok(report.breaks <= 2 * N + N / 10, `${report.breaks} stream breaks for ${2 * N} streams`);
  // A renewal waits for the connection (up to its 5 s deadline) rather than failing every second of the outage.
  assert.ok(report.renewalFailures <= 2 * N, `${report.renewalFailures} renewals failed`);
  assert.ok(report.servingToSyncedMs <= 30_000, `in sync ${report.servingToSyncedMs} ms after serving`);
});
