import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import { createClient } from '../lib/grpc/client.js';
import { silentLogger } from '../lib/logger.js';
import { readCa } from '../lib/pki.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { PolicyServiceService } from '../gen/weft/policy/v1/policy.js';
import { createNodeSimulator, simUnderlay, simVtepMac, type NodeSimulator } from '../bench/node-sim.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';
import { eventually } from './support/eventually.js';

/**
 * The node simulator bench/scale stands on: simulated agents against the real control plane (short leases, so that
 * renewals are seen), each with its own node certificate.
 */
let cp: TestControlPlane;
let sim: NodeSimulator;
const admin = {
  ipam: null as unknown as ReturnType<typeof createClient<typeof IpamServiceService>>,
  policy: null as unknown as ReturnType<typeof createClient<typeof PolicyServiceService>>,
};

before(async () => {
  cp = await startTestControlPlane({ settings: { nodeLeaseMs: '1500' } });
  admin.ipam = createClient(IpamServiceService, cp.address, { security: cp.security });
  admin.policy = createClient(PolicyServiceService, cp.address, { security: cp.security });
  await admin.ipam.createPool({ name: 'sim', cidr: '10.70.0.0/16', blockPrefixLength: 26 });
  await admin.policy.upsertNamespace({ name: 'ns-0' });
  await admin.policy.applyPolicies({
    objectsJson: [
      JSON.stringify({
        apiVersion: 'networking.k8s.io/v1',
        kind: 'NetworkPolicy',
        metadata: { name: 'p', namespace: 'ns-0' },
        spec: { podSelector: {}, ingress: [{ from: [{ podSelector: { matchLabels: { role: 'client' } } }] }] },
      }),
    ],
  });
  sim = createNodeSimulator({ target: cp.address, ca: await readCa(cp.pki.pkiDir), logger: silentLogger });
  await sim.addNodes(
    Array.from({ length: 5 }, (_, i) => ({
      name: `sim-${i}`,
      underlayAddress: simUnderlay(i),
      vtepMac: simVtepMac(i),
      cluster: '',
      pool: 'sim',
    })),
  );
});

after(async () => {
  sim?.close();
  admin.ipam?.close();
  admin.policy?.close();
  await cp?.stop();
});

test('simulated nodes register, keep their leases and hold every node (themselves included) and a policy view', async () => {
  await eventually('every view', async () => {
    if (sim.nodes.every((n) => n.routesSynced && n.routeView.size === 5 && n.policyRules !== null)) return true;
    throw new Error(JSON.stringify(sim.nodes.map((n) => [n.routesSynced, n.routeView.size, n.policyRules !== null])));
  });
  const before = sim.stats().renewals;
  // A lease of 1.5 s: each node renews every 500 ms; after 2 s every node is still in every view.
  await new Promise((r) => setTimeout(r, 2000));
  const s = sim.stats();
  assert.ok(s.renewals - before >= 5 * 3, `renewals in 2 s: ${s.renewals - before}`);
  assert.equal(s.renewalFailures, 0);
  assert.ok(
    sim.nodes.every((n) => n.routeView.size === 5),
    'a lease lapsed',
  );
});

test('a pod attached on a simulated node: its block reaches every other node, its report reaches policy', async () => {
  const node = sim.nodes[0]!;
  const pod = await sim.attachPod(node, { namespace: 'ns-0', name: 'a' });
  assert.match(pod.address, /^10\.70\./);
  await eventually('the block in every other view', async () =>
    sim.nodes.slice(1).every((n) => n.blocksOf('sim-0') === 1),
  );
  await eventually('the report taken', async () => sim.reportsPending() === 0);
  const { pods } = await admin.policy.listPods({ namespace: 'ns-0' });
  assert.deepEqual(
    pods.map((p) => [p.name, p.node, p.addresses]),
    [['a', 'sim-0', [pod.address]]],
  );
  // The pod's node holds its rules (selected by the namespace's policy).
  await eventually('rules for the pod', async () => node.policyRules?.pods.some((p) => p.name === 'a'));
  await sim.detachPod(node, pod);
  await eventually('the detach taken', async () => sim.reportsPending() === 0);
  assert.deepEqual((await admin.policy.listPods({ namespace: 'ns-0' })).pods, []);
});

test('each simulated node is its own identity: it may not allocate for another', async () => {
  const err = await sim.nodes[1]!.ipam.allocate({ handle: 'x/eth0', node: 'sim-2', pool: 'sim' }).then(
    () => null,
    (e: { code: number; details: string }) => e,
  );
  assert.equal(err?.code, status.PERMISSION_DENIED);
  assert.match(err!.details, /node sim-1 may only allocate for itself/);
});

test('underlay addresses come from documentation and benchmarking ranges, each once', () => {
  assert.equal(simUnderlay(0), '192.0.2.1');
  assert.equal(simUnderlay(254), '198.51.100.1');
  assert.equal(simUnderlay(508), '203.0.113.1');
  assert.equal(simUnderlay(762), '198.18.0.1');
  const all = Array.from({ length: 20_000 }, (_, i) => simUnderlay(i));
  assert.equal(new Set(all).size, all.length);
  assert.ok(
    all.every(
      (a) => /^(192\.0\.2|198\.51\.100|203\.0\.113|198\.1[89])\./.test(a) && !a.endsWith('.0') && !a.endsWith('.255'),
    ),
  );
  assert.equal(new Set(Array.from({ length: 20_000 }, (_, i) => simVtepMac(i))).size, 20_000);
});
