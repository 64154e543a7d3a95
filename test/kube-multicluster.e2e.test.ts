import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { Address4 } from 'ip-address';
import { controlPlaneTarget, type ClusterState, type PodState, clusterAdminSecurity } from '../cli/cluster/cluster.js';
import { createClient } from '../lib/grpc/client.js';
import { errorCodeOf } from '../lib/grpc/errors.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { kubeApiserverSkipReason, startKubeApiserver, type KubeApiserver } from './support/kube-apiserver.js';
import { bringUpTestCluster, takeDownTestCluster, type TestCluster } from './support/local-cluster.js';
import { listenTcp, tcpConnects } from './support/pod-probes.js';
import { eventually } from './support/eventually.js';
import { bin } from './support/processes.js';
import { privilegedSkipReason, skipOutsideCi } from './support/privileges.js';

/**
 * Two Kubernetes clusters, one Weft: two real API servers, one local cluster of four nodes (two Nodes in each API
 * server), one `weft kube-controller` per cluster. Each controller carves its cluster's pod prefix from one shared IPAM
 * aggregate and makes its pool over it, selecting its own nodes; the database keeps the prefixes apart.
 */
const run = promisify(execFile);
const opts = skipOutsideCi(privilegedSkipReason() ?? kubeApiserverSkipReason());
const AGGREGATE_CIDR = '10.64.0.0/12';

