import { setTimeout as sleep } from 'node:timers/promises';
import { IpamServiceService, type Allocation, type AllocationHistoryEntry } from '../../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService } from '../../gen/weft/routes/v1/routes.js';
import { listAllNodes } from '../node-status.js';
import { CONNECTION_FLAGS, OUTPUT_FLAGS, type CommandGroup, type Context } from '../core/command.js';
import type { Column } from '../core/output.js';
import { everyPage, familyName, iso, timeFlag, withFamilyName } from '../core/values.js';

/** `weft ipam allocations|utilization|show|history|check|release`: who holds which address, now and before. */
const common = { ...CONNECTION_FLAGS, ...OUTPUT_FLAGS };

const allocationColumns: Column<Allocation>[] = [
  { header: 'ADDRESS', value: (a) => a.address },
  { header: 'NODE', value: (a) => a.node },
  { header: 'POD', value: (a) => `${a.podNamespace}/${a.podName}` },
  { header: 'HANDLE', value: (a) => a.handle },
  { header: 'POOL', value: (a) => a.pool, wide: true },
  { header: 'BLOCK', value: (a) => a.blockCidr, wide: true },
  { header: 'FAMILY', value: (a) => familyName(a.family), wide: true },
  { header: 'ALLOCATED', value: (a) => iso(a.allocateTime), wide: true },
  { header: 'OWNER', value: (a) => a.owner, wide: true },
];

/** `--watch` of allocations: there is no allocation watch RPC, so the list is read again every `--interval` seconds. */
export const ALLOCATIONS_POLL_SECONDS = 2;

async function watchAllocations(ctx: Context, list: () => Promise<Allocation[]>, intervalS: number): Promise<number> {
  const signal = ctx.untilInterrupted();
  const columns: Column<{ type: string; a: Allocation }>[] = [
    { header: 'EVENT', value: (e) => e.type },
    ...allocationColumns.map((c) => ({ ...c, value: (e: { a: Allocation }) => c.value(e.a) })),
  ];
  const shown = { headerShown: false };
  const key = (a: Allocation) => `${a.handle} ${a.address}`;
  let held = new Map<string, Allocation>();
  while (!signal.aborted) {
    let now: Map<string, Allocation>;
    try {
      now = new Map((await list()).map((a) => [key(a), a]));
    } catch (err) {
      if (signal.aborted) break;
      ctx.warn(
        `listing allocations failed (${(err as { details?: string }).details || (err as Error).message}); trying again in ${intervalS} s`,
      );
      await sleep(intervalS * 1000, undefined, { signal }).catch(() => {});
      continue;
    }
    const emit = (type: string, a: Allocation) =>
      ctx.out.event({ type, a }, columns, { type, allocation: withFamilyName(a) }, shown);
    for (const [k, a] of now) if (!held.has(k)) emit('ADDED', a);
    for (const [k, a] of held) if (!now.has(k)) emit('DELETED', a);
    held = now;
    await sleep(intervalS * 1000, undefined, { signal }).catch(() => {});
  }
  return 0;
}

