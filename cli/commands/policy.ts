import { PolicyServiceService, type ListedPod, type StoredPolicy } from '../../gen/weft/policy/v1/policy.js';
import { parsePortProto, readPolicyObjects } from '../policy.js';
import { CONNECTION_FLAGS, OUTPUT_FLAGS, type CommandGroup } from '../core/command.js';
import { everyPage } from '../core/values.js';

/** `weft policy …`: Kubernetes NetworkPolicy and admin policies (services/policy/DESIGN.md). */
const common = { ...CONNECTION_FLAGS, ...OUTPUT_FLAGS };
const namespaceFlag = { namespace: { type: 'string', value: 'NS', description: 'only this namespace' } } as const;

export const policyCommands: CommandGroup = {
  name: 'policy',
  summary: 'network policy: apply, list, explain',
  commands: [
    {
      path: ['policy', 'apply'],
      summary:
        'apply NetworkPolicy / AdminNetworkPolicy / BaselineAdminNetworkPolicy objects (YAML or JSON; all or none)',
      flags: {
        file: {
          type: 'string',
          short: 'f',
          value: 'FILE',
          required: true,
          description: 'the objects (YAML or JSON); - reads standard input',
        },
        namespace: { type: 'string', value: 'NS', description: 'namespace of NetworkPolicies that name none' },
        ...common,
      },
      async run(ctx) {
        const objects = readPolicyObjects(ctx.str('file')!);
        const { applied } = await ctx
          .client(PolicyServiceService)
          .applyPolicies(
            { objectsJson: objects.map((x) => JSON.stringify(x)), defaultNamespace: ctx.str('namespace') ?? '' },
            { timeoutMs: 30_000 },
          );
        ctx.out.value(applied, () =>
          applied.map((a) => `${a.kind}/${a.namespace ? `${a.namespace}/` : ''}${a.name} applied`).join('\n'),
        );
        return 0;
      },
    },
    {
      path: ['policy', 'explain'],
      args: [{ name: 'FROM' }, { name: 'TO' }, { name: 'PORT[/PROTO]' }],
      summary: 'allowed or denied, and the rule that decided (FROM, TO: namespace/pod or an IP address)',
      details: 'Exit status 3 when the connection is denied.',
      flags: common,
      async run(ctx) {
        const [from, to, portText] = ctx.args as [string, string, string];
        const { port, protocol } = parsePortProto(portText);
        const e = await ctx.client(PolicyServiceService).explain({ from, to, port, protocol }, { timeoutMs: 10_000 });
        ctx.out.value(e, () =>
          [
            `${e.allowed ? 'ALLOWED' : 'DENIED'}: ${from} -> ${to} ${port}/${protocol}`,
            `  egress of ${from}:  ${e.egress!.reason}`,
            `  ingress of ${to}: ${e.ingress!.reason}`,
          ].join('\n'),
        );
        return e.allowed ? 0 : 3;
      },
    },
    {
      path: ['policy', 'list'],
      summary: 'the policies held',
      flags: { ...namespaceFlag, ...common },
      async run(ctx) {
        const policy = ctx.client(PolicyServiceService);
        const policies = await everyPage((pageToken) =>
          policy
            .listPolicies({ namespace: ctx.str('namespace') ?? '', pageSize: 500, pageToken }, { timeoutMs: 10_000 })
            .then((r) => ({ items: r.policies, next: r.nextPageToken })),
        );
        ctx.out.table(
          policies,
          [
            { header: 'KIND', value: (p: StoredPolicy) => p.ref!.kind },
            { header: 'NAME', value: (p) => `${p.ref!.namespace ? `${p.ref!.namespace}/` : ''}${p.ref!.name}` },
          ],
          {
            value: policies.map((p) => ({ ...p.ref, object: JSON.parse(p.objectJson) as unknown })),
            empty: 'no policies',
          },
        );
        return 0;
      },
    },
    {
      path: ['policy', 'pods'],
      summary: 'the pods policy selects: node, addresses, labels (undescribed: only attached)',
      flags: { ...namespaceFlag, ...common },
      async run(ctx) {
        const policy = ctx.client(PolicyServiceService);
        const pods = await everyPage((pageToken) =>
          policy
            .listPods({ namespace: ctx.str('namespace') ?? '', pageSize: 500, pageToken }, { timeoutMs: 10_000 })
            .then((r) => ({ items: r.pods, next: r.nextPageToken })),
        );
        const labels = (l: Record<string, string>) =>
          Object.entries(l)
            .map(([k, v]) => `${k}=${v}`)
            .join(',');
        ctx.out.table(
          pods,
          [
            { header: 'POD', value: (p: ListedPod) => `${p.namespace}/${p.name}` },
            { header: 'NODE', value: (p) => p.node },
            { header: 'ADDRESSES', value: (p) => p.addresses.join(',') },
            { header: 'LABELS', value: (p) => labels(p.labels) },
            {
              header: 'PORTS',
              value: (p) => p.ports.map((x) => `${x.name}:${x.port}/${x.protocol}`).join(','),
              wide: true,
            },
            { header: 'NOTE', value: (p) => (p.described ? '' : '(undescribed: attached, no labels yet)'), blank: '' },
          ],
          { empty: 'no pods' },
        );
        return 0;
      },
    },
    {
      path: ['policy', 'delete'],
      args: [{ name: 'KIND' }, { name: '[NS/]NAME' }],
      summary: 'delete a policy (exit status 1 when there was none)',
      flags: {
        namespace: {
          type: 'string',
          value: 'NS',
          description: "a NetworkPolicy's namespace, when NAME has none (default: default)",
        },
        ...common,
      },
      async run(ctx) {
        const [kind, ref] = ctx.args as [string, string];
        const [ns, name] = ref.includes('/') ? ref.split('/', 2) : [ctx.str('namespace') ?? 'default', ref];
        const { deleted } = await ctx
          .client(PolicyServiceService)
          .deletePolicy(
            { policy: { kind, namespace: kind === 'NetworkPolicy' ? ns! : '', name: name! } },
            { timeoutMs: 10_000 },
          );
        ctx.out.value({ deleted }, () => (deleted ? `${kind} ${ref} deleted` : `no ${kind} ${ref}`));
        return deleted ? 0 : 1;
      },
    },
  ],
};
