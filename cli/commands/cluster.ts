import { PolicyServiceService } from '../../gen/weft/policy/v1/policy.js';
import { createClient } from '../../lib/grpc/client.js';
import { parseLabelsFlag, parsePortsFlag } from '../policy.js';
import {
  addNode,
  clusterAdminSecurity,
  clusterDown,
  clusterUp,
  controlPlaneEndpoints,
  controlPlaneTarget,
  podAdd,
  podDel,
  readState,
  restartAgent,
  restartControlPlane,
  startAgent,
  startStoppedControlPlane,
  stopAgent,
  stopControlPlane,
} from '../cluster/cluster.js';
import {
  OUTPUT_FLAGS,
  STATE_DIR_FLAG,
  UsageError,
  type CommandSpec,
  type CommandGroup,
  type Context,
} from '../core/command.js';

/**
 * `weft cluster …`: the local cluster of network namespaces (cli/cluster/). Every command needs root. Calls to the
 * control plane use the cluster's own admin certificate and socket, never --server or --tls-dir.
 */
const common = { ...STATE_DIR_FLAG, ...OUTPUT_FLAGS };

function requireRoot(): void {
  if (process.getuid?.() !== 0) throw new UsageError('the local cluster needs root (network namespaces)');
}

/** Runs `fn` with a policy client on the cluster's control plane, as the cluster's admin. */
async function withClusterPolicy<T>(
  ctx: Context,
  fn: (policy: ReturnType<typeof createClient<typeof PolicyServiceService>>) => Promise<T>,
): Promise<T> {
  const policy = createClient(PolicyServiceService, controlPlaneTarget(readState(ctx.stateDir)), {
    security: clusterAdminSecurity({ stateDir: ctx.stateDir }),
  });
  try {
    return await fn(policy);
  } finally {
    policy.close();
  }
}

const rootOnly = (specs: CommandSpec[]): CommandSpec[] =>
  specs.map((spec) => ({
    ...spec,
    run: (ctx) => {
      requireRoot();
      return spec.run(ctx);
    },
  }));

const agentVerb = (verb: 'stop' | 'start' | 'restart', summary: string): CommandSpec => ({
  path: ['cluster', 'agent', verb],
  args: [{ name: 'NODE' }],
  summary,
  flags: {
    kill: {
      type: 'boolean',
      // `cluster agent stop|start|restart NODE [--kill]` was one usage line: start keeps taking it.
      description: verb === 'start' ? 'no effect (start stops nothing)' : 'SIGKILL, as a crash would (default SIGTERM)',
    },
    ...common,
  },
  async run(ctx) {
    const node = ctx.args[0]!;
    const signal = verb !== 'start' && ctx.bool('kill') ? 'SIGKILL' : 'SIGTERM';
    const n =
      verb === 'stop'
        ? await stopAgent(ctx.stateDir, node, signal)
        : verb === 'start'
          ? startAgent(ctx.stateDir, node)
          : await restartAgent(ctx.stateDir, node, signal);
    ctx.out.value(n, () =>
      verb === 'stop' ? `${n.name}'s agent stopped` : `${n.name}'s agent started (pid ${n.agentPid})`,
    );
    return 0;
  },
});