export const ipamCommands: CommandGroup = {
  name: 'ipam',
  summary: 'IP address management: pools, allocations, reservations, history, routing domains',
  commands: [
    {
      path: ['ipam', 'allocations'],
      summary: 'live allocations: address, node, pod, handle',
      flags: {
        pool: { type: 'string', value: 'P', description: "only this pool's" },
        node: { type: 'string', value: 'N', description: "only this node's" },
        watch: {
          type: 'boolean',
          short: 'w',
          description: `after the list, print each allocation made (ADDED) or released (DELETED) until Ctrl-C (polls every --interval seconds)`,
        },
        interval: {
          type: 'string',
          value: 'SECONDS',
          description: `how often --watch reads the list again (default ${ALLOCATIONS_POLL_SECONDS})`,
        },
        ...common,
      },
      async run(ctx) {
        const ipam = ctx.client(IpamServiceService);
        const list = () =>
          everyPage((pageToken) =>
            ipam
              .listAllocations(
                { pool: ctx.str('pool') ?? '', node: ctx.str('node') ?? '', pageToken },
                { timeoutMs: 30_000 },
              )
              .then((r) => ({ items: r.allocations, next: r.nextPageToken })),
          );
        const interval = ctx.str('interval');
        if (interval !== undefined && !ctx.bool('watch')) throw ctx.usage('--interval goes with --watch');
        if (ctx.bool('watch')) {
          const s = interval === undefined ? ALLOCATIONS_POLL_SECONDS : Number(interval);
          if (!(s >= 0.1 && s <= 3600)) throw ctx.usage(`--interval ${JSON.stringify(interval)}: seconds, 0.1 to 3600`);
          return watchAllocations(ctx, list, s);
        }
        const allocations = await list();
        ctx.out.table(allocations, allocationColumns, {
          value: allocations.map(withFamilyName),
          empty: 'no allocations',
        });
        return 0;
      },
    },
    {
      path: ['ipam', 'utilization'],
      summary: 'total, allocated, cooling down, reserved and free addresses, per pool, node (and block)',
      flags: {
        pool: { type: 'string', value: 'P', description: 'only this pool' },
        blocks: { type: 'boolean', description: 'a row per block too' },
        ...common,
      },
      async run(ctx) {
        const ipam = ctx.client(IpamServiceService);
        // Pages of 1,000 node and block rows; a pool whose rows span pages is listed once, its rows joined.
        const pages = await everyPage((pageToken) =>
          ipam
            .getUtilization(
              { pool: ctx.str('pool') ?? '', includeBlocks: ctx.bool('blocks'), pageSize: 1000, pageToken },
              { timeoutMs: 30_000 },
            )
            .then((r) => ({ items: r.pools, next: r.nextPageToken })),
        );
        const pools: typeof pages = [];
        for (const p of pages) {
          const held = pools[pools.length - 1];
          if (held?.pool === p.pool) {
            held.nodes.push(...p.nodes);
            held.blocks.push(...p.blocks);
          } else pools.push(p);
        }
        type Counts = { total: string; allocated: number; coolingDown: number; reserved: string; free: string };
        const rows = pools.flatMap((p) => [
          { what: `${p.pool} ${p.cidr}`, c: p.counts },
          ...p.nodes.map((n) => ({ what: `  node ${n.node}`, c: n.counts })),
          ...p.blocks.map((b) => ({ what: `    block ${b.cidr}`, c: b.counts })),
        ]) as { what: string; c: Counts | undefined }[];
        ctx.out.table(
          rows,
          [
            { header: 'POOL / NODE / BLOCK', value: (r) => r.what },
            { header: 'TOTAL', value: (r) => r.c?.total },
            { header: 'ALLOCATED', value: (r) => r.c?.allocated },
            { header: 'COOLING', value: (r) => r.c?.coolingDown },
            { header: 'RESERVED', value: (r) => r.c?.reserved },
            { header: 'FREE', value: (r) => r.c?.free },
          ],
          { value: pools, empty: 'no pools' },
        );
        return 0;
      },
    },
    {
      path: ['ipam', 'show'],
      args: [{ name: 'ADDRESS' }],
      summary: 'who held the address at a time (default: now), in every routing domain or in one',
      flags: {
        at: { type: 'string', value: 'TIME', description: 'when (e.g. 2026-11-27T03:12:00Z; default: now)' },
        domain: { type: 'string', value: 'D', description: 'only this routing domain' },
        ...common,
      },
      async run(ctx) {
        return printHistory(ctx, {
          address: ctx.args[0]!,
          at: timeFlag('at', ctx.str('at')),
          routingDomain: ctx.str('domain') ?? '',
        });
      },
    },
    {
      path: ['ipam', 'history'],
      synopsis: '(--pod NS/NAME | --node N [--since T] [--until T] | --handle H) [-o json|yaml|wide]',
      summary: 'every address a pod, node or handle held, newest first',
      flags: {
        pod: { type: 'string', value: 'NS/NAME', description: 'a pod (namespace default when left out)' },
        node: { type: 'string', value: 'N', description: 'a node' },
        since: { type: 'string', value: 'T', description: 'with --node: from this time' },
        until: { type: 'string', value: 'T', description: 'with --node: up to this time' },
        handle: { type: 'string', value: 'H', description: 'a handle (<container id>/<interface>)' },
        ...common,
      },
      async run(ctx) {
        const pod = ctx.str('pod');
        const node = ctx.str('node');
        const handle = ctx.str('handle');
        if (pod) {
          const [ns, name] = pod.includes('/') ? pod.split('/', 2) : ['default', pod];
          return printHistory(ctx, { podNamespace: ns, podName: name });
        }
        if (node)
          return printHistory(ctx, {
            node,
            at: timeFlag('since', ctx.str('since')),
            until: timeFlag('until', ctx.str('until')),
          });
        if (handle) return printHistory(ctx, { handle });
        throw ctx.usage('name what to look up');
      },
    },
    {
      path: ['ipam', 'check'],
      summary:
        "verify IPAM's invariants; list allocations of departed nodes (leaked) and of unregistered names (external)",
      details: 'Exit status 1 when an invariant fails or allocations leaked.',
      flags: {
        'older-than': {
          type: 'string',
          value: 'SECONDS',
          description: 'a node departed over this long ago has leaked (default 300)',
        },
        ...common,
      },
      run: (ctx) => checkOrReleaseLeaked(ctx, 'check'),
    },
    {
      path: ['ipam', 'release'],
      args: [{ name: 'HANDLE', optional: true }],
      synopsis: 'HANDLE | --leaked [--older-than SECONDS] [--yes] | --node NAME [--yes]',
      summary:
        "release one handle's addresses, or leaked allocations, or every allocation of a name that is not a node",
      details:
        "With --leaked or --node, a dry run unless --yes. A registered node's addresses are never released by name.",
      flags: {
        leaked: {
          type: 'boolean',
          description: 'allocations of nodes that departed over --older-than seconds ago, made before they departed',
        },
        node: {
          type: 'string',
          value: 'NAME',
          description:
            'every allocation on NAME (not a registered node; e.g. one deregistered before departures were recorded)',
        },
        'older-than': {
          type: 'string',
          value: 'SECONDS',
          description: 'with --leaked: departed over this long ago (default 300)',
        },
        yes: { type: 'boolean', description: 'release (without it: a dry run)' },
        ...common,
      },
      async run(ctx) {
        const handle = ctx.args[0];
        const node = ctx.str('node');
        if (ctx.bool('leaked') && node !== undefined) throw ctx.usage('--leaked or --node, not both');
        if (handle !== undefined && (ctx.bool('leaked') || node !== undefined))
          throw ctx.usage('a HANDLE, --leaked or --node: one of them');
        if (handle === undefined && !ctx.bool('leaked') && node === undefined)
          throw ctx.usage('name a HANDLE, --leaked or --node');
        if (handle === undefined) return checkOrReleaseLeaked(ctx, node !== undefined ? 'node' : 'leaked');
        const r = await ctx.client(IpamServiceService).release({ handle }, { timeoutMs: 10_000 });
        ctx.out.value(r, () => (r.released ? `released ${r.addresses.join(', ')}` : `${handle} held nothing`));
        return 0;
      },
    },
  ],
};

