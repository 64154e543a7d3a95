import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { isAlive, readState, type ClusterState, type PodState } from '../cli/cluster/cluster.js';
import { bin } from './support/processes.js';
import { agentPeers, connectionsIn } from './support/control-plane-connections.js';
import { takeDownLocalCluster } from './support/local-cluster.js';
import { pings as reaches } from './support/pod-probes.js';
import { privilegedOrSkip } from './support/privileges.js';
import { eventually } from './support/eventually.js';

/**
 * The local cluster with two control-plane replicas (`cluster up --replicas 2`): real agents given both addresses.
 * The replica holding most of the agents' connections is SIGKILLed; the agents move to the other, pods keep talking,
 * a pod attached after the kill gets an address and is reached, and every node's kernel equals its desired state.
 */
const run = promisify(execFile);
const opts = privilegedOrSkip();
const stateDir = mkdtempSync(path.join(tmpdir(), 'weft-cp-replicas-'));
let state: ClusterState | null = null;

async function weft(...args: string[]): Promise<string> {
  const { stdout } = await run(bin.weft, [...args, '--state-dir', stateDir], { timeout: 120_000 });
  return stdout;
}
const addPod = async (node: string, pod: string) =>
  JSON.parse(await weft('cluster', 'pod', 'add', node, pod, '--json')) as PodState;
const pings = (from: PodState, to: string) => reaches(from, to, { attempts: 10, pauseMs: 300 });

describe('a local cluster with two control-plane replicas', opts, () => {
  let xtablesLockExisted = true;

  before(async () => {
    xtablesLockExisted = existsSync('/run/xtables.lock');
    await weft('cluster', 'up', '--nodes', '2', '--replicas', '2', '--json');
    state = readState(stateDir);
  });

  after(async () => {
    const replicaPids = (state?.replicas ?? []).map((r) => r.pid);
    await takeDownLocalCluster({ weft, stateDir, state, xtablesLockExisted });
    for (const pid of replicaPids) assert.ok(!isAlive(pid), `replica ${pid} left running`);
  });

  test('SIGKILL the replica the agents use: they move to the other, pods keep talking, a new pod attaches, kernels converge', async () => {
    const s = readState(stateDir);
    assert.equal(s.replicas?.length, 1);
    const replicas = [s.controlPlane, s.replicas![0]!];
    const a = await addPod('node1', 'rep-a');
    const b = await addPod('node2', 'rep-b');
    assert.ok(await pings(b, a.addresses[0]!), "node2's pod reaches node1's pod");

    // Both agents (three clients each) hold connections; the replica with the most is the one they use.
    const counts = await Promise.all(replicas.map((r) => connectionsIn(r.netns)));
    assert.ok(counts[0]! + counts[1]! >= 2, `agent connections: ${counts.join(', ')}`);
    const victim = counts[0]! >= counts[1]! ? 0 : 1;
    const survivor = replicas[1 - victim]!;
    const killedAt = Date.now();
    process.kill(replicas[victim]!.pid, 'SIGKILL');

    // Pods keep talking while the agents move.
    assert.ok(await pings(b, a.addresses[0]!), 'pods keep talking after the kill');
    // Writes again: a pod attached after the kill gets an address (CNI ADD → agent → IPAM on the survivor).
    const c = await addPod('node1', 'rep-c');
    const attachMs = Date.now() - killedAt;
    assert.ok(await pings(b, c.addresses[0]!), "the new pod is reached from node2's pod");
    await eventually(
      'every agent connected to the survivor alone',
      async () => {
        for (const n of s.nodes) {
          const peers = await agentPeers(n.netns);
          if (!peers.has(survivor.address) || peers.has(replicas[victim]!.address)) return false;
        }
        return true;
      },
      30_000,
      500,
    );
    // Every node's kernel equals its desired state, read through the surviving replica.
    for (const node of ['node1', 'node2'])
      await eventually(
        `${node}'s kernel equals its desired state`,
        async () => {
          await weft('routes', node, '--server', `unix://${survivor.socket}`);
          return true;
        },
        30_000,
        1000,
      );
    process.stdout.write(
      `# cluster replicas: agent connections ${counts.join(' / ')}, killed replica ${victim + 1}; a pod attached ${attachMs} ms after the kill\n`,
    );
  });
});
