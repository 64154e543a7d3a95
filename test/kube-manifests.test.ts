import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments, stringify } from 'yaml';
import { kubeApiserverSkipReason, startKubeApiserver, type KubeApiserver } from './support/kube-apiserver.js';
import { skipOutsideCi } from './support/privileges.js';

/**
 * deploy/ against a real Kubernetes API server (kube-apiserver 1.20.2 from scripts/kube/build.sh, on 127.0.0.1):
 * the manifests are accepted by a server-side dry run, a broken one is refused (so the check is live), and each
 * ServiceAccount can do what it needs and nothing else. Touches no kernel: no lock needed.
 */

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const NS = 'weft-system';
type Obj = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string }; [k: string]: unknown };

/**
 * What 1.20 does not serve, mapped for the test only (the manifests keep targeting current Kubernetes):
 * PodDisruptionBudget is policy/v1beta1 there (policy/v1 came in 1.21; the fields deploy/ uses, maxUnavailable and
 * selector, are the same in both). 1.20 also lacks server-side refusal of unknown fields: kubectl checks them
 * client-side against the server's schema, which this test leaves on for the accepted run.
 */
function mapTo120(o: Obj): Obj {
  if (o.kind === 'PodDisruptionBudget' && o.apiVersion === 'policy/v1') return { ...o, apiVersion: 'policy/v1beta1' };
  return o;
}

const RBAC_KINDS = new Set(['Namespace', 'ServiceAccount', 'ClusterRole', 'ClusterRoleBinding', 'Role', 'RoleBinding']);
const toYaml = (objs: Obj[]) => objs.map((o) => stringify(o)).join('---\n');

