import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import {
  controlPlaneTarget,
  type ClusterState,
  type PodState,
  clusterAdminSecurity,
  issueClusterCredentials,
} from '../cli/cluster/cluster.js';
import { createClient } from '../lib/grpc/client.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { PolicyServiceService } from '../gen/weft/policy/v1/policy.js';
import { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import { startBlackholeProxy, type BlackholeProxy } from './support/blackhole-proxy.js';
import { kubeApiserverSkipReason, startKubeApiserver, type KubeApiserver } from './support/kube-apiserver.js';
import { bringUpTestCluster, takeDownTestCluster, type TestCluster } from './support/local-cluster.js';
import { listenTcp, tcpConnects } from './support/pod-probes.js';
import { freePort } from './support/ports.js';
import { eventually } from './support/eventually.js';
import { bin } from './support/processes.js';
import { privilegedSkipReason, skipOutsideCi } from './support/privileges.js';

/**
 * Weft driven by a real Kubernetes API server (kube-apiserver 1.20.2 on etcd, scripts/kube/build.sh) and the local
 * cluster (two nodes): `weft kube-controller` watches the API server through a TCP proxy the test can cut; Nodes,
 * Namespaces, Pods (spec.nodeName set to the local cluster's nodes; there is no kubelet, so the test attaches each pod
 * through the real weft-cni as a kubelet's runtime would, with K8S_POD_UID) and NetworkPolicies are created with
 * kubectl. The API server runs with --watch-cache=false so that, once etcd is compacted, a watch resuming from an
 * old resource version is answered 410 Gone, as after a long disconnection.
 */
const run = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
const opts = skipOutsideCi(privilegedSkipReason() ?? kubeApiserverSkipReason());

interface Controller {
  child: ChildProcess;
  healthPort: number;
  output: () => string;
  stop(): Promise<void>;
}

describe('the Kubernetes controller against a real API server and the local cluster', opts, () => {
  let api: KubeApiserver | null = null;
  let cluster: TestCluster | undefined;
  let state: ClusterState;
  let proxy: BlackholeProxy | null = null;
  const controllers: Controller[] = [];
  const listeners: ChildProcess[] = [];
  const pods: Record<string, PodState> = {};
  let ipam: ReturnType<typeof createClient<typeof IpamServiceService>>;
  let routes: ReturnType<typeof createClient<typeof RoutesServiceService>>;
  let policy: ReturnType<typeof createClient<typeof PolicyServiceService>>;
  const kubectl = (...args: string[]) => api!.kubectl(args).then((r) => r.stdout);
  const apply = (obj: object) => api!.kubectl(['apply', '-f', '-'], { input: JSON.stringify(obj) });

  async function startController(identity: string): Promise<Controller> {
    const healthPort = await freePort();
    // The controller's own certificate (weft:controller:default), as `weft ca issue --controller` makes it.
    const tlsDir = path.join(cluster!.stateDir, `controller-${identity}`);
    await issueClusterCredentials(state, tlsDir, { kind: 'controller', name: 'default' });
    const child = spawn(bin.weft, ['kube-controller'], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: {
        ...process.env,
        WEFT_CONTROL_PLANE: controlPlaneTarget(state),
        WEFT_TLS_DIR: tlsDir,
        WEFT_KUBECONFIG: api!.kubeconfig,
        WEFT_K8S_API: `https://127.0.0.1:${proxy!.port}`,
        WEFT_K8S_HEALTH_LISTEN: `127.0.0.1:${healthPort}`,
        WEFT_K8S_LEASE_SECONDS: '4',
        WEFT_K8S_RELEASE_GRACE_SECONDS: '2',
        WEFT_K8S_FULL_SWEEP_SECONDS: '5',
        WEFT_K8S_NODE_STATUS_SECONDS: '1',
        POD_NAME: identity,
      },
    });
    let out = '';
    child.stderr!.on('data', (d) => (out += d));
    const c: Controller = {
      child,
      healthPort,
      output: () => out,
      stop: () =>
        new Promise((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
          child.once('exit', () => {
            clearTimeout(t);
            resolve();
          });
          child.kill('SIGTERM');
        }),
    };
    controllers.push(c);
    return c;
  }

  const leaseHolder = async () =>
    (
      await kubectl(
        'get',
        'lease',
        '-n',
        'weft-system',
        'weft-kube-controller',
        '-o',
        'jsonpath={.spec.holderIdentity}',
      )
    ).trim();
  const allocationsOf = async (node: string) =>
    (await ipam.listAllocations({ node, pageSize: 1000 }, { timeoutMs: 5000 })).allocations;

  /** A namespace and its `default` ServiceAccount (no kube-controller-manager runs here to make it). */
  async function createNamespace(name: string, labels: Record<string, string>): Promise<void> {
    await apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels } });
    await apply({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { namespace: name, name: 'default' } });
  }

  /** Creates the Pod object, then attaches it on its node as the kubelet's runtime would (with the Pod's UID). */
  async function createPod(
    ns: string,
    name: string,
    node: string,
    labels: Record<string, string>,
    ports: { name: string; containerPort: number }[] = [],
  ): Promise<PodState> {
    await apply({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { namespace: ns, name, labels },
      spec: {
        nodeName: node,
        automountServiceAccountToken: false,
        containers: [{ name: 'app', image: 'weft.test/none', ports }],
      },
    });
    const uid = (await kubectl('get', 'pod', '-n', ns, name, '-o', 'jsonpath={.metadata.uid}')).trim();
    const { stdout } = await run(
      bin.weft,
      [
        'cluster',
        'pod',
        'add',
        node,
        name,
        '--namespace',
        ns,
        '--uid',
        uid,
        '--json',
        '--state-dir',
        cluster!.stateDir,
      ],
      { timeout: 60_000 },
    );
    const p = JSON.parse(stdout) as PodState;
    pods[`${ns}/${name}`] = p;
    return p;
  }

  const open = async (from: PodState, to: PodState, port = 80) =>
    (await tcpConnects(from, [`${to.addresses[0]}:${port}`]))[`${to.addresses[0]}:${port}`] === 'open';

  before(async () => {
    api = await startKubeApiserver({ extraArgs: ['--watch-cache=false'] });
    const up = bringUpTestCluster('kube', 2);
    cluster = up.cluster;
    state = await up.up;
    proxy = await startBlackholeProxy('127.0.0.1', Number(new URL(api.server).port));
    ipam = createClient(IpamServiceService, controlPlaneTarget(state), { security: clusterAdminSecurity(state) });
    routes = createClient(RoutesServiceService, controlPlaneTarget(state), { security: clusterAdminSecurity(state) });
    policy = createClient(PolicyServiceService, controlPlaneTarget(state), { security: clusterAdminSecurity(state) });
    await kubectl('create', 'namespace', 'weft-system');
    // The admin policy CRDs as deploy/ ships them.
    await kubectl('apply', '-f', path.resolve(here, '../../deploy/base/admin-network-policy-crds.yaml'));
    for (const n of state.nodes)
      await apply({
        apiVersion: 'v1',
        kind: 'Node',
        metadata: {
          name: n.name,
          labels: { 'kubernetes.io/hostname': n.name, zone: n.name === state.nodes[0]!.name ? 'a' : 'b' },
        },
      });
    await startController('ctl-a');
  });

  after(async () => {
    for (const c of controllers) await c.stop();
    for (const l of listeners) l.kill('SIGKILL');
    ipam?.close();
    routes?.close();
    policy?.close();
    await proxy?.close();
    await takeDownTestCluster(cluster);
    await api?.stop();
  });

  test('one replica leads through the Lease and marks nodes whose agents are registered NetworkUnavailable=False', async () => {
    await eventually('ctl-a holds the Lease', async () => (await leaseHolder()) === 'ctl-a');
    const health = await fetch(`http://127.0.0.1:${controllers[0]!.healthPort}/healthz`);
    assert.equal(health.status, 200);
    await eventually(
      'ctl-a ready',
      async () => (await fetch(`http://127.0.0.1:${controllers[0]!.healthPort}/readyz`)).status === 200,
    );
    for (const n of state.nodes) {
      const cond = await eventually(`${n.name} NetworkUnavailable`, async () => {
        const c = JSON.parse((await kubectl('get', 'node', n.name, '-o', 'jsonpath={.status.conditions}')) || '[]') as {
          type: string;
          status: string;
          reason: string;
        }[];
        return c.find((x) => x.type === 'NetworkUnavailable' && x.status === 'False');
      });
      assert.equal(cond.reason, 'WeftIsUp');
    }
  });

  test('pods and a NetworkPolicy created through the API: the policy is enforced between pods on different nodes', async () => {
    const [n1, n2] = state.nodes.map((n) => n.name) as [string, string];
    await createNamespace('shop', { team: 'shop' });
    await createNamespace('guest', { team: 'guest' });
    const web = await createPod('shop', 'web', n1, { app: 'web' }, [{ name: 'http', containerPort: 80 }]);
    const client = await createPod('shop', 'client', n2, { role: 'client' });
    const intruder = await createPod('guest', 'intruder', n2, { role: 'client' });
    listeners.push(listenTcp(web));
    // The UID the runtime passed is on the allocation, so IPAM's history names the Kubernetes pod exactly.
    const webUid = (await kubectl('get', 'pod', '-n', 'shop', 'web', '-o', 'jsonpath={.metadata.uid}')).trim();
    const held = (await allocationsOf(n1)).find((a) => a.podNamespace === 'shop' && a.podName === 'web');
    assert.equal(held?.podUid, webUid);
    await eventually(
      'web open to everyone before any policy',
      async () => (await open(client, web)) && (await open(intruder, web)),
    );

    await apply({
      apiVersion: 'networking.k8s.io/v1',
      kind: 'NetworkPolicy',
      metadata: { namespace: 'shop', name: 'web-from-shop-clients' },
      spec: {
        podSelector: { matchLabels: { app: 'web' } },
        policyTypes: ['Ingress'],
        ingress: [
          {
            from: [
              {
                namespaceSelector: { matchLabels: { team: 'shop' } },
                podSelector: { matchLabels: { role: 'client' } },
              },
            ],
            ports: [{ port: 'http' }],
          },
        ],
      },
    });
    await eventually(
      'only shop clients reach web',
      async () => (await open(client, web)) && !(await open(intruder, web)),
    );
    const explained = await policy.explain({ from: 'guest/intruder', to: 'shop/web', port: 80 }, { timeoutMs: 5000 });
    assert.equal(explained.allowed, false);
    assert.equal(explained.ingress?.policy, 'NetworkPolicy/shop/web-from-shop-clients');
  });

  test('a label change through the API changes what is allowed, both ways', async () => {
    const web = pods['shop/web']!;
    const client = pods['shop/client']!;
    const intruder = pods['guest/intruder']!;
    await kubectl('label', 'pod', '-n', 'shop', 'client', 'role=other', '--overwrite');
    await eventually('relabelled client denied', async () => !(await open(client, web)));
    await kubectl('label', 'namespace', 'guest', 'team=shop', '--overwrite');
    await eventually('guest namespace relabelled: intruder allowed', async () => await open(intruder, web));
    await kubectl('label', 'namespace', 'guest', 'team=guest', '--overwrite');
    await kubectl('label', 'pod', '-n', 'shop', 'client', 'role=client', '--overwrite');
    await eventually('back as before', async () => (await open(client, web)) && !(await open(intruder, web)));
  });

  test("an AdminNetworkPolicy created through the API overrides the namespace's NetworkPolicy, and goes with its object", async () => {
    const web = pods['shop/web']!;
    const intruder = pods['guest/intruder']!;
    await apply({
      apiVersion: 'policy.networking.k8s.io/v1alpha1',
      kind: 'AdminNetworkPolicy',
      metadata: { name: 'guests-may-shop' },
      spec: {
        priority: 10,
        subject: { namespaces: { matchLabels: { team: 'shop' } } },
        ingress: [{ name: 'from-guests', action: 'Allow', from: [{ namespaces: { matchLabels: { team: 'guest' } } }] }],
      },
    });
    await eventually(
      'the admin tier lets the guest in despite the NetworkPolicy',
      async () => await open(intruder, web),
    );
    const explained = await policy.explain({ from: 'guest/intruder', to: 'shop/web', port: 80 }, { timeoutMs: 5000 });
    assert.deepEqual(
      [explained.ingress?.tier, explained.ingress?.policy],
      ['admin', 'AdminNetworkPolicy/guests-may-shop'],
    );
    await kubectl('delete', 'adminnetworkpolicy', 'guests-may-shop');
    await eventually('denied again once the object is gone', async () => !(await open(intruder, web)));
  });

  test('deleting a Pod object whose runtime never runs DEL releases its address after the grace', async () => {
    const n2 = state.nodes[1]!.name;
    const gone = await createPod('guest', 'forgotten', n2, { app: 'batch' });
    assert.ok((await allocationsOf(n2)).some((a) => a.podName === 'forgotten'));
    const t0 = Date.now();
    // No kubelet confirms a graceful deletion here: force it, as for a pod on a node that is gone.
    await kubectl('delete', 'pod', '-n', 'guest', 'forgotten', '--grace-period=0', '--force');
    await eventually(
      "the forgotten pod's address released",
      async () => !(await allocationsOf(n2)).some((a) => a.podName === 'forgotten'),
    );
    console.log(
      `# kube-controller: a deleted Pod's address released ${Date.now() - t0} ms after the delete (grace 2 s)`,
    );
    const history = await ipam.listAllocationHistory(
      { podNamespace: 'guest', podName: 'forgotten' },
      { timeoutMs: 5000 },
    );
    assert.ok(
      history.entries.some((e) => e.allocation?.address === gone.addresses[0] && e.releaseTime),
      'IPAM history shows the release',
    );
    // The live pods on that node keep theirs.
    assert.ok((await allocationsOf(n2)).some((a) => a.podName === 'client'));
  });

  test('a watch that expires while the controller is cut off, and an API server restart: nothing is missed', async () => {
    const web = pods['shop/web']!;
    const client = pods['shop/client']!;
    const n2 = state.nodes[1]!.name;
    const extra = await createPod('guest', 'extra', n2, { app: 'batch' });
    const ctl = controllers[0]!;
    const relists = () => (ctl.output().match(/"msg":"listing","[^\n]*the resource version expired/g) ?? []).length;
    const before = relists();

    // Cut every connection of the controller to the API server and hold new ones: it sees nothing from here on.
    proxy!.cut();
    proxy!.blackhole();
    await kubectl('label', 'pod', '-n', 'shop', 'client', 'role=other', '--overwrite');
    await kubectl('delete', 'pod', '-n', 'guest', 'extra', '--grace-period=0', '--force');
    await kubectl('delete', 'networkpolicy', '-n', 'shop', 'web-from-shop-clients');
    await apply({
      apiVersion: 'networking.k8s.io/v1',
      kind: 'NetworkPolicy',
      metadata: { namespace: 'shop', name: 'web-deny-all' },
      spec: { podSelector: { matchLabels: { app: 'web' } }, policyTypes: ['Ingress'] },
    });
    // History up to now is gone from etcd: resuming from the version the controller holds is answered 410 Gone.
    await api!.compactEtcd();
    proxy!.restore();

    await eventually('web-deny-all applied and the old policy deleted', async () => {
      const names = (await policy.listPolicies({ namespace: 'shop' }, { timeoutMs: 5000 })).policies.map(
        (p) => p.ref?.name,
      );
      return names.length === 1 && names[0] === 'web-deny-all';
    });
    await eventually('client denied', async () => !(await open(client, web)));
    await eventually(
      "the extra pod's address released",
      async () => !(await allocationsOf(n2)).some((a) => a.podName === 'extra'),
    );
    assert.ok(
      relists() > before,
      `the controller listed again after 410 Gone:\n${ctl
        .output()
        .split('\n')
        .filter((l) => l.includes('listing'))
        .join('\n')}`,
    );
    const explained = await policy.explain({ from: 'shop/client', to: 'shop/web', port: 80 }, { timeoutMs: 5000 });
    assert.equal(explained.ingress?.policy, 'NetworkPolicy/shop/web-deny-all');
    assert.ok(extra.addresses.length > 0);

    // The API server restarts; the controller reconnects by itself and follows changes made after.
    await api!.restartApiserver();
    await kubectl('delete', 'networkpolicy', '-n', 'shop', 'web-deny-all');
    await eventually(
      'after the restart: the deny-all is gone and client reaches web again',
      async () => await open(client, web),
    );
  });

  test('a second replica takes over when the leader stops, and carries on', async () => {
    const web = pods['shop/web']!;
    const client = pods['shop/client']!;
    const b = await startController('ctl-b');
    await eventually(
      'ctl-b ready (caches synced) while standing by',
      async () => (await fetch(`http://127.0.0.1:${b.healthPort}/readyz`)).status === 200,
    );
    await new Promise((r) => setTimeout(r, 2000));
    assert.equal(await leaseHolder(), 'ctl-a', 'the standby does not take a held Lease');
    const t0 = Date.now();
    await controllers[0]!.stop();
    await eventually('ctl-b leads', async () => (await leaseHolder()) === 'ctl-b').catch((err: Error) => {
      throw new Error(
        `${err.message}\n--- ctl-a ---\n${controllers[0]!.output().slice(-3000)}\n--- ctl-b ---\n${b.output().slice(-3000)}`,
      );
    });
    console.log(
      `# kube-controller: standby leads ${Date.now() - t0} ms after the leader stopped (it gave the Lease up)`,
    );
    assert.match(
      b.output(),
      /"msg":"took the Lease over"[^\n]*"from":"\(released\)"/,
      'the stopping leader gave the Lease up (no wait for it to expire)',
    );
    await apply({
      apiVersion: 'networking.k8s.io/v1',
      kind: 'NetworkPolicy',
      metadata: { namespace: 'shop', name: 'web-deny-all' },
      spec: { podSelector: { matchLabels: { app: 'web' } }, policyTypes: ['Ingress'] },
    });
    await eventually('the new leader applies a new policy', async () => !(await open(client, web)));
    assert.ok(b.output().includes('"msg":"leading"'));
  });

  test('deleting a Node object withdraws its routes and frees its addresses and blocks at once', async () => {
    const n2 = state.nodes[1]!.name;
    // The machine is gone: its agent no longer runs (else it would register again).
    await run(bin.weft, ['cluster', 'agent', 'stop', n2, '--state-dir', cluster!.stateDir], { timeout: 60_000 });
    assert.ok((await allocationsOf(n2)).length > 0);
    const t0 = Date.now();
    await kubectl('delete', 'node', n2);
    const ctl = controllers.at(-1)!;
    await eventually(
      `${n2} gone from the routes`,
      async () => !(await routes.listNodes({}, { timeoutMs: 5000 })).nodes.some((n) => n.name === n2),
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n--- controller ---\n${ctl.output().slice(-3000)}`);
    });
    await eventually(`${n2}'s addresses released`, async () => (await allocationsOf(n2)).length === 0);
    // The blocks go back in GarbageCollect's second step, just after the addresses' transaction commits.
    const blocksNow = async () =>
      (await ipam.getUtilization({ includeBlocks: true }, { timeoutMs: 5000 })).pools.flatMap((p) => p.blocks);
    await eventually(
      `no block stays affine to ${n2}`,
      async () => !(await blocksNow()).some((b) => b.node === n2),
    ).catch(async (err: Error) => {
      throw new Error(`${err.message}: ${JSON.stringify(await blocksNow())}`);
    });
    assert.ok((await blocksNow()).length > 0, 'the other nodes keep their blocks');
    console.log(
      `# kube-controller: a deleted Node's routes and addresses gone ${Date.now() - t0} ms after the delete (lease-based sweep would take the grace)`,
    );
  });
});
