import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments, stringify } from 'yaml';
import { parsePolicyObject } from '../services/policy/domain/model.js';
import { kubeApiserverSkipReason, startKubeApiserver, type KubeApiserver } from './support/kube-apiserver.js';
import { skipOutsideCi } from './support/privileges.js';

/**
 * deploy/ against a real Kubernetes API server (kube-apiserver 1.20.2 from scripts/kube/build.sh, on 127.0.0.1):
 * the manifests are accepted by a server-side dry run, a broken one is refused (so the check is live), and each
 * ServiceAccount can do what it needs and nothing else; the AdminNetworkPolicy CRDs install and the server holds
 * policies to their schemas. Touches no kernel: no lock needed.
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

const APPLIED_KINDS = new Set([
  'Namespace',
  'ServiceAccount',
  'ClusterRole',
  'ClusterRoleBinding',
  'Role',
  'RoleBinding',
  'CustomResourceDefinition',
]);
const toYaml = (objs: Obj[]) => objs.map((o) => stringify(o)).join('---\n');

const OVERLAY = 'deploy/overlays/in-cluster-postgres';
const parseRendered = (stdout: string) =>
  parseAllDocuments(stdout)
    .map((d) => d.toJS() as Obj)
    .filter(Boolean);

describe('deploy/ on a real Kubernetes API server', skipOutsideCi(kubeApiserverSkipReason()), () => {
  let kube: KubeApiserver;
  let rendered: Obj[];
  let overlay: Obj[];

  before(async () => {
    kube = await startKubeApiserver();
    console.log(`kube-apiserver ready ${kube.readyMs} ms after launch`);
    // kustomize as `kubectl apply -k` runs it (the one embedded in kubectl 1.20.2).
    rendered = parseRendered((await kube.kubectl(['kustomize', path.join(root, 'deploy')])).stdout);
    overlay = parseRendered((await kube.kubectl(['kustomize', path.join(root, OVERLAY)])).stdout);
    // The ServiceAccounts and their RBAC are applied for real: `auth can-i` needs them, and the namespaced objects'
    // dry run needs the namespace to exist (a dry-run namespace is not created). So are the CRDs: policies are
    // created against them below.
    await kube.kubectl(['apply', '-f', '-'], { input: toYaml(rendered.filter((o) => APPLIED_KINDS.has(o.kind))) });
    await kube.kubectl([
      'wait',
      '--for=condition=established',
      '--timeout=30s',
      ...rendered
        .filter((o) => o.kind === 'CustomResourceDefinition')
        .map((o) => `customresourcedefinition/${o.metadata.name}`),
    ]);
  });
  after(async () => {
    await kube?.stop();
  });

  test('kubectl apply --dry-run=server accepts every object of deploy/, and creates none', async () => {
    const { stdout } = await kube.kubectl(['apply', '--dry-run=server', '-f', '-'], {
      input: toYaml(rendered.map(mapTo120)),
    });
    for (const o of rendered) {
      const kind = o.kind.toLowerCase();
      assert.match(
        stdout,
        new RegExp(`^${kind}[^ ]*/${o.metadata.name} .*\\(server dry run\\)$`, 'm'),
        `${o.kind} ${o.metadata.name} in:\n${stdout}`,
      );
    }
    for (const kind of [
      'Namespace',
      'Deployment',
      'DaemonSet',
      'Service',
      'PodDisruptionBudget',
      'ServiceAccount',
      'ClusterRole',
      'Role',
      'CustomResourceDefinition',
    ]) {
      assert.ok(
        rendered.some((o) => o.kind === kind),
        `deploy/ has a ${kind}`,
      );
    }
    const { stdout: left } = await kube.kubectl([
      'get',
      'deployments,daemonsets,services,configmaps',
      '-n',
      NS,
      '-o',
      'name',
    ]);
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
    for (const [broken, why] of [
      [negative, /spec\.replicas: Invalid value: -1/],
      [noImage, /containers\[0\]\.image: Required value/],
    ] as const) {
      await assert.rejects(
        kube.kubectl(['apply', '--dry-run=server', '--validate=false', '-f', '-'], { input: toYaml([broken]) }),
        (err: Error) => {
          assert.match(err.message, why);
          return true;
        },
      );
    }
  });

  test('each ServiceAccount can do what it needs and nothing else', async () => {
    // [verb, resource, namespace ('' = all namespaces / cluster scope), allowed]
    type Check = [string, string, string, boolean];
    const never: Check[] = [
      ['get', 'secrets', NS, false],
      ['list', 'secrets', '', false],
      ['watch', 'secrets', NS, false],
      ['create', 'pods', NS, false],
      ['delete', 'pods', NS, false],
      ['update', 'nodes', '', false],
      ['delete', 'nodes', '', false],
      ['create', 'namespaces', '', false],
      ['get', 'configmaps', NS, false],
      ['create', 'serviceaccounts/token', NS, false],
      ['patch', 'daemonsets.apps', NS, false],
      ['escalate', 'clusterroles', '', false],
    ];
    const matrix: Record<string, Check[]> = {
      'weft-agent': [
        ['get', 'nodes', '', true],
        ['get', 'nodes/status', '', true],
        ['list', 'nodes', '', false],
        ['watch', 'nodes', '', false],
        ['patch', 'nodes', '', false],
        ['patch', 'nodes/status', '', false],
        ['get', 'pods', NS, false],
        ['create', 'leases.coordination.k8s.io', NS, false],
        ...never,
      ],
      'weft-kube-controller': [
        ...[
          'nodes',
          'namespaces',
          'pods',
          'networkpolicies.networking.k8s.io',
          'adminnetworkpolicies.policy.networking.k8s.io',
          'baselineadminnetworkpolicies.policy.networking.k8s.io',
        ].flatMap((r): Check[] => [
          ['list', r, '', true],
          ['watch', r, '', true],
          ['get', r, '', true],
        ]),
        ['patch', 'nodes/status', '', true],
        ['update', 'nodes/status', '', true],
        ['create', 'leases.coordination.k8s.io', NS, true],
        ['get', 'leases.coordination.k8s.io/weft-kube-controller', NS, true],
        ['update', 'leases.coordination.k8s.io/weft-kube-controller', NS, true],
        ['get', 'leases.coordination.k8s.io/someone-else', NS, false],
        ['update', 'leases.coordination.k8s.io/someone-else', NS, false],
        ['delete', 'leases.coordination.k8s.io/weft-kube-controller', NS, false],
        ['list', 'leases.coordination.k8s.io', NS, false],
        ['create', 'leases.coordination.k8s.io', 'default', false],
        ['create', 'events', NS, true],
        ['patch', 'events', NS, true],
        ['create', 'events.events.k8s.io', NS, true],
        ['delete', 'events', NS, false],
        ['create', 'events', 'default', false],
        ['patch', 'nodes', '', false],
        ['patch', 'pods', NS, false],
        ['update', 'pods/status', NS, false],
        ['update', 'networkpolicies.networking.k8s.io', NS, false],
        ['create', 'adminnetworkpolicies.policy.networking.k8s.io', '', false],
        ['update', 'adminnetworkpolicies.policy.networking.k8s.io/status', '', false],
        ...never,
      ],
      // The bootstrap: review tokens, read the pod a token is bound to (in weft-system only), nothing more.
      'weft-control-plane': [
        ['create', 'tokenreviews.authentication.k8s.io', '', true],
        ['get', 'pods', NS, true],
        ['get', 'pods', 'default', false],
        ['list', 'pods', NS, false],
        ['watch', 'pods', NS, false],
        ['create', 'subjectaccessreviews.authorization.k8s.io', '', false],
        ['create', 'certificatesigningrequests.certificates.k8s.io', '', false],
        ['get', 'nodes', '', false],
        ['list', 'pods', '', false],
        ['get', 'nodes/status', '', false],
        ['create', 'leases.coordination.k8s.io', NS, false],
        ...never,
      ],
    };
    const wrong: string[] = [];
    for (const [sa, checks] of Object.entries(matrix)) {
      for (const [verb, resource, ns, allowed] of checks) {
        const [res, sub] = resource.split('/') as [string, string | undefined];
        const subIsStatus = sub === 'status' || sub === 'token';
        const args = [
          'auth',
          'can-i',
          verb,
          subIsStatus ? res : resource,
          `--as=system:serviceaccount:${NS}:${sa}`,
          ...(subIsStatus ? [`--subresource=${sub}`] : []),
          ...(ns ? ['-n', ns] : ['--all-namespaces']),
        ];
        const { answer, stderr } = await kube.kubectl(args).then(
          ({ stderr }) => ({ answer: true, stderr }),
          (err: Error & { stdout?: string; stderr?: string }) => {
            if (!/^no\b/m.test(err.stdout ?? '')) throw err;
            return { answer: false, stderr: err.stderr ?? '' };
          },
        );
        // kubectl sends a resource it cannot find in discovery without its group, which asks another question.
        assert.doesNotMatch(stderr, /doesn't have a resource type/, `${resource}: ${stderr}`);
        if (answer !== allowed)
          wrong.push(
            `${sa} ${verb} ${resource}${ns ? ` -n ${ns}` : ''}: ${answer ? 'yes' : 'no'}, want ${allowed ? 'yes' : 'no'}`,
          );
      }
    }
    assert.deepEqual(wrong, []);
    // The check answers yes at all: the admin may read secrets.
    await kube.kubectl(['auth', 'can-i', 'get', 'secrets', '-n', NS]);
  });

  // deploy/overlays/in-cluster-postgres: the base plus PostgreSQL in the cluster, its password in a Secret only.
  type EnvVar = { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } };
  type Mount = { name: string; mountPath: string; readOnly?: boolean };
  type Container = {
    name: string;
    image: string;
    env?: EnvVar[];
    volumeMounts?: Mount[];
    ports?: { name: string; containerPort: number }[];
    startupProbe?: { exec?: { command: string[] } };
    readinessProbe?: { exec?: { command: string[] } };
    livenessProbe?: { exec?: { command: string[] } };
    resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  };
  type Volume = {
    name: string;
    secret?: { secretName: string; defaultMode?: number; items?: { key: string; path: string }[] };
  };
  type PodSpec = {
    hostNetwork?: boolean;
    containers: Container[];
    volumes?: Volume[];
    tolerations?: { key: string }[];
    securityContext?: { runAsNonRoot?: boolean; runAsUser?: number; runAsGroup?: number; fsGroup?: number };
  };
  type Workload = Obj & {
    spec: {
      replicas?: number;
      serviceName?: string;
      template: { metadata: { labels: Record<string, string> }; spec: PodSpec };
      volumeClaimTemplates?: {
        metadata: { name: string };
        spec: { accessModes: string[]; resources: { requests: { storage: string } } };
      }[];
    };
  };
  const find = (objs: Obj[], kind: string, name: string) =>
    objs.find((o) => o.kind === kind && o.metadata.name === name) as Workload | undefined;
  const envOf = (c: Container) => new Map((c.env ?? []).map((e) => [e.name, e]));
  /** The Secret and key whose file a container reads at `file` (a mounted Secret volume's item), or null. */
  const secretFileAt = (pod: PodSpec, c: Container, file: string) => {
    for (const m of c.volumeMounts ?? []) {
      const v = pod.volumes?.find((x) => x.name === m.name);
      const item = v?.secret?.items?.find((i) => `${m.mountPath}/${i.path}` === file);
      if (item)
        return {
          secret: v!.secret!.secretName,
          key: item.key,
          mode: v!.secret!.defaultMode ?? 0o644,
          fsGroup: pod.securityContext?.fsGroup,
        };
    }
    return null;
  };

  test('in-cluster-postgres: kubectl apply --dry-run=server accepts every object of the overlay, and creates none', async () => {
    // What `kubectl apply -k` would send (the same embedded kustomize), mapped to 1.20's PodDisruptionBudget version.
    const { stdout } = await kube.kubectl(['apply', '--dry-run=server', '-f', '-'], {
      input: toYaml(overlay.map(mapTo120)),
    });
    for (const o of overlay) {
      assert.match(
        stdout,
        new RegExp(`^${o.kind.toLowerCase()}[^ ]*/${o.metadata.name} .*\\(server dry run\\)$`, 'm'),
        `${o.kind} ${o.metadata.name} in:\n${stdout}`,
      );
    }
    assert.match(stdout, /^statefulset\.apps\/weft-postgres .*\(server dry run\)$/m);
    assert.match(stdout, /^service\/weft-postgres .*\(server dry run\)$/m);
    const { stdout: left } = await kube.kubectl([
      'get',
      'deployments,statefulsets,services,persistentvolumeclaims,secrets',
      '-n',
      NS,
      '-o',
      'name',
    ]);
    assert.doesNotMatch(left, /weft/, 'a dry run created objects');
    // Everything else is the base's, unchanged.
    const changed = new Set(['StatefulSet/weft-postgres', 'Service/weft-postgres', 'Deployment/weft-control-plane']);
    const key = (o: Obj) => `${o.kind}/${o.metadata.name}`;
    assert.deepEqual(
      overlay.filter((o) => !changed.has(key(o))),
      rendered.filter((o) => !changed.has(key(o))),
    );
    assert.deepEqual(
      overlay
        .filter((o) => changed.has(key(o)))
        .map(key)
        .sort(),
      [...changed].sort(),
    );
    const images = JSON.stringify(overlay).match(/"image":"[^"]*"/g) ?? [];
    assert.deepEqual([...new Set(images)].sort(), ['"image":"postgres:16"', '"image":"weft:dev"']);
  });

  test('in-cluster-postgres: the control plane connects to the in-cluster Service, both read the password from the one Secret, and no password is in the manifests', () => {
    const service = find(overlay, 'Service', 'weft-postgres') as unknown as Obj & {
      spec: {
        clusterIP?: string;
        selector: Record<string, string>;
        ports: { name: string; port: number; targetPort: string }[];
      };
    };
    const sts = find(overlay, 'StatefulSet', 'weft-postgres')!;
    const postgres = sts.spec.template.spec.containers.find((c) => c.name === 'postgres')!;
    // The Service selects the PostgreSQL pod and its port; a cluster IP (a headless Service gets no environment variables).
    assert.notEqual(service.spec.clusterIP, 'None');
    for (const [k, v] of Object.entries(service.spec.selector)) assert.equal(sts.spec.template.metadata.labels[k], v);
    const [port] = service.spec.ports;
    assert.ok(postgres.ports?.some((p) => p.name === port!.targetPort && p.containerPort === 5432));

    const cpDeployment = find(overlay, 'Deployment', 'weft-control-plane')!;
    const cpPod = cpDeployment.spec.template.spec;
    const cp = cpPod.containers.find((c) => c.name === 'control-plane')!;
    const env = envOf(cp);
    // DATABASE_URL as the kubelet expands it: the Service's environment variables (name WEFT_POSTGRES, port named postgres).
    const serviceEnv: Record<string, string> = {
      WEFT_POSTGRES_SERVICE_HOST: '10.96.0.54',
      WEFT_POSTGRES_SERVICE_PORT: String(port!.port),
      [`WEFT_POSTGRES_SERVICE_PORT_${port!.name.toUpperCase()}`]: String(port!.port),
    };
    const raw = env.get('DATABASE_URL')?.value ?? '';
    assert.equal(env.get('DATABASE_URL')?.valueFrom, undefined, "not the base's external DSN");
    const expanded = raw.replace(/\$\(([A-Z0-9_]+)\)/g, (_, name: string) => serviceEnv[name] ?? `<unset ${name}>`);
    assert.doesNotMatch(expanded, /unset/, `${raw} names only the weft-postgres Service's variables`);
    const url = new URL(expanded);
    const pgEnv = envOf(postgres);
    assert.deepEqual(
      {
        host: url.hostname,
        port: url.port,
        user: url.username,
        password: url.password,
        database: url.pathname.slice(1),
      },
      {
        host: '10.96.0.54',
        port: '5432',
        user: pgEnv.get('POSTGRES_USER')?.value,
        password: '',
        database: pgEnv.get('POSTGRES_DB')?.value,
      },
    );

    // One Secret, weft-postgres-auth, key password: PostgreSQL's initial password and the control plane's, each a
    // file readable by the container's user (the Secret's mode for the pod's fsGroup).
    const cpFile = env.get('WEFT_DATABASE_PASSWORD_FILE')?.value ?? '';
    const pgFile = pgEnv.get('POSTGRES_PASSWORD_FILE')?.value ?? '';
    const bySecret = [secretFileAt(cpPod, cp, cpFile), secretFileAt(sts.spec.template.spec, postgres, pgFile)];
    for (const [who, at] of [
      ['control plane', bySecret[0]],
      ['PostgreSQL', bySecret[1]],
    ] as const) {
      assert.deepEqual(
        at && { secret: at.secret, key: at.key },
        { secret: 'weft-postgres-auth', key: 'password' },
        `${who} reads the password from the Secret`,
      );
      assert.ok(at!.mode & 0o040 && at!.fsGroup !== undefined, `${who}: the file is its group's to read`);
    }
    assert.equal(cpPod.securityContext?.fsGroup, (cpPod.securityContext as { runAsGroup?: number }).runAsGroup);

    // No password in the rendered output: no Secret shipped, no password variable with a value but a file's path,
    // no URL with user:password@.
    assert.deepEqual(
      overlay.filter((o) => o.kind === 'Secret'),
      [],
    );
    const everyEnv = overlay
      .flatMap((o) => (o as Workload).spec?.template?.spec?.containers ?? [])
      .flatMap((c) => c.env ?? []);
    for (const e of everyEnv.filter((x) => /PASSWORD|PASSWD|PGPASS/.test(x.name)))
      assert.match(e.name, /_FILE$/, `${e.name} holds a file's path, not a password`);
    assert.doesNotMatch(toYaml(overlay), /:\/\/[^\s/@:]+:[^\s/@]+@/, 'a URL with a password');
  });

  test('in-cluster-postgres: PostgreSQL is one non-root replica on its own volume, checked with pg_isready, and needs no pod networking', () => {
    const sts = find(overlay, 'StatefulSet', 'weft-postgres')!;
    const pod = sts.spec.template.spec;
    const postgres = pod.containers.find((c) => c.name === 'postgres')!;
    assert.equal(sts.spec.replicas, 1);
    assert.equal(sts.spec.serviceName, 'weft-postgres');
    const [claim] = sts.spec.volumeClaimTemplates ?? [];
    assert.deepEqual(claim?.spec.accessModes, ['ReadWriteOnce']);
    const dataMount = postgres.volumeMounts?.find((m) => m.name === claim?.metadata.name);
    assert.ok(dataMount, 'the claim is mounted');
    assert.ok(
      envOf(postgres).get('PGDATA')?.value?.startsWith(`${dataMount.mountPath}/`),
      'PGDATA is a folder below the volume root (lost+found)',
    );
    assert.equal(pod.securityContext?.runAsNonRoot, true);
    assert.ok((pod.securityContext?.runAsUser ?? 0) > 0);
    for (const probe of [postgres.startupProbe, postgres.readinessProbe, postgres.livenessProbe])
      assert.match(probe?.exec?.command.join(' ') ?? '', /\bpg_isready\b/);
    assert.ok(postgres.resources?.requests?.memory && postgres.resources.limits?.memory);
    // Pods get addresses from the control plane, which needs this database: it cannot wait for pod networking.
    assert.equal(pod.hostNetwork, true);
    assert.ok(pod.tolerations?.some((t) => t.key === 'node.kubernetes.io/not-ready'));
  });

  test("the base (deploy/) still takes the control plane's external DSN from the Secret weft-postgres and runs no PostgreSQL", () => {
    const cp = find(rendered, 'Deployment', 'weft-control-plane')!.spec.template.spec.containers.find(
      (c) => c.name === 'control-plane',
    )!;
    const env = envOf(cp);
    assert.deepEqual(env.get('DATABASE_URL'), {
      name: 'DATABASE_URL',
      valueFrom: { secretKeyRef: { name: 'weft-postgres', key: 'dsn' } },
    });
    assert.equal(env.has('WEFT_DATABASE_PASSWORD_FILE'), false);
    assert.equal(
      rendered.some((o) => o.kind === 'StatefulSet' || o.metadata.name === 'weft-postgres'),
      false,
    );
  });

  test('the DaemonSet installs the self-contained plugin with `weft cni install` and leaves the conflist to the ready agent', () => {
    type Container = {
      name: string;
      command?: string[];
      env?: { name: string; value?: string }[];
      volumeMounts?: { mountPath: string }[];
    };
    const ds = rendered.find((o) => o.kind === 'DaemonSet' && o.metadata.name === 'weft-agent') as Obj & {
      spec: { template: { spec: { initContainers: Container[]; containers: Container[] } } };
    };
    const [init] = ds.spec.template.spec.initContainers;
    assert.deepEqual(init!.command?.slice(1), [
      '/opt/weft/dist/bin/weft',
      'cni',
      'install',
      '--bin-dir',
      '/host/opt/cni/bin',
      '--plugin',
      '/opt/weft/dist/bin/weft-cni-static',
    ]);
    assert.deepEqual(
      init!.volumeMounts?.map((m) => m.mountPath),
      ['/host/opt/cni/bin'],
      'the init step cannot write the conflist',
    );
    const agent = ds.spec.template.spec.containers.find((c) => c.name === 'agent')!;
    const env = new Map((agent.env ?? []).map((e) => [e.name, e.value]));
    assert.equal(
      env.get('WEFT_CNI_CONF_DIR'),
      '/host/etc/cni/net.d',
      'the agent writes the conflist once its socket answers',
    );
    assert.equal(
      env.has('WEFT_CNI_BIN_DIR'),
      false,
      'the agent does not overwrite the self-contained plugin with the Node script',
    );
    assert.ok(agent.volumeMounts?.some((m) => m.mountPath === '/host/etc/cni/net.d'));
  });

  test("the agent, not privileged, writes the host's network sysctls and sysfs through hostPath mounts named by WEFT_PROC_SYS_NET and WEFT_SYS_DIR", () => {
    type Mount = { name: string; mountPath: string; readOnly?: boolean };
    type Container = {
      name: string;
      env?: { name: string; value?: string }[];
      volumeMounts?: Mount[];
      securityContext?: {
        privileged?: boolean;
        readOnlyRootFilesystem?: boolean;
        capabilities?: { add?: string[]; drop?: string[] };
      };
    };
    type Volume = { name: string; hostPath?: { path: string; type?: string } };
    const ds = rendered.find((o) => o.kind === 'DaemonSet' && o.metadata.name === 'weft-agent') as Obj & {
      spec: { template: { spec: { hostNetwork?: boolean; containers: Container[]; volumes: Volume[] } } };
    };
    const pod = ds.spec.template.spec;
    const agent = pod.containers.find((c) => c.name === 'agent')!;
    // The container whose /proc/sys and /sys the runtime mounts read-only, in the host's network namespace.
    assert.equal(
      pod.hostNetwork,
      true,
      "the host's /proc/sys/net shows the agent's own namespace only on the host network",
    );
    assert.equal(agent.securityContext?.privileged, false);
    assert.equal(agent.securityContext?.readOnlyRootFilesystem, true);
    assert.deepEqual(agent.securityContext?.capabilities, {
      drop: ['ALL'],
      add: ['NET_ADMIN', 'NET_RAW', 'SYS_ADMIN'],
    });
    const env = new Map((agent.env ?? []).map((e) => [e.name, e.value]));
    for (const [name, hostPath] of [
      ['WEFT_PROC_SYS_NET', '/proc/sys/net'],
      ['WEFT_SYS_DIR', '/sys'],
    ] as const) {
      const at = env.get(name);
      assert.ok(at, `${name} is set`);
      const mount = agent.volumeMounts?.find((m) => m.mountPath === at);
      assert.ok(mount, `${name}=${at} is a mount of the agent`);
      assert.notEqual(mount.readOnly, true, `${at} is writable`);
      const volume = pod.volumes.find((v) => v.name === mount.name);
      assert.deepEqual(volume?.hostPath, { path: hostPath, type: 'Directory' }, `${at} is the host's ${hostPath}`);
    }
  });

  // The AdminNetworkPolicy and BaselineAdminNetworkPolicy CRDs (installed for real in before()).
  const GV = 'policy.networking.k8s.io/v1alpha1';
  const anp = (name: string, spec: Record<string, unknown>) => ({
    apiVersion: GV,
    kind: 'AdminNetworkPolicy',
    metadata: { name },
    spec,
  });
  const banp = (name: string, spec: Record<string, unknown>) => ({
    apiVersion: GV,
    kind: 'BaselineAdminNetworkPolicy',
    metadata: { name },
    spec,
  });
  const validAnp = anp('tenant-isolation', {
    priority: 10,
    subject: {
      pods: {
        namespaceSelector: { matchLabels: { tenant: 'a' } },
        podSelector: { matchExpressions: [{ key: 'app', operator: 'In', values: ['web'] }] },
      },
    },
    ingress: [
      {
        name: 'monitoring',
        action: 'Allow',
        from: [{ namespaces: { matchLabels: { role: 'monitoring' } } }],
        ports: [{ portNumber: { port: 9090 } }, { namedPort: 'metrics' }],
      },
      {
        name: 'ops',
        action: 'Pass',
        from: [{ pods: { namespaceSelector: {}, podSelector: { matchLabels: { role: 'ops' } } } }],
      },
      { name: 'others', action: 'Deny', from: [{ namespaces: {} }] },
    ],
    egress: [
      {
        name: 'no-metadata',
        action: 'Deny',
        to: [{ networks: ['169.254.169.254/32', 'fd00:ec2::254/128'] }],
        ports: [{ portRange: { protocol: 'TCP', start: 80, end: 443 } }],
      },
    ],
  });
  const validBanp = banp('default', {
    subject: { namespaces: {} },
    ingress: [{ name: 'default-deny', action: 'Deny', from: [{ namespaces: {} }] }],
    egress: [
      {
        action: 'Allow',
        to: [{ pods: { namespaceSelector: {}, podSelector: {} } }],
        ports: [{ portNumber: { protocol: 'UDP', port: 53 } }],
      },
    ],
  });
  const create = (o: object, validate = false) =>
    kube.kubectl(['create', `--validate=${validate}`, '-o', 'json', '-f', '-'], { input: JSON.stringify(o) });
  const refused = async (o: object, why: RegExp, validate = false) => {
    await assert.rejects(
      create(o, validate),
      (err: Error) => {
        assert.match(err.message, why);
        return true;
      },
      `${JSON.stringify(o)} was accepted`,
    );
  };

  test('the admin policy CRDs: a valid policy of each kind is stored as written (with protocol defaulted), has a status subresource, and Weft parses it', async () => {
    try {
      const storedAnp = JSON.parse((await create(validAnp)).stdout) as typeof validAnp & {
        spec: {
          ingress: { ports?: { portNumber?: { protocol?: string } }[] }[];
          egress: { to: { networks?: string[] }[] }[];
        };
      };
      assert.equal(storedAnp.spec.ingress[0]!.ports![0]!.portNumber!.protocol, 'TCP', 'protocol defaults to TCP');
      assert.deepEqual(
        storedAnp.spec.egress[0]!.to[0]!.networks,
        ['169.254.169.254/32', 'fd00:ec2::254/128'],
        'nothing pruned',
      );
      assert.deepEqual({ ...storedAnp.spec, ingress: undefined }, { ...validAnp.spec, ingress: undefined });
      const storedBanp = JSON.parse((await create(validBanp)).stdout) as typeof validBanp;
      assert.deepEqual(storedBanp.spec, validBanp.spec);
      // What the kube-controller will read back is what the policy service accepts.
      const parsedAnp = parsePolicyObject(storedAnp);
      assert.ok(
        parsedAnp.kind === 'AdminNetworkPolicy' &&
          parsedAnp.priority === 10 &&
          parsedAnp.ingress.length === 3 &&
          parsedAnp.egress.length === 1,
      );
      assert.equal(parsePolicyObject(storedBanp).kind, 'BaselineAdminNetworkPolicy');
      for (const path of [
        'adminnetworkpolicies/tenant-isolation/status',
        'baselineadminnetworkpolicies/default/status',
      ]) {
        await kube.kubectl(['get', '--raw', `/apis/${GV}/${path}`]);
      }
      const { stdout } = await kube.kubectl(['get', 'anp']);
      assert.match(stdout, /^tenant-isolation\s+10\s/m, 'kubectl get anp shows the priority');
    } finally {
      await kube.kubectl([
        'delete',
        '--ignore-not-found',
        'adminnetworkpolicy/tenant-isolation',
        'baselineadminnetworkpolicy/default',
      ]);
    }
  });

  // 1.20 names list items without their index (spec.ingress.action); later servers with it (spec.ingress[0].action).
  test('the admin policy CRDs: the server refuses what the API forbids', async () => {
    const withSpec = (patch: Record<string, unknown>) => anp('broken', { ...validAnp.spec, ...patch });
    await refused(withSpec({ priority: 1001 }), /spec\.priority.*less than or equal to 1000/);
    await refused(withSpec({ priority: -1 }), /spec\.priority.*greater than or equal to 0/);
    await refused(
      withSpec({ ingress: [{ name: 'x', action: 'Maybe', from: [{ namespaces: {} }] }] }),
      /spec\.ingress(\[0\])?\.action: Unsupported value: "Maybe"/,
    );
    await refused(
      withSpec({ ingress: [{ name: 'x', action: 'Deny', from: [] }] }),
      /spec\.ingress(\[0\])?\.from.*at least 1 items/,
    );
    await refused(
      withSpec({ subject: { namespaces: {}, pods: { namespaceSelector: {}, podSelector: {} } } }),
      /spec\.subject.*at most 1 properties/,
    );
    await refused(
      withSpec({ egress: [{ action: 'Deny', to: [{ networks: ['10.0.0.300/8'] }] }] }),
      /networks(\[0\])?.*must be of type cidr/,
    );
    await refused(
      withSpec({ egress: [{ action: 'Deny', to: [{ namespaces: {} }], ports: [{ portNumber: { port: 70000 } }] }] }),
      /port.*less than or equal to 65535/,
    );
    await refused(
      withSpec({ ingress: Array.from({ length: 101 }, () => ({ action: 'Deny', from: [{ namespaces: {} }] })) }),
      /spec\.ingress.*at most 100 items/,
    );
    await refused(anp('no-priority', { subject: { namespaces: {} } }), /spec\.priority: Required value/);
    // A peer Weft does not enforce (upstream's experimental nodes) is not stored and ignored: kubectl names the field,
    // and without kubectl's check the server prunes it and the empty peer is refused.
    const nodesPeer = withSpec({ egress: [{ action: 'Deny', to: [{ nodes: {} }] }] });
    await refused(nodesPeer, /unknown field "nodes"/, true);
    await refused(nodesPeer, /to(\[0\])?.*at least 1 properties/);
    // The baseline: no Pass, and only "default" (enforced by the schema on metadata.name, no CEL needed).
    await refused(
      banp('default', { ...validBanp.spec, ingress: [{ action: 'Pass', from: [{ namespaces: {} }] }] }),
      /spec\.ingress(\[0\])?\.action: Unsupported value: "Pass"/,
    );
    await refused(banp('other', validBanp.spec), /metadata\.name: Unsupported value: "other"/);
    const { stdout } = await kube.kubectl(['get', 'anp,banp', '-o', 'name']);
    assert.equal(stdout.trim(), '', 'nothing refused was stored');
  });

  test('the admin policy CRDs: the baseline shares subject, peers, ports and status with AdminNetworkPolicy, and differs only by Pass', () => {
    type Schema = { properties: Record<string, Schema>; items: Schema; enum?: string[] };
    const schemaOf = (kind: string) =>
      (
        rendered.find(
          (o) => o.kind === 'CustomResourceDefinition' && (o.spec as { names: { kind: string } }).names.kind === kind,
        )!.spec as { versions: { schema: { openAPIV3Schema: Schema } }[] }
      ).versions[0]!.schema.openAPIV3Schema;
    const [a, b] = [schemaOf('AdminNetworkPolicy'), schemaOf('BaselineAdminNetworkPolicy')];
    const rule = (s: Schema, dir: string) => s.properties.spec!.properties[dir]!.items.properties;
    assert.deepEqual(b.properties.spec!.properties.subject, a.properties.spec!.properties.subject);
    assert.deepEqual(b.properties.status, a.properties.status);
    for (const [dir, peers] of [
      ['ingress', 'from'],
      ['egress', 'to'],
    ] as const) {
      assert.deepEqual(rule(b, dir)[peers], rule(a, dir)[peers]);
      assert.deepEqual(rule(b, dir).ports, rule(a, dir).ports);
      assert.deepEqual(rule(b, dir).name, rule(a, dir).name);
      assert.deepEqual(rule(a, dir).action!.enum, ['Allow', 'Deny', 'Pass']);
      assert.deepEqual(rule(b, dir).action!.enum, ['Allow', 'Deny']);
    }
    assert.equal(b.properties.spec!.properties.priority, undefined);
  });
});