describe('deploy/ on a real Kubernetes API server', skipOutsideCi(kubeApiserverSkipReason()), () => {
  let kube: KubeApiserver;
  let rendered: Obj[];

  before(async () => {
    kube = await startKubeApiserver();
    console.log(`kube-apiserver ready ${kube.readyMs} ms after launch`);
    // kustomize as `kubectl apply -k` runs it (the one embedded in kubectl 1.20.2).
    const { stdout } = await kube.kubectl(['kustomize', path.join(root, 'deploy')]);
    rendered = parseAllDocuments(stdout).map((d) => d.toJS() as Obj).filter(Boolean);
    // The ServiceAccounts and their RBAC are applied for real: `auth can-i` needs them, and the namespaced objects'
    // dry run needs the namespace to exist (a dry-run namespace is not created).
    await kube.kubectl(['apply', '-f', '-'], { input: toYaml(rendered.filter((o) => RBAC_KINDS.has(o.kind))) });
  });
  after(async () => {
    await kube?.stop();
  });

  test('kubectl apply --dry-run=server accepts every object of deploy/, and creates none', async () => {
    const { stdout } = await kube.kubectl(['apply', '--dry-run=server', '-f', '-'], { input: toYaml(rendered.map(mapTo120)) });
    for (const o of rendered) {
      const kind = o.kind.toLowerCase();
      assert.match(stdout, new RegExp(`^${kind}[^ ]*/${o.metadata.name} .*\\(server dry run\\)$`, 'm'), `${o.kind} ${o.metadata.name} in:\n${stdout}`);
    }
    for (const kind of ['Namespace', 'Deployment', 'DaemonSet', 'Service', 'PodDisruptionBudget', 'ServiceAccount', 'ClusterRole', 'Role']) {
      assert.ok(rendered.some((o) => o.kind === kind), `deploy/ has a ${kind}`);
    }
    const { stdout: left } = await kube.kubectl(['get', 'deployments,daemonsets,services,configmaps', '-n', NS, '-o', 'name']);
    assert.doesNotMatch(left, /weft/, 'a dry run created objects');
    // The image is the kustomize placeholder, set in one place.
    const images = JSON.stringify(rendered).match(/"image":"[^"]*"/g) ?? [];
    assert.deepEqual([...new Set(images)], ['"image":"weft:dev"']);
  });

  test('a broken manifest is refused by the server (the dry run is live)', async () => {
    const deployment = rendered.find((o) => o.kind === 'Deployment')!;
    const spec = deployment.spec as { replicas: number; template: { spec: { containers: { image?: string }[] } } };
    const negative = { ...deployment, spec: { ...spec, replicas: -1 } };
    const noImage = structuredClone(deployment);
    delete (noImage.spec as typeof spec).template.spec.containers[0]!.image;
    // --validate=false: only the server judges.
    for (const [broken, why] of [[negative, /spec\.replicas: Invalid value: -1/], [noImage, /containers\[0\]\.image: Required value/]] as const) {
      await assert.rejects(kube.kubectl(['apply', '--dry-run=server', '--validate=false', '-f', '-'], { input: toYaml([broken]) }), (err: Error) => {
        assert.match(err.message, why);
        return true;
      });
    }
  });

  test('each ServiceAccount can do what it needs and nothing else', async () => {
    // [verb, resource, namespace ('' = all namespaces / cluster scope), allowed]
    type Check = [string, string, string, boolean];
    const never: Check[] = [
      ['get', 'secrets', NS, false], ['list', 'secrets', '', false], ['watch', 'secrets', NS, false],
      ['create', 'pods', NS, false], ['delete', 'pods', NS, false], ['update', 'nodes', '', false],
      ['delete', 'nodes', '', false], ['create', 'namespaces', '', false], ['get', 'configmaps', NS, false],
      ['create', 'serviceaccounts/token', NS, false], ['patch', 'daemonsets.apps', NS, false], ['escalate', 'clusterroles', '', false],
    ];
    const matrix: Record<string, Check[]> = {
      'weft-agent': [
        ['get', 'nodes', '', true], ['get', 'nodes/status', '', true],
        ['list', 'nodes', '', false], ['watch', 'nodes', '', false], ['patch', 'nodes', '', false], ['patch', 'nodes/status', '', false],
        ['get', 'pods', NS, false], ['create', 'leases.coordination.k8s.io', NS, false],
        ...never,
      ],
      'weft-controller': [
        ...['nodes', 'namespaces', 'pods', 'networkpolicies.networking.k8s.io', 'adminnetworkpolicies.policy.networking.k8s.io',
          'baselineadminnetworkpolicies.policy.networking.k8s.io'].flatMap((r): Check[] => [['list', r, '', true], ['watch', r, '', true], ['get', r, '', true]]),
        ['patch', 'nodes/status', '', true],
        ['create', 'leases.coordination.k8s.io', NS, true], ['update', 'leases.coordination.k8s.io/weft-controller', NS, true],
        ['update', 'leases.coordination.k8s.io/someone-else', NS, false], ['delete', 'leases.coordination.k8s.io/weft-controller', NS, false],
        ['create', 'leases.coordination.k8s.io', 'default', false],
        ['patch', 'nodes', '', false], ['patch', 'pods', NS, false], ['update', 'networkpolicies.networking.k8s.io', NS, false],
        ['create', 'adminnetworkpolicies.policy.networking.k8s.io', '', false],
        ...never,
      ],
      'weft-control-plane': [
        ['get', 'nodes', '', false], ['list', 'pods', '', false], ['get', 'nodes/status', '', false],
        ['create', 'leases.coordination.k8s.io', NS, false],
        ...never,
      ],
    };
    // The AdminNetworkPolicy CRDs are not installed on this server, and kubectl 1.20's `auth can-i` sends a resource
    // it cannot find in discovery without its API group; for those it asks the same question with a
    // SubjectAccessReview (what `can-i --as` sends, with the group explicit).
    const UNSERVED_GROUPS = ['policy.networking.k8s.io'];
    const reviewAccess = async (sa: string, verb: string, resource: string, ns: string): Promise<boolean> => {
      const dot = resource.indexOf('.');
      const review = {
        apiVersion: 'authorization.k8s.io/v1', kind: 'SubjectAccessReview',
        spec: {
          user: `system:serviceaccount:${NS}:${sa}`, groups: ['system:serviceaccounts', `system:serviceaccounts:${NS}`, 'system:authenticated'],
          resourceAttributes: { verb, resource: resource.slice(0, dot), group: resource.slice(dot + 1), ...(ns ? { namespace: ns } : {}) },
        },
      };
      const { stdout } = await kube.kubectl(['create', '-f', '-', '-o', 'json'], { input: JSON.stringify(review) });
      return (JSON.parse(stdout) as { status: { allowed: boolean } }).status.allowed;
    };
    const wrong: string[] = [];
    for (const [sa, checks] of Object.entries(matrix)) {
      for (const [verb, resource, ns, allowed] of checks) {
        const [res, sub] = resource.split('/') as [string, string | undefined];
        const subIsStatus = sub === 'status' || sub === 'token';
        const args = ['auth', 'can-i', verb, subIsStatus ? res : resource, `--as=system:serviceaccount:${NS}:${sa}`,
          ...(subIsStatus ? [`--subresource=${sub}`] : []), ...(ns ? ['-n', ns] : ['--all-namespaces'])];
        const answer = UNSERVED_GROUPS.some((g) => resource.endsWith(`.${g}`))
          ? await reviewAccess(sa, verb, resource, ns)
          : await kube.kubectl(args).then(() => true, (err: Error & { stdout?: string }) => {
              if (!/^no\b/m.test(err.stdout ?? '')) throw err;
              return false;
            });
        if (answer !== allowed) wrong.push(`${sa} ${verb} ${resource}${ns ? ` -n ${ns}` : ''}: ${answer ? 'yes' : 'no'}, want ${allowed ? 'yes' : 'no'}`);
      }
    }
    assert.deepEqual(wrong, []);
    // The check answers yes at all: the admin may read secrets.
    await kube.kubectl(['auth', 'can-i', 'get', 'secrets', '-n', NS]);
  });

  test('the DaemonSet installs the self-contained plugin with `weft cni install` and leaves the conflist to the ready agent', () => {
    type Container = { name: string; command?: string[]; env?: { name: string; value?: string }[]; volumeMounts?: { mountPath: string }[] };
    const ds = rendered.find((o) => o.kind === 'DaemonSet' && o.metadata.name === 'weft-agent') as Obj & { spec: { template: { spec: { initContainers: Container[]; containers: Container[] } } } };
    const [init] = ds.spec.template.spec.initContainers;
    assert.deepEqual(init!.command?.slice(1), ['/opt/weft/dist/bin/weft', 'cni', 'install', '--bin-dir', '/host/opt/cni/bin', '--plugin', '/opt/weft/dist/bin/weft-cni-static']);
    assert.deepEqual(init!.volumeMounts?.map((m) => m.mountPath), ['/host/opt/cni/bin'], 'the init step cannot write the conflist');
    const agent = ds.spec.template.spec.containers.find((c) => c.name === 'agent')!;
    const env = new Map((agent.env ?? []).map((e) => [e.name, e.value]));
    assert.equal(env.get('WEFT_CNI_CONF_DIR'), '/host/etc/cni/net.d', 'the agent writes the conflist once its socket answers');
    assert.equal(env.has('WEFT_CNI_BIN_DIR'), false, 'the agent does not overwrite the self-contained plugin with the Node script');
    assert.ok(agent.volumeMounts?.some((m) => m.mountPath === '/host/etc/cni/net.d'));
  });
});