async function printHistory(ctx: Context, query: Record<string, unknown>): Promise<number> {
  const ipam = ctx.client(IpamServiceService);
  // Every page, newest first (a node's history over months is many pages of 1,000).
  const entries = await everyPage((pageToken) =>
    ipam
      .listAllocationHistory({ ...query, pageToken }, { timeoutMs: 30_000 })
      .then((r) => ({ items: r.entries, next: r.nextPageToken })),
  );
  ctx.out.table(
    entries,
    [
      { header: 'ADDRESS', value: (e: AllocationHistoryEntry) => e.allocation!.address },
      { header: 'STATE', value: (e) => (e.releaseTime ? 'released' : 'live') },
      { header: 'FROM', value: (e) => iso(e.allocation!.allocateTime) },
      { header: 'UNTIL', value: (e) => (e.releaseTime ? iso(e.releaseTime) : 'now') },
      { header: 'NODE', value: (e) => e.allocation!.node },
      { header: 'POD', value: (e) => `${e.allocation!.podNamespace}/${e.allocation!.podName}` },
      { header: 'HANDLE', value: (e) => e.allocation!.handle },
      { header: 'DOMAIN', value: (e) => e.allocation!.routingDomain },
      { header: 'CLUSTER', value: (e) => e.allocation!.cluster, wide: true },
      { header: 'FAMILY', value: (e) => familyName(e.allocation!.family), wide: true },
    ],
    {
      value: entries.map((e) => ({ ...e, allocation: e.allocation && withFamilyName(e.allocation) })),
      empty: 'nothing recorded',
    },
  );
  return 0;
}

