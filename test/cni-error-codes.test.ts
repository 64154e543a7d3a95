/**
 * The CNI error codes a runtime acts on, from the real `weft-cni` executable run as a runtime runs it against a real
 * agent and control plane (a one-node local cluster): 7 (invalid network configuration: fix the config) and 11 (try
 * again later). Everything the test makes carries the cluster's prefix and goes with `weft cluster down`, also on
 * failure. Touches the kernel: run it under the kernel lock.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { runCni, type ClusterState, type NodeState, clusterAdminSecurity } from '../cli/cluster/cluster.js';
import { createClient, type PromiseClient } from '../lib/grpc/client.js';
import { hostIfnameFor } from '../node-dataplane/kernel/pod-network.js';
import { privilegedOrSkip } from './support/privileges.js';
import path from 'node:path';
import { embeddedDatabaseUrls } from '../lib/db/embedded.js';
import { startSqlShellInNetns } from './support/sql-shell.js';
import { bringUpTestCluster, takeDownTestCluster, type TestCluster } from './support/local-cluster.js';

const sh = promisify(execFile);

describe('weft-cni error codes a runtime can act on, against a real agent', privilegedOrSkip(), () => {
  let cluster: TestCluster | undefined;
  let state: ClusterState;
  let node: NodeState;
  let ipam: PromiseClient<typeof IpamServiceService>;
  let podCount = 0;

  interface Pod {
    containerId: string;
    netns: string;
    netnsName: string;
  }

  async function newPod(label: string): Promise<Pod> {
    const netnsName = `${state.prefix}-pod-${label}`;
    await sh('ip', ['netns', 'add', netnsName]);
    return { containerId: `${label}-${++podCount}-${state.prefix}`, netns: `/var/run/netns/${netnsName}`, netnsName };
  }
  const dropPod = (p: Pod) => sh('ip', ['netns', 'del', p.netnsName]).catch(() => {});

  const netconf = (extra: Record<string, unknown> = {}) =>
    JSON.stringify({ cniVersion: '1.0.0', name: 'weft', type: 'weft', agentSocket: node.socket, ...extra });

  async function cni(command: string, pod: Pod, stdin: string, cniArgs = '') {
    const env: Record<string, string> = {
      CNI_COMMAND: command,
      CNI_CONTAINERID: pod.containerId,
      CNI_NETNS: pod.netns,
      CNI_IFNAME: 'eth0',
    };
    if (cniArgs) env.CNI_ARGS = cniArgs;
    const out = await runCni(node, env, stdin);
    return { status: out.exitCode, stdout: out.stdout, stderr: out.stderr };
  }

  function cniError(
    run: { status: number | null; stdout: string; stderr: string },
    code: number,
  ): { code: number; msg: string; details?: string } {
    assert.equal(run.status, 1, `exit status; stdout: ${run.stdout} stderr: ${run.stderr}`);
    const doc = JSON.parse(run.stdout.trim()) as { code: number; msg: string; details?: string };
    assert.equal(doc.code, code, `code ${doc.code}; msg: ${doc.msg}; details: ${doc.details}`);
    return doc;
  }

  const holderOf = async (p: Pod) =>
    (await ipam.listAllocations({ pool: '', node: node.name }, { timeoutMs: 10_000 })).allocations.find(
      (a) => a.handle === `${p.containerId}/eth0`,
    );
  const hostLinkExists = async (p: Pod) =>
    (await sh('ip', ['-n', node.netns, 'link', 'show'])).stdout.includes(hostIfnameFor(p.containerId, 'eth0'));

  before(async () => {
    const started = bringUpTestCluster('cni-codes');
    cluster = started.cluster;
    state = await started.up;
    node = state.nodes[0]!;
    ipam = createClient(IpamServiceService, `unix://${state.controlPlane.socket}`, {
      security: clusterAdminSecurity(state),
    });
  });

  after(async () => {
    ipam?.close();
    await takeDownTestCluster(cluster);
  });

  /**
   * A session in the control plane's database holding the locks an Allocate for the node needs (the node's blocks,
   * and the claim lock for a node without one), until the test commits it: IPAM's answer is delayed at will.
   */
  async function holdAllocateLocks() {
    // The control plane's embedded PostgreSQL: its unix socket and owner password are in its data folder.
    const db = await startSqlShellInNetns(
      state.controlPlane.netns,
      embeddedDatabaseUrls(path.dirname(state.controlPlane.socket), 54329).ownerUrl,
    );
    await db.query('BEGIN');
    await db.query(`SELECT pg_advisory_xact_lock(hashtext('ipam.block_claims'))`);
    await db.query(`SELECT id FROM ipam.blocks WHERE node = '${node.name}' FOR UPDATE`);
    return db;
  }

  it('a network config naming an unknown pool is code 7 (invalid network config) naming the pool, and changes nothing', async () => {
    const pod = await newPod('nopool');
    try {
      const doc = cniError(await cni('ADD', pod, netconf({ pool: 'no-such-pool' })), 7);
      assert.match(doc.msg, /"no-such-pool"/, doc.msg);
      assert.match(doc.msg, /network config/, doc.msg);
      assert.equal(await holderOf(pod), undefined, 'nothing is allocated');
      assert.ok(!(await hostLinkExists(pod)), 'no host veth remains');
      assert.equal((await cni('DEL', pod, netconf({ pool: 'no-such-pool' }))).status, 0);
    } finally {
      await dropPod(pod);
    }
  });

  it('a requested address still cooling down is code 11 (try again later) saying when it frees, and changes nothing', async () => {
    const [first, second] = (await Promise.all([newPod('cool-a'), newPod('cool-b')])) as [Pod, Pod];
    const address = '10.244.5.9';
    try {
      const added = await cni('ADD', first, netconf(), `IgnoreUnknown=1;IP=${address}`);
      assert.equal(added.status, 0, added.stdout);
      assert.equal((await holderOf(first))?.address, address);
      assert.equal((await cni('DEL', first, netconf())).status, 0);
      const releasedAt = Date.now();
      // The pool's cool-down is 30 s: the address rests until then, whether asked for in CNI_ARGS or runtimeConfig.
      for (const run of [
        await cni('ADD', second, netconf(), `IgnoreUnknown=1;IP=${address}`),
        await cni('ADD', second, netconf({ runtimeConfig: { ips: [`${address}/16`] } })),
      ]) {
        const doc = cniError(run, 11);
        assert.ok(doc.msg.includes(address), doc.msg);
        const until = /(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)/.exec(doc.msg)?.[1];
        assert.ok(until, `the message says when the address frees: ${doc.msg}`);
        const frees = Date.parse(until);
        assert.ok(
          frees > Date.now() && frees <= releasedAt + 31_000,
          `frees at ${until}, 30 s after the release at ${new Date(releasedAt).toISOString()}`,
        );
      }
      assert.equal(await holderOf(second), undefined, 'nothing is allocated');
      assert.ok(!(await hostLinkExists(second)), 'no host veth remains');
      assert.equal((await cni('DEL', second, netconf())).status, 0);
    } finally {
      await Promise.all([first, second].map(dropPod));
    }
  });

  it('an ADD whose Allocate IPAM commits only after the agent gave up on it is code 11 and leaves no address behind', async () => {
    // The agent waits 20 s for IPAM's Allocate, then releases the handle to undo it. The test holds the locks that
    // the Allocate needs (the node's blocks, and the claim lock for a node without one) in the control plane's
    // database past that, so the Allocate commits only after the agent's release: that release must fence it.
    const pod = await newPod('late');
    const db = await holdAllocateLocks();
    try {
      const started = Date.now();
      const adding = cni('ADD', pod, netconf());
      await sleep(started + 22_000 - Date.now());
      await db.query('COMMIT');
      const doc = cniError(await adding, 11);
      assert.match(doc.msg, /try again later/, doc.msg);
      // Until nothing the agent started runs in the database any more.
      for (let i = 0; ; i++) {
        const [busy] =
          await db.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
          AND backend_type = 'client backend' AND (state = 'active' OR state LIKE 'idle in transaction%')`);
        if (Number(busy!.n) === 0) break;
        assert.ok(i < 500, 'the control plane is still busy');
        await sleep(20);
      }
      assert.equal(await holderOf(pod), undefined, 'no address is live for the handle of the failed ADD');
      assert.ok(!(await hostLinkExists(pod)), 'no host veth remains');
      assert.equal((await cni('DEL', pod, netconf())).status, 0);
    } finally {
      await db.close();
      await dropPod(pod);
    }
  });
  it("a DEL that arrives while the same interface's ADD still waits for IPAM leaves neither an address nor an interface", async () => {
    // A runtime whose ADD timed out runs DEL while the agent's ADD is still waiting for IPAM. The DEL must not answer
    // before that ADD has ended: otherwise the ADD attaches the pod afterwards and its address is never released.
    const pod = await newPod('racing');
    const db = await holdAllocateLocks();
    try {
      const adding = cni('ADD', pod, netconf());
      await sleep(1500);
      let delEnded = 0;
      const deleting = cni('DEL', pod, netconf()).then((r) => ((delEnded = Date.now()), r));
      await sleep(1500);
      const unlocked = Date.now();
      await db.query('COMMIT');
      const [added, deleted] = await Promise.all([adding, deleting]);
      assert.equal(deleted.status, 0, deleted.stdout);
      assert.ok(delEnded >= unlocked, 'DEL answered only after the ADD it raced had ended');
      assert.equal(added.status, 0, added.stdout);
      assert.equal(await holderOf(pod), undefined, 'no address is live for the deleted interface');
      assert.ok(!(await hostLinkExists(pod)), 'no host veth remains');
    } finally {
      await db.close();
      await dropPod(pod);
    }
  });
});
