import type { PromiseClient } from '../../lib/grpc/client.js';
import { IpamServiceService, type Pool, type Reservation } from '../../gen/weft/ipam/v1/ipam.js';
import { CONNECTION_FLAGS, OUTPUT_FLAGS, type CommandGroup } from '../core/command.js';
import { everyPage, familyName, secondsFlag, withFamilyName } from '../core/values.js';

/** `weft ipam pools`, `ipam pool create|update`, and reservations: the address space IPAM hands out. */
const common = { ...CONNECTION_FLAGS, ...OUTPUT_FLAGS };

const listPools = (ipam: PromiseClient<typeof IpamServiceService>) =>
  everyPage((pageToken) =>
    ipam.listPools({ pageToken }, { timeoutMs: 10_000 }).then((r) => ({ items: r.pools, next: r.nextPageToken })),
  );

export const poolCommands: CommandGroup = {
  name: 'ipam',
  summary: 'IP address management: pools, allocations, reservations, history, routing domains',
  commands: [
    {
      path: ['ipam', 'pools'],
      summary: 'list pools',
      flags: common,
      async run(ctx) {
        const pools = await listPools(ctx.client(IpamServiceService));
        ctx.out.table(
          pools,
          [
            { header: 'NAME', value: (p: Pool) => p.name },
            { header: 'CIDR', value: (p) => p.cidr },
            { header: 'BLOCKS', value: (p) => `/${p.blockPrefixLength}` },
            { header: 'FAMILY', value: (p) => familyName(p.family) },
            { header: 'DOMAIN', value: (p) => p.routingDomain },
            { header: 'STATE', value: (p) => (p.disabled ? 'disabled' : 'enabled') },
            { header: 'LIVE', value: (p) => p.liveAllocations, wide: true },
            { header: 'COOLDOWN', value: (p) => `${p.cooldownSeconds}s`, wide: true },
            { header: 'STICKY', value: (p) => `${p.stickySeconds}s`, wide: true },
            { header: 'NODE SELECTOR', value: (p) => p.nodeSelector, wide: true },
            { header: 'NAMESPACE SELECTOR', value: (p) => p.namespaceSelector, wide: true },
          ],
          { value: pools.map(withFamilyName), empty: 'no pools' },
        );
        return 0;
      },
    },
    {
      path: ['ipam', 'pool', 'create'],
      args: [{ name: 'NAME' }, { name: 'CIDR' }],
      summary: 'create a pool (pools overlap only across routing domains)',
      flags: {
        'block-prefix-length': {
          type: 'string',
          value: 'N',
          required: true,
          description: 'prefix length of the blocks nodes claim, e.g. 26',
        },
        cooldown: {
          type: 'string',
          value: 'SECONDS',
          description: 'a released address is not handed out again for this long (default 30)',
        },
        domain: { type: 'string', value: 'D', description: 'routing domain (default: default)' },
        ...common,
      },
      async run(ctx) {
        const [name, cidr] = ctx.args as [string, string];
        const { pool } = await ctx.client(IpamServiceService).createPool(
          {
            name,
            cidr,
            blockPrefixLength: Number(ctx.str('block-prefix-length')),
            cooldownSeconds: secondsFlag('cooldown', ctx.str('cooldown')),
            routingDomain: ctx.str('domain') ?? '',
          },
          { timeoutMs: 10_000 },
        );
        ctx.out.value(
          withFamilyName(pool!),
          () => `pool ${pool!.name} ${pool!.cidr} created in routing domain ${pool!.routingDomain}`,
        );
        return 0;
      },
    },
    {
      path: ['ipam', 'pool', 'update'],
      args: [{ name: 'NAME' }],
      summary: "change a pool's rules (etag-checked)",
      flags: {
        disable: { type: 'boolean', description: 'make no new allocations from it (its live ones stay)' },
        enable: { type: 'boolean', description: 'allocate from it again' },
        'node-selector': {
          type: 'string',
          value: 'S',
          description: 'label selector of the nodes it serves ("zone=a,!spot"; empty: all)',
        },
        'namespace-selector': { type: 'string', value: 'S', description: 'label selector of the namespaces it serves' },
        cooldown: {
          type: 'string',
          value: 'SECONDS',
          description: 'a released address is not handed out again for this long',
        },
        sticky: { type: 'string', value: 'SECONDS', description: 'a released address is kept for its owner this long' },
        ...common,
      },
      async run(ctx) {
        if (ctx.bool('disable') && ctx.bool('enable')) throw ctx.usage('--disable and --enable contradict each other');
        const name = ctx.args[0]!;
        const ipam = ctx.client(IpamServiceService);
        const cooldownSeconds = secondsFlag('cooldown', ctx.str('cooldown'));
        const stickySeconds = secondsFlag('sticky', ctx.str('sticky'));
        const current = (await listPools(ipam)).find((p) => p.name === name);
        if (!current) throw new Error(`no pool named ${name}`);
        const { pool } = await ipam.updatePool(
          {
            name,
            etag: current.etag,
            disabled: ctx.bool('disable') ? true : ctx.bool('enable') ? false : undefined,
            nodeSelector: ctx.str('node-selector'),
            namespaceSelector: ctx.str('namespace-selector'),
            cooldownSeconds,
            stickySeconds,
          },
          { timeoutMs: 10_000 },
        );
        ctx.out.value(withFamilyName(pool!), () => `pool ${pool!.name} updated${pool!.disabled ? ' (disabled)' : ''}`);
        return 0;
      },
    },
    {
      path: ['ipam', 'reserve'],
      args: [{ name: 'POOL' }, { name: 'CIDR|FIRST-LAST' }],
      summary: 'keep a range of a pool from being allocated',
      flags: { reason: { type: 'string', value: 'TEXT', description: 'why (shown by ipam reservations)' }, ...common },
      async run(ctx) {
        const [pool, range] = ctx.args as [string, string];
        const dash = range.includes('/') ? -1 : range.indexOf('-');
        const reason = ctx.str('reason') ?? '';
        const { reservation } = await ctx
          .client(IpamServiceService)
          .createReservation(
            dash < 0
              ? { pool, cidr: range, reason }
              : { pool, first: range.slice(0, dash), last: range.slice(dash + 1), reason },
            { timeoutMs: 10_000 },
          );
        ctx.out.value(reservation, () => `${reservation!.name}: ${reservation!.first}..${reservation!.last} reserved`);
        return 0;
      },
    },
    {
      path: ['ipam', 'reservations'],
      summary: 'list reservations',
      flags: { pool: { type: 'string', value: 'P', description: "only this pool's" }, ...common },
      async run(ctx) {
        const ipam = ctx.client(IpamServiceService);
        const list = await everyPage((pageToken) =>
          ipam
            .listReservations({ pool: ctx.str('pool') ?? '', pageToken })
            .then((r) => ({ items: r.reservations, next: r.nextPageToken })),
        );
        ctx.out.table(
          list,
          [
            { header: 'NAME', value: (r: Reservation) => r.name },
            { header: 'RANGE', value: (r) => `${r.first}..${r.last}` },
            { header: 'REASON', value: (r) => r.reason },
          ],
          { empty: 'no reservations' },
        );
        return 0;
      },
    },
    {
      path: ['ipam', 'unreserve'],
      args: [{ name: 'NAME' }],
      summary: 'remove a reservation (pools/<pool>/reservations/<id>)',
      flags: common,
      async run(ctx) {
        const name = ctx.args[0]!;
        const r = await ctx.client(IpamServiceService).deleteReservation({ name }, { timeoutMs: 10_000 });
        ctx.out.value(r, () => (r.deleted ? `${name} removed` : `${name} did not exist`));
        return 0;
      },
    },
  ],
};