/** `ipam check`, `ipam release --leaked` and `ipam release --node`: allocations against registered and departed nodes. */
async function checkOrReleaseLeaked(ctx: Context, mode: 'check' | 'leaked' | 'node'): Promise<number> {
  const ipam = ctx.client(IpamServiceService);
  const routes = ctx.client(RoutesServiceService);
  const node = mode === 'node' ? ctx.str('node')! : '';
  const olderThan = ctx.str('older-than');
  const olderThanS = olderThan === undefined ? 300 : Number(olderThan);
  if (!Number.isInteger(olderThanS) || olderThanS < 0)
    throw ctx.usage(`--older-than ${olderThan}: a whole number of seconds, 0 or more`);
  const allocations = await everyPage((pageToken) =>
    ipam
      .listAllocations({ pageToken, node }, { timeoutMs: 30_000 })
      .then((r) => ({ items: r.allocations, next: r.nextPageToken })),
  );
  const registered = new Set((await listAllNodes(routes)).map((n) => n.name));
  if (mode === 'node') {
    // A registered node's addresses are its running pods': never released by name.
    if (registered.has(node))
      throw new Error(
        `${node} is a registered node: its addresses belong to its running pods. Stop its agent and deregister it first`,
      );
    if (!ctx.bool('yes')) {
      ctx.out.value(
        { dryRun: true, wouldRelease: allocations.map((a) => a.handle) },
        () => `dry run: would release ${allocations.length} allocations on ${node}; add --yes`,
      );
      return 0;
    }
    const released = (await ipam.garbageCollect({ node, validHandles: [] }, { timeoutMs: 30_000 })).released.length;
    ctx.out.value({ released }, () => `released ${released} allocations on ${node}`);
    return 0;
  }
  // Leaked: held by nodes that registered, then departed at least --older-than seconds ago (IPAM's sweeper releases
  // them after WEFT_IPAM_NODE_GONE_GRACE_SECONDS, 300 by default), made before they departed. Names neither
  // registered nor departed are external systems' (or nodes deregistered before departures were recorded): listed,
  // never released here.
  const departedAt = async (names: string[]) => {
    const out = new Map<string, Date>();
    for (let i = 0; i < names.length; i += 10_000) {
      for (const d of (await routes.listDepartedNodes({ names: names.slice(i, i + 10_000) }, { timeoutMs: 10_000 }))
        .nodes)
        if (d.departTime) out.set(d.name, d.departTime);
    }
    return out;
  };
  const departed = await departedAt([...new Set(allocations.map((a) => a.node))].filter((n) => !registered.has(n)));
  const cutoff = Date.now() - olderThanS * 1000;
  const before = (a: Allocation) => !!a.allocateTime && a.allocateTime < departed.get(a.node)!;
  const leaked = allocations.filter(
    (a) => departed.has(a.node) && departed.get(a.node)!.getTime() <= cutoff && before(a),
  );
  const recent = allocations.filter(
    (a) => departed.has(a.node) && departed.get(a.node)!.getTime() > cutoff && before(a),
  );
  const unregistered = allocations.filter((a) => !registered.has(a.node) && !departed.has(a.node));
  const row = (a: Allocation) => ({ handle: a.handle, address: a.address, node: a.node });
  if (mode === 'check') {
    const { problems, checks } = await ipam.checkConsistency({}, { timeoutMs: 60_000 });
    const report = {
      checks,
      problems,
      leaked: leaked.map(row),
      departedRecently: recent.map(row),
      unregistered: unregistered.map(row),
    };
    const list = (xs: Allocation[]) => xs.slice(0, 50).map((a) => `  ${a.address} ${a.node} ${a.handle}`);
    ctx.out.value(report, () =>
      [
        `${checks} invariants checked: ${problems.length ? `${problems.length} problems` : 'all hold'}`,
        ...problems.map((p) => `  ${p.kind}: ${p.detail}`),
        leaked.length
          ? `${leaked.length} allocations on nodes that departed over ${olderThanS} s ago (release with \`weft ipam release --leaked --yes\`):`
          : 'no allocations on departed nodes',
        ...list(leaked),
        ...(recent.length
          ? [
              `${recent.length} allocations on nodes that departed within ${olderThanS} s (IPAM's sweeper releases them after its grace):`,
              ...list(recent),
            ]
          : []),
        ...(unregistered.length
          ? [
              `${unregistered.length} allocations on names that are not registered nodes (external systems; never swept; \`weft ipam release --node NAME\` if one is a node that left):`,
              ...list(unregistered),
            ]
          : []),
      ].join('\n'),
    );
    return problems.length > 0 || leaked.length > 0 ? 1 : 0;
  }
  const goneNodes = [...new Set(leaked.map((a) => a.node))];
  if (!ctx.bool('yes')) {
    ctx.out.value(
      { dryRun: true, wouldRelease: leaked.map((a) => a.handle) },
      () =>
        `dry run: would release ${leaked.length} allocations on ${goneNodes.length} departed nodes (${goneNodes.join(', ')}); add --yes`,
    );
    return 0;
  }
  let released = 0;
  for (const n of goneNodes) {
    // Asked again just before: a node that registered again since is no longer departed, and what it allocated
    // after it departed is never released.
    const at = (await departedAt([n])).get(n);
    if (!at || at.getTime() > cutoff) continue;
    released += (await ipam.garbageCollect({ node: n, validHandles: [], allocatedBefore: at }, { timeoutMs: 30_000 }))
      .released.length;
  }
  ctx.out.value({ released }, () => `released ${released} allocations on ${goneNodes.length} departed nodes`);
  return 0;
}
