import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  controlPlaneTarget,
  readState,
  type ClusterState,
  type PodState,
  clusterAdminSecurity,
} from '../cli/cluster/cluster.js';
import { createClient } from '../lib/grpc/client.js';
import { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import { bin } from './support/processes.js';
import { takeDownLocalCluster } from './support/local-cluster.js';
import { pings as reaches } from './support/pod-probes.js';
import { privilegedOrSkip } from './support/privileges.js';

/**
 * A node that loses its registration while its agent and pods run (on the local cluster: real kernel, real agents,
 * pods attached by weft-cni). The control plane runs with a short lease and a fast IPAM sweep with a short grace
 * for gone nodes, so that a node left deregistered would lose its pods' addresses within seconds.
 */
const run = promisify(execFile);
const opts = privilegedOrSkip();
const stateDir = mkdtempSync(path.join(tmpdir(), 'weft-rereg-'));
const LEASE_MS = 3000;
const GRACE_S = 5;
const env = {
  ...process.env,
  WEFT_NODE_LEASE_MS: String(LEASE_MS),
  WEFT_IPAM_SWEEP_SECONDS: '1',
  WEFT_IPAM_NODE_GONE_GRACE_SECONDS: String(GRACE_S),
};
let state: ClusterState | null = null;

async function weft(...args: string[]): Promise<string> {
  const { stdout } = await run(bin.weft, [...args, '--state-dir', stateDir], { timeout: 120_000, env });
  return stdout;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const allocations = async () =>
  JSON.parse(await weft('ipam', 'allocations', '--json')) as { handle: string; address: string; node: string }[];
const addPod = async (node: string, pod: string) =>
  JSON.parse(await weft('cluster', 'pod', 'add', node, pod, '--namespace', 'rereg', '--json')) as PodState;

const pings = (from: PodState, to: string) => reaches(from, to, { attempts: 10, pauseMs: 300 });

describe('a node that lost its registration while its pods run', opts, () => {
  let xtablesLockExisted = true;

  before(async () => {
    xtablesLockExisted = existsSync('/run/xtables.lock');
    await weft('cluster', 'up', '--nodes', '2', '--json');
    state = readState(stateDir);
  });

  after(async () => {
    await takeDownLocalCluster({ weft, stateDir, state, xtablesLockExisted });
  });

  test('a node deregistered while its agent and pods run: the agent registers it again, and its pods keep their addresses (no other pod gets them)', async (t) => {
    const pods = [await addPod('node1', 'r1-a'), await addPod('node1', 'r1-b'), await addPod('node2', 'r2-a')];
    const held = (await allocations())
      .filter((a) => a.node === 'node1')
      .map((a) => `${a.handle} ${a.address}`)
      .sort();
    assert.equal(held.length, 2, "node1's two pods hold an address each");
    assert.ok(await pings(pods[2]!, pods[0]!.addresses[0]!), "node2's pod reaches node1's pod");

    const routes = createClient(RoutesServiceService, controlPlaneTarget(readState(stateDir)), {
      security: clusterAdminSecurity(readState(stateDir)),
    });
    try {
      const deregisteredAt = Date.now();
      assert.equal((await routes.deregisterNode({ name: 'node1' }, { timeoutMs: 10_000 })).deregistered, true);
      let backAfter = -1;
      for (const deadline = Date.now() + 3 * LEASE_MS; Date.now() < deadline; await sleep(100)) {
        const listed = (await routes.listNodes({}, { timeoutMs: 5000 })).nodes.find((n) => n.name === 'node1');
        if (listed) {
          backAfter = Date.now() - deregisteredAt;
          assert.equal(
            listed.underlayAddress,
            state!.nodes.find((n) => n.name === 'node1')!.address,
            'registered again with its underlay address',
          );
          break;
        }
      }
      t.diagnostic(
        `node1 back in the node list ${backAfter} ms after DeregisterNode (lease ${LEASE_MS} ms, renewal every third)`,
      );
      assert.ok(backAfter >= 0, "node1's agent registered it again");
    } finally {
      routes.close();
    }

    // The IPAM sweep (every second) has had the gone-node grace and more to release node1's addresses: it must not.
    await sleep((GRACE_S + 3) * 1000);
    const after = (await allocations())
      .filter((a) => a.node === 'node1')
      .map((a) => `${a.handle} ${a.address}`)
      .sort();
    assert.deepEqual(after, held, "node1's running pods still hold their addresses");
    const newcomer = await addPod('node2', 'r2-b');
    assert.ok(
      !pods.slice(0, 2).some((p) => p.addresses[0] === newcomer.addresses[0]),
      `a new pod got ${newcomer.addresses[0]}, not one of node1's pods' addresses`,
    );
    assert.ok(
      await pings(pods[2]!, pods[0]!.addresses[0]!),
      "node2's pod reaches node1's pod again (node1 is back in the route table)",
    );
    assert.ok(await pings(newcomer, pods[1]!.addresses[0]!), 'and so does the new pod');
  });
});