describe('two Kubernetes clusters on one Weft', opts, () => {
  const apis: Record<string, KubeApiserver> = {};
  let cluster: TestCluster | undefined;
  let state: ClusterState;
  const controllers: ChildProcess[] = [];
  const listeners: ChildProcess[] = [];
  let ipam: ReturnType<typeof createClient<typeof IpamServiceService>>;
  const weft = (...args: string[]) =>
    run(bin.weft, [...args, '--state-dir', cluster!.stateDir], { timeout: 60_000 }).then((r) => r.stdout);

  before(async () => {
    const [east, west] = await Promise.all([startKubeApiserver(), startKubeApiserver()]);
    apis.east = east;
    apis.west = west;
    const up = bringUpTestCluster('kube-multi', 4);
    cluster = up.cluster;
    state = await up.up;
    ipam = createClient(IpamServiceService, controlPlaneTarget(state), { security: clusterAdminSecurity(state) });
    await ipam.createAggregate({ name: 'pods', cidr: AGGREGATE_CIDR }, { timeoutMs: 5000 });
    // The local cluster's own pool serves nodes of no Kubernetes cluster only.
    const pools = (await ipam.listPools({}, { timeoutMs: 5000 })).pools;
    for (const p of pools) await weft('ipam', 'pool', 'update', p.name, '--node-selector', '!weft.io/cluster');
    const names = state.nodes.map((n) => n.name);
    const members: Record<string, string[]> = { east: names.slice(0, 2), west: names.slice(2, 4) };
    for (const [name, api] of Object.entries(apis)) {
      await api.kubectl(['create', 'namespace', 'weft-system']);
      for (const n of members[name]!)
        await api.kubectl(['apply', '-f', '-'], {
          input: JSON.stringify({ apiVersion: 'v1', kind: 'Node', metadata: { name: n } }),
        });
      // Each controller's certificate (weft:controller:<cluster>), issued with the CLI as an operator would.
      const tlsDir = path.join(state.stateDir, `controller-${name}`);
      await weft('ca', 'issue', '--controller', name, '--out', tlsDir, '--data-dir', path.join(state.stateDir, 'cp'));
      const child = spawn(bin.weft, ['kube-controller'], {
        stdio: ['ignore', 'ignore', 'inherit'],
        env: {
          ...process.env,
          WEFT_CONTROL_PLANE: controlPlaneTarget(state),
          WEFT_TLS_DIR: tlsDir,
          WEFT_KUBECONFIG: api.kubeconfig,
          WEFT_K8S_CLUSTER: name,
          WEFT_K8S_POD_AGGREGATE: 'pods',
          WEFT_K8S_POD_PREFIX_LENGTH: '16',
          WEFT_K8S_POD_BLOCK_PREFIX_LENGTH: '26',
          // One policy service holds one cluster's names (see kube-controller/DESIGN.md): east feeds it.
          WEFT_K8S_POLICY: name === 'east' ? 'true' : 'false',
          WEFT_K8S_HEALTH_LISTEN: 'off',
          WEFT_K8S_LEASE_SECONDS: '4',
          WEFT_LOG_LEVEL: 'warn',
          POD_NAME: `${name}-ctl`,
        },
      });
      controllers.push(child);
    }
  });

  after(async () => {
    for (const c of controllers) {
      if (c.exitCode === null && c.signalCode === null) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(() => c.kill('SIGKILL'), 10_000);
          c.once('exit', () => {
            clearTimeout(t);
            resolve();
          });
          c.kill('SIGTERM');
        });
      }
    }
    for (const l of listeners) l.kill('SIGKILL');
    ipam?.close();
    await takeDownTestCluster(cluster);
    for (const api of Object.values(apis)) await api.stop();
  });

  test("each cluster's pods get addresses from its own prefix of the shared aggregate, and reach each other across nodes", async () => {
    const prefixes = await eventually('both clusters carved a prefix and made their pools', async () => {
      const p = (await ipam.listPrefixes({ aggregate: 'pods' }, { timeoutMs: 5000 })).prefixes;
      const pools = (await ipam.listPools({}, { timeoutMs: 5000 })).pools.map((x) => x.name);
      return p.length === 2 && pools.includes('east-pods') && pools.includes('west-pods') ? p : false;
    });
    const cidr = Object.fromEntries(prefixes.map((p) => [p.cluster, p.cidr])) as Record<string, string>;
    assert.notEqual(cidr.east, cidr.west);
    for (const c of Object.values(cidr))
      assert.ok(new Address4(c).isInSubnet(new Address4(AGGREGATE_CIDR)), `${c} inside ${AGGREGATE_CIDR}`);
    assert.ok(
      !new Address4(cidr.east!).isInSubnet(new Address4(cidr.west!)) &&
        !new Address4(cidr.west!).isInSubnet(new Address4(cidr.east!)),
      'the prefixes do not overlap',
    );

    const pods: Record<string, PodState[]> = { east: [], west: [] };
    for (const name of ['east', 'west'] as const) {
      const api = apis[name]!;
      const ns = `${name}-apps`;
      await api.kubectl(['apply', '-f', '-'], {
        input: JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } }),
      });
      await api.kubectl(['apply', '-f', '-'], {
        input: JSON.stringify({
          apiVersion: 'v1',
          kind: 'ServiceAccount',
          metadata: { namespace: ns, name: 'default' },
        }),
      });
      const nodes = JSON.parse((await api.kubectl(['get', 'nodes', '-o', 'json'])).stdout).items.map(
        (n: { metadata: { name: string } }) => n.metadata.name,
      ) as string[];
      for (const [i, node] of nodes.entries()) {
        const pod = `${name}-${i}`;
        await api.kubectl(['apply', '-f', '-'], {
          input: JSON.stringify({
            apiVersion: 'v1',
            kind: 'Pod',
            metadata: { namespace: ns, name: pod },
            spec: {
              nodeName: node,
              automountServiceAccountToken: false,
              containers: [{ name: 'app', image: 'weft.test/none' }],
            },
          }),
        });
        const uid = (await api.kubectl(['get', 'pod', '-n', ns, pod, '-o', 'jsonpath={.metadata.uid}'])).stdout.trim();
        // The node's cluster label reaches IPAM through the controller; until then no pool selects the node.
        const p = await eventually(
          `${ns}/${pod} attached on ${node}`,
          async () =>
            JSON.parse(
              await weft('cluster', 'pod', 'add', node, pod, '--namespace', ns, '--uid', uid, '--json'),
            ) as PodState,
        );
        pods[name]!.push(p);
      }
    }
    for (const name of ['east', 'west'] as const) {
      for (const p of pods[name]!)
        assert.ok(
          new Address4(p.addresses[0]!).isInSubnet(new Address4(cidr[name]!)),
          `${p.namespace}/${p.name} ${p.addresses[0]} in ${name}'s ${cidr[name]}`,
        );
      const [a, b] = pods[name] as [PodState, PodState];
      assert.notEqual(a.node, b.node);
      listeners.push(listenTcp(b));
      await eventually(
        `${a.name} reaches ${b.name} on another node of ${name}`,
        async () => (await tcpConnects(a, [`${b.addresses[0]}:80`]))[`${b.addresses[0]}:80`] === 'open',
      );
    }
    const allocs = (await ipam.listAllocations({ pageSize: 1000 }, { timeoutMs: 5000 })).allocations.filter(
      (a) => a.podName.startsWith('east-') || a.podName.startsWith('west-'),
    );
    assert.deepEqual(new Set(allocs.map((a) => a.pool)), new Set(['east-pods', 'west-pods']));
  });

  test("the database keeps clusters apart: a pool over a cluster's prefix is refused, and a third cluster gets another prefix", async () => {
    const east = (await ipam.listPrefixes({ cluster: 'east' }, { timeoutMs: 5000 })).prefixes[0]!;
    await assert.rejects(
      ipam.createPool({ name: 'squatter', cidr: east.cidr, blockPrefixLength: 26 }, { timeoutMs: 5000 }),
      (e: { code: number }) => errorCodeOf(e) === 'ipam.pool_overlaps',
    );
    await ipam.registerCluster({ name: 'third' }, { timeoutMs: 5000 });
    const third = (
      await ipam.allocatePrefix({ cluster: 'third', aggregate: 'pods', prefixLength: 16 }, { timeoutMs: 5000 })
    ).prefix!;
    const taken = (await ipam.listPrefixes({ aggregate: 'pods' }, { timeoutMs: 5000 })).prefixes
      .filter((p) => p.cluster !== 'third')
      .map((p) => p.cidr);
    assert.ok(!taken.includes(third.cidr));
    await ipam.releasePrefix({ name: third.name }, { timeoutMs: 5000 });
  });
});