export const clusterCommands: CommandGroup = {
  name: 'cluster',
  summary: 'a local cluster of network namespaces, one agent per node (root)',
  commands: rootOnly([
    {
      path: ['cluster', 'up'],
      summary: 'build a local cluster: nodes on two underlay subnets, weft up in its own namespace',
      flags: {
        nodes: { type: 'string', value: 'N', description: 'how many nodes, 1-50 (default 3)' },
        'dual-stack': { type: 'boolean', description: 'an IPv6 pool too, and every pod gets both families' },
        'control-plane-env': {
          type: 'string',
          value: 'FILE',
          description:
            "weft up's settings for the control plane, NAME=VALUE a line, read at each of its starts (e.g. DATABASE_URL through a unix socket: scripts/ha/up.sh's socket.env)",
        },
        replicas: {
          type: 'string',
          value: 'N',
          description:
            'control-plane replicas on one database, 1-3 (default 1); agents are given them all and move when one goes',
        },
        ...common,
      },
      async run(ctx) {
        const n = Number(ctx.str('nodes') ?? '3');
        if (!Number.isInteger(n) || n < 1 || n > 50) throw new UsageError('--nodes must be an integer 1-50');
        const replicas = Number(ctx.str('replicas') ?? '1');
        if (!Number.isInteger(replicas) || replicas < 1 || replicas > 3)
          throw new UsageError('--replicas must be an integer 1-3');
        const s = await clusterUp({
          stateDir: ctx.stateDir,
          nodes: n,
          dualStack: ctx.bool('dual-stack'),
          replicas,
          controlPlaneEnv: ctx.str('control-plane-env'),
        });
        ctx.out.value(
          s,
          () =>
            `local cluster ${s.prefix} up: ${s.nodes.map((x) => `${x.name} (${x.address})`).join(', ')}\ncontrol plane: ${controlPlaneTarget(s)} (agents: ${controlPlaneEndpoints(s)})`,
        );
        return 0;
      },
    },
    {
      path: ['cluster', 'down'],
      summary: 'remove it: agents, control plane, namespaces and the state folder (safe to run twice)',
      flags: common,
      async run(ctx) {
        const r = await clusterDown({ stateDir: ctx.stateDir });
        ctx.out.value(r, () => `removed ${r.removedNamespaces.length} namespaces`);
        return 0;
      },
    },
    {
      path: ['cluster', 'status'],
      summary: "nodes, pods and the control plane's address",
      flags: common,
      async run(ctx) {
        const s = readState(ctx.stateDir);
        // The first line's "control plane ADDR" is read by scripts (README: sed -n 's/.*control plane //p').
        ctx.out.value(s, () =>
          [
            `cluster ${s.prefix}: control plane ${controlPlaneTarget(s)}`,
            ...s.nodes.map((n) => `  ${n.name} ${n.address}`),
            ...s.pods.map((p) => `  pod ${p.namespace}/${p.name} on ${p.node}: ${p.addresses.join(', ')}`),
          ].join('\n'),
        );
        return 0;
      },
    },
    {
      path: ['cluster', 'node', 'add'],
      summary: 'add one more node to the running cluster',
      flags: common,
      async run(ctx) {
        const n = await addNode(readState(ctx.stateDir));
        ctx.out.value(n, () => `${n.name} up at ${n.address}`);
        return 0;
      },
    },
    {
      path: ['cluster', 'pod', 'add'],
      args: [{ name: 'NODE' }, { name: 'POD' }],
      summary:
        "attach a pod through the real weft-cni and report it to policy (with --uid: as a Kubernetes pod's runtime would)",
      flags: {
        namespace: { type: 'string', value: 'NS', description: "the pod's namespace (default: default)" },
        labels: { type: 'string', value: 'k=v,...', description: 'its labels, for policy' },
        ports: { type: 'string', value: 'name:port/proto,...', description: 'its named ports, for policy' },
        uid: {
          type: 'string',
          value: 'UID',
          description: "a Kubernetes pod's UID (K8S_POD_UID): its labels and ports come from weft kube-controller",
        },
        ...common,
      },
      async run(ctx) {
        const uid = ctx.str('uid');
        if (uid !== undefined && (ctx.str('labels') !== undefined || ctx.str('ports') !== undefined)) {
          throw new UsageError(
            'weft cluster pod add --uid attaches a Kubernetes pod, whose labels and ports come from its Pod object (weft kube-controller): leave out --labels and --ports',
          );
        }
        const labels = parseLabelsFlag(ctx.str('labels'));
        const ports = parsePortsFlag(ctx.str('ports'));
        const p = await podAdd(ctx.stateDir, ctx.args[0]!, ctx.args[1]!, ctx.str('namespace') ?? 'default', { uid });
        // Without --uid, what a Kubernetes controller would report: the pod's labels and named ports, for policy.
        if (uid === undefined) {
          await withClusterPolicy(ctx, (policy) =>
            policy.upsertPod(
              { pod: { namespace: p.namespace, name: p.name, labels, node: p.node, addresses: p.addresses, ports } },
              { timeoutMs: 10_000 },
            ),
          );
        }
        ctx.out.value(p, () => `pod ${p.namespace}/${p.name} on ${p.node}: ${p.addresses.join(', ')} (${p.netns})`);
        return 0;
      },
    },
    {
      path: ['cluster', 'pod', 'del'],
      args: [{ name: 'NS/POD|POD' }],
      summary: 'detach a pod (pods are NAMESPACE/NAME; default namespace: default)',
      flags: {
        namespace: { type: 'string', value: 'NS', description: "the pod's namespace, when POD has none" },
        ...common,
      },
      async run(ctx) {
        const p = await podDel(ctx.stateDir, ctx.args[0]!, ctx.str('namespace'));
        await withClusterPolicy(ctx, (policy) =>
          policy.deletePod({ namespace: p.namespace, name: p.name }, { timeoutMs: 10_000 }),
        );
        ctx.out.value(
          { deleted: `${p.namespace}/${p.name}`, namespace: p.namespace, name: p.name },
          () => `pod ${p.namespace}/${p.name} deleted`,
        );
        return 0;
      },
    },
    {
      path: ['cluster', 'ns', 'add'],
      args: [{ name: 'NS' }],
      summary: 'label a namespace for policy',
      flags: { labels: { type: 'string', value: 'k=v,...', description: 'its labels' }, ...common },
      async run(ctx) {
        const name = ctx.args[0]!;
        const labels = parseLabelsFlag(ctx.str('labels'));
        await withClusterPolicy(ctx, (policy) => policy.upsertNamespace({ name, labels }, { timeoutMs: 10_000 }));
        ctx.out.value({ namespace: name, labels }, () => `namespace ${name} labelled ${JSON.stringify(labels)}`);
        return 0;
      },
    },
    agentVerb('stop', "stop a node's agent and leave it stopped (its kernel state stays)"),
    agentVerb('start', "start a stopped node's agent"),
    agentVerb('restart', "stop and start a node's agent"),
    {
      path: ['cluster', 'control-plane', 'stop'],
      summary: 'stop the control plane and leave it stopped (agents, their kernel state and pods stay)',
      flags: {
        kill: {
          type: 'boolean',
          description: 'SIGKILL every process of its namespace, as a crash would (default SIGTERM)',
        },
        ...common,
      },
      async run(ctx) {
        await stopControlPlane(ctx.stateDir, ctx.bool('kill') ? 'SIGKILL' : 'SIGTERM');
        ctx.out.value({ stopped: true }, () => 'control plane stopped');
        return 0;
      },
    },
    {
      path: ['cluster', 'control-plane', 'start'],
      summary: 'start a stopped control plane on its data; agents recover on their own',
      flags: common,
      async run(ctx) {
        const s = await startStoppedControlPlane(ctx.stateDir);
        ctx.out.value(s.controlPlane, () => `control plane started (pid ${s.controlPlane.pid})`);
        return 0;
      },
    },
    {
      path: ['cluster', 'control-plane', 'restart'],
      summary: 'restart IPAM, routes and their PostgreSQL on the same data; agents recover on their own',
      flags: common,
      async run(ctx) {
        const s = await restartControlPlane(ctx.stateDir);
        ctx.out.value(s.controlPlane, () => `control plane restarted (pid ${s.controlPlane.pid})`);
        return 0;
      },
    },
  ]),
};
