import { existsSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { RoutesServiceService, type NodeRoutes } from '../../gen/weft/routes/v1/routes.js';
import { createRoutesChunkJoiner } from '../../node-dataplane/sources/chunks.js';
import { AGENT_METRICS_PORT, readState } from '../cluster/cluster.js';
import {
  agentStatus,
  compareNode,
  describeEntry,
  listAllNodes,
  readNodeKernel,
  readNodeRouting,
  routeTableSnapshot,
} from '../node-status.js';
import { CONNECTION_FLAGS, OUTPUT_FLAGS, type CommandGroup, type Context } from '../core/command.js';
import type { Column } from '../core/output.js';
import { iso } from '../core/values.js';

/**
 * `weft nodes` and `weft routes NODE` (cli/node-status.ts): the route table from a WatchRoutes snapshot, and for nodes
 * of the local cluster what their agents and kernels say.
 */
const common = { ...CONNECTION_FLAGS, ...OUTPUT_FLAGS };

/** A node's state by name: in the route table with a live lease, its lease run out, or withdrawn from the table. */
export type NodeState = 'Ready' | 'LeaseExpired' | 'Withdrawn';

export function nodeState(leaseSecondsLeft: number | null, inRouteTable: boolean): NodeState {
  if (!inRouteTable) return 'Withdrawn';
  return leaseSecondsLeft !== null && leaseSecondsLeft <= 0 ? 'LeaseExpired' : 'Ready';
}

const localCluster = (ctx: Context) =>
  existsSync(path.join(ctx.stateDir, 'state.json')) ? readState(ctx.stateDir) : null;

/** `--watch`: route-table changes as the WatchRoutes stream sends them, resumed from the last revision if it breaks. */
async function watchNodes(ctx: Context, since: number, held: Map<string, NodeRoutes>): Promise<number> {
  const signal = ctx.untilInterrupted();
  const routes = ctx.client(RoutesServiceService);
  type Event = { type: 'ADDED' | 'MODIFIED' | 'DELETED'; revision: number; node: NodeRoutes };
  const columns: Column<Event>[] = [
    { header: 'EVENT', value: (e) => e.type },
    { header: 'NAME', value: (e) => e.node.node },
    { header: 'UNDERLAY', value: (e) => e.node.underlayAddress },
    { header: 'BLOCKS', value: (e) => e.node.blockCidrs.length },
    { header: 'REVISION', value: (e) => e.revision },
    { header: 'VTEP MAC', value: (e) => e.node.vtepMac, wide: true },
    { header: 'BLOCK CIDRS', value: (e) => e.node.blockCidrs.join(','), wide: true },
  ];
  const shown = { headerShown: false };
  const emit = (e: Event) => ctx.out.event(e, columns, e, shown);
  const same = (a: NodeRoutes, b: NodeRoutes) =>
    a.underlayAddress === b.underlayAddress && a.vtepMac === b.vtepMac && a.blockCidrs.join() === b.blockCidrs.join();
  while (!signal.aborted) {
    const chunks = createRoutesChunkJoiner();
    try {
      for await (const chunk of routes.watchRoutes(
        { node: '', sinceRevision: since, acceptChunks: true },
        { signal },
      )) {
        const m = chunks.push(chunk);
        if (!m) continue;
        if (!m.bookmark) {
          const next = m.reset ? new Map<string, NodeRoutes>() : new Map(held);
          for (const u of m.upserts) next.set(u.node, u);
          for (const d of m.deletes) next.delete(d);
          for (const [name, n] of next) {
            const before = held.get(name);
            if (!before) emit({ type: 'ADDED', revision: m.revision, node: n });
            else if (!same(before, n)) emit({ type: 'MODIFIED', revision: m.revision, node: n });
          }
          for (const [name, n] of held) if (!next.has(name)) emit({ type: 'DELETED', revision: m.revision, node: n });
          held = next;
        }
        since = m.revision;
      }
    } catch (err) {
      if (signal.aborted) break;
      ctx.warn(
        `the route watch broke (${(err as { details?: string }).details || (err as Error).message}); resuming from revision ${since} in 1 s`,
      );
    }
    await sleep(1000, undefined, { signal }).catch(() => {});
  }
  return 0;
}

export const nodeCommands: CommandGroup = {
  name: 'nodes',
  summary: "nodes, their leases, and (local cluster) their agents' sync state",
  commands: [
    {
      path: ['nodes'],
      summary:
        "nodes, their state (Ready, LeaseExpired, Withdrawn), leases and (local cluster) their agents' sync state",
      flags: {
        watch: {
          type: 'boolean',
          short: 'w',
          description:
            'after the list, print each route-table change (ADDED, MODIFIED, DELETED) until Ctrl-C (the WatchRoutes stream)',
        },
        ...common,
      },
      async run(ctx) {
        const cluster = localCluster(ctx);
        const routes = ctx.client(RoutesServiceService);
        const snapshot = await routeTableSnapshot(routes);
        const nodes = await listAllNodes(routes);
        const rows = await Promise.all(
          nodes.map(async (n) => {
            const local = cluster?.nodes.find((c) => c.name === n.name);
            const agent = local ? await agentStatus(local.netns, AGENT_METRICS_PORT) : null;
            const leaseSecondsLeft = n.leaseExpireTime
              ? Math.round((n.leaseExpireTime.getTime() - Date.now()) / 1000)
              : null;
            const inRouteTable = snapshot.nodes.some((x) => x.node === n.name);
            return {
              name: n.name,
              state: nodeState(leaseSecondsLeft, inRouteTable),
              underlayAddress: n.underlayAddress,
              vtepMac: n.vtepMac,
              leaseSecondsLeft,
              inRouteTable,
              agent,
              registerTime: n.registerTime,
              local: !!local,
            };
          }),
        );
        type Row = (typeof rows)[number];
        const agentText = (r: Row) =>
          r.agent
            ? `${r.agent.synced ? 'synced' : 'NOT synced'} at revision ${r.agent.revision}${r.agent.revision >= snapshot.revision ? '' : ' (behind)'}`
            : r.local
              ? 'not answering'
              : '';
        ctx.out.table(
          rows,
          [
            { header: 'NAME', value: (r: Row) => r.name },
            { header: 'STATE', value: (r) => r.state },
            { header: 'UNDERLAY', value: (r) => r.underlayAddress },
            {
              header: 'LEASE',
              value: (r) =>
                r.leaseSecondsLeft === null ? '' : r.leaseSecondsLeft > 0 ? `${r.leaseSecondsLeft}s left` : 'expired',
            },
            { header: 'AGENT', value: agentText },
            { header: 'VTEP MAC', value: (r) => r.vtepMac, wide: true },
            { header: 'REGISTERED', value: (r) => iso(r.registerTime), wide: true },
          ],
          {
            value: { revision: snapshot.revision, nodes: rows.map(({ local: _local, registerTime: _t, ...r }) => r) },
            empty: 'no nodes',
            footer: `route table at revision ${snapshot.revision}`,
          },
        );
        if (!ctx.bool('watch')) return 0;
        return watchNodes(
          ctx,
          snapshot.revision,
          new Map(
            snapshot.nodes.map((n) => [
              n.node,
              { node: n.node, underlayAddress: n.underlayAddress, vtepMac: n.vtepMac, blockCidrs: n.blockCidrs },
            ]),
          ),
        );
      },
    },
  ],
};

export const routesCommands: CommandGroup = {
  name: 'routes',
  summary: "what a node's kernel should hold and, in the local cluster, whether it does",
  commands: [
    {
      path: ['routes'],
      args: [{ name: 'NODE' }],
      summary:
        "NODE's desired overlay entries (routes, neighbours, FDB) with each peer's mode; in the local cluster, MISSING and STALE ones",
      details: 'Exit status 1 when the kernel differs.',
      flags: common,
      async run(ctx) {
        const name = ctx.args[0]!;
        const cluster = localCluster(ctx);
        const snapshot = await routeTableSnapshot(ctx.client(RoutesServiceService));
        if (!snapshot.nodes.some((n) => n.node === name))
          throw new Error(`node ${name} is not in the route table (weft nodes lists the nodes)`);
        const local = cluster?.nodes.find((c) => c.name === name);
        // A local node's routing mode comes from its agent (auto, the default, when the agent does not answer).
        const routing = local
          ? await readNodeRouting(
              local.netns,
              (await agentStatus(local.netns, AGENT_METRICS_PORT))?.routingMode ?? 'auto',
            )
          : null;
        const report = compareNode(
          name,
          snapshot.revision,
          snapshot.nodes,
          local ? await readNodeKernel(local.netns) : null,
          routing,
        );
        const refused = report.peers.filter((p) => p.mode === 'refused' || p.ipv6 === 'refused');
        ctx.out.value(report, () =>
          [
            `${name} at route-table revision ${report.revision}: ${report.desired.length} entries` +
              (report.routing
                ? ` (routing mode ${report.routing.mode}, underlay ${report.routing.underlay.address}/${report.routing.underlay.prefixLength})`
                : ' (routing mode unknown: VXLAN assumed)'),
            ...refused.map((p) => `  REFUSED ${p.reason}`),
            ...report.desired.map(
              (e) =>
                `  ${report.missing?.some((m) => m.kind === e.kind && m.key === e.key) ? 'MISSING' : report.missing ? 'ok     ' : '       '} ${describeEntry(e)}`,
            ),
            ...(report.stale ?? []).map((e) => `  STALE   ${describeEntry(e)}`),
            report.missing === null
              ? '(not a local-cluster node: its kernel is not read from here)'
              : report.missing.length + (report.stale?.length ?? 0) === 0
                ? 'the kernel holds exactly this'
                : 'the kernel differs',
          ].join('\n'),
        );
        return report.missing && report.missing.length + (report.stale?.length ?? 0) > 0 ? 1 : 0;
      },
    },
  ],
};
