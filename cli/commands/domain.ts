import {
  IpamServiceService,
  type Aggregate,
  type Cluster,
  type Prefix,
  type RoutingDomain,
} from '../../gen/weft/ipam/v1/ipam.js';
import { CONNECTION_FLAGS, OUTPUT_FLAGS, type CommandGroup } from '../core/command.js';

/** `weft ipam domains|clusters|aggregates|prefixes` and their create verbs: clusters' CIDRs carved from shared aggregates. */
const common = { ...CONNECTION_FLAGS, ...OUTPUT_FLAGS };
const domainFlag = {
  domain: { type: 'string', value: 'D', description: 'routing domain (default: default)' },
} as const;

export const domainCommands: CommandGroup = {
  name: 'ipam',
  summary: 'IP address management: pools, allocations, reservations, history, routing domains',
  commands: [
    {
      path: ['ipam', 'domains'],
      summary: 'list routing domains (address spaces: pools overlap only across them)',
      flags: common,
      async run(ctx) {
        const { routingDomains } = await ctx.client(IpamServiceService).listRoutingDomains({}, { timeoutMs: 10_000 });
        ctx.out.table(routingDomains, [{ header: 'NAME', value: (d: RoutingDomain) => d.name }], {
          empty: 'no routing domains',
        });
        return 0;
      },
    },
    {
      path: ['ipam', 'domain', 'create'],
      args: [{ name: 'NAME' }],
      summary: 'create a routing domain',
      flags: common,
      async run(ctx) {
        const { routingDomain } = await ctx
          .client(IpamServiceService)
          .createRoutingDomain({ name: ctx.args[0]! }, { timeoutMs: 10_000 });
        ctx.out.value(routingDomain, () => `routing domain ${routingDomain!.name} created`);
        return 0;
      },
    },
    {
      path: ['ipam', 'clusters'],
      summary: 'list registered clusters',
      flags: common,
      async run(ctx) {
        const { clusters } = await ctx.client(IpamServiceService).listClusters({}, { timeoutMs: 10_000 });
        ctx.out.table(
          clusters,
          [
            { header: 'NAME', value: (c: Cluster) => c.name },
            { header: 'DOMAIN', value: (c) => c.routingDomain },
          ],
          { empty: 'no clusters' },
        );
        return 0;
      },
    },
    {
      path: ['ipam', 'cluster', 'register'],
      args: [{ name: 'NAME' }],
      summary: 'register a cluster in a routing domain',
      flags: { ...domainFlag, ...common },
      async run(ctx) {
        const { cluster } = await ctx
          .client(IpamServiceService)
          .registerCluster({ name: ctx.args[0]!, routingDomain: ctx.str('domain') ?? '' }, { timeoutMs: 10_000 });
        ctx.out.value(cluster, () => `cluster ${cluster!.name} registered in ${cluster!.routingDomain}`);
        return 0;
      },
    },
    {
      path: ['ipam', 'aggregates'],
      summary: "list aggregates (CIDRs clusters' prefixes are carved from)",
      flags: common,
      async run(ctx) {
        const { aggregates } = await ctx.client(IpamServiceService).listAggregates({}, { timeoutMs: 10_000 });
        ctx.out.table(
          aggregates,
          [
            { header: 'NAME', value: (a: Aggregate) => a.name },
            { header: 'CIDR', value: (a) => a.cidr },
            { header: 'DOMAIN', value: (a) => a.routingDomain },
          ],
          { empty: 'no aggregates' },
        );
        return 0;
      },
    },
    {
      path: ['ipam', 'aggregate', 'create'],
      args: [{ name: 'NAME' }, { name: 'CIDR' }],
      summary: 'create an aggregate',
      flags: { ...domainFlag, ...common },
      async run(ctx) {
        const [name, cidr] = ctx.args as [string, string];
        const { aggregate } = await ctx
          .client(IpamServiceService)
          .createAggregate({ name, cidr, routingDomain: ctx.str('domain') ?? '' }, { timeoutMs: 10_000 });
        ctx.out.value(
          aggregate,
          () => `aggregate ${aggregate!.name} ${aggregate!.cidr} created in ${aggregate!.routingDomain}`,
        );
        return 0;
      },
    },
    {
      path: ['ipam', 'prefixes'],
      summary: 'list carved prefixes',
      flags: { cluster: { type: 'string', value: 'C', description: "only this cluster's" }, ...common },
      async run(ctx) {
        const { prefixes } = await ctx
          .client(IpamServiceService)
          .listPrefixes({ cluster: ctx.str('cluster') ?? '' }, { timeoutMs: 10_000 });
        ctx.out.table(
          prefixes,
          [
            { header: 'CIDR', value: (x: Prefix) => x.cidr },
            { header: 'CLUSTER', value: (x) => x.cluster },
            { header: 'PURPOSE', value: (x) => x.purpose },
            { header: 'NAME', value: (x) => x.name },
          ],
          { empty: 'no prefixes' },
        );
        return 0;
      },
    },
    {
      path: ['ipam', 'prefix', 'allocate'],
      args: [{ name: 'CLUSTER' }, { name: 'AGGREGATE' }],
      summary: 'carve a prefix for a cluster from an aggregate',
      flags: {
        length: { type: 'string', value: 'N', required: true, description: 'prefix length, e.g. 14' },
        purpose: { type: 'string', value: 'P', description: 'what it is for, e.g. pods' },
        ...common,
      },
      async run(ctx) {
        const length = ctx.str('length')!;
        if (!/^\d+$/.test(length))
          throw ctx.usage(`--length ${JSON.stringify(length)} must be a prefix length (a whole number)`);
        const [cluster, aggregate] = ctx.args as [string, string];
        const { prefix } = await ctx
          .client(IpamServiceService)
          .allocatePrefix(
            { cluster, aggregate, prefixLength: Number(length), purpose: ctx.str('purpose') ?? '' },
            { timeoutMs: 10_000 },
          );
        ctx.out.value(prefix, () => `${prefix!.cidr} for ${prefix!.cluster} (${prefix!.purpose}): ${prefix!.name}`);
        return 0;
      },
    },
    {
      path: ['ipam', 'prefix', 'release'],
      args: [{ name: 'NAME' }],
      summary: 'give a prefix back',
      flags: common,
      async run(ctx) {
        const name = ctx.args[0]!;
        const r = await ctx.client(IpamServiceService).releasePrefix({ name }, { timeoutMs: 10_000 });
        ctx.out.value(r, () => (r.released ? `${name} released` : `${name} held nothing`));
        return 0;
      },
    },
  ],
};
