import { run } from '../lib/exec.js';
import type { PromiseClient } from '../lib/grpc/client.js';
import type { Node, RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import { createRoutesChunkJoiner } from '../node-dataplane/sources/chunks.js';
import {
  compareState,
  computeDesired,
  emptyState,
  VXLAN_ONLY,
  type KernelEntry,
  type KernelState,
  type PeerChoice,
  type RemoteNode,
  type Routing,
  type RoutingMode,
} from '../node-dataplane/domain/desired.js';

/**
 * `weft nodes` and `weft routes NODE`: what each node should have (from the routes service) and, for nodes of the
 * local cluster, whether its kernel has it (read with iproute2 inside the node's namespace) and what its agent says.
 */
/** Every registered node, a page of 1,000 at a time (a page is about 100 KB). */
export async function listAllNodes(
  routes: PromiseClient<typeof RoutesServiceService>,
  timeoutMs = 10_000,
): Promise<Node[]> {
  const out: Node[] = [];
  let pageToken = '';
  do {
    const page = await routes.listNodes({ pageSize: 1000, pageToken }, { timeoutMs });
    out.push(...page.nodes);
    pageToken = page.nextPageToken;
  } while (pageToken);
  return out;
}

export async function routeTableSnapshot(
  routes: PromiseClient<typeof RoutesServiceService>,
): Promise<{ revision: number; nodes: RemoteNode[] }> {
  const ac = new AbortController();
  try {
    const chunks = createRoutesChunkJoiner();
    for await (const chunk of routes.watchRoutes(
      { node: '', acceptChunks: true },
      { signal: ac.signal, timeoutMs: 15_000 },
    )) {
      const m = chunks.push(chunk);
      if (!m?.reset) continue;
      return {
        revision: m.revision,
        nodes: m.upserts.map((u) => ({
          node: u.node,
          underlayAddress: u.underlayAddress,
          vtepMac: u.vtepMac,
          blockCidrs: u.blockCidrs,
        })),
      };
    }
    throw new Error('the route watch ended before its snapshot');
  } finally {
    ac.abort();
  }
}

const jsonOf = async (file: string, args: string[]) =>
  JSON.parse((await run(file, args)) || '[]') as Record<string, unknown>[];

/** Weft's overlay entries in a node namespace's kernel, read back the way the agent owns them (direct routes on the underlay device). */
export async function readNodeKernel(
  netns: string,
  device = 'weft.vxlan',
  routeProtocol = 87,
  underlayDevice = 'eth0',
): Promise<KernelState> {
  const s = emptyState();
  const json = jsonOf;
  for (const [dev, mode] of [
    [device, 'vxlan'],
    [underlayDevice, 'direct'],
  ] as const) {
    for (const family of ['-4', '-6']) {
      for (const r of await json('ip', [
        '-n',
        netns,
        family,
        '-j',
        'route',
        'show',
        'table',
        'main',
        'proto',
        String(routeProtocol),
        'dev',
        dev,
      ])) {
        const cidr = String(r.dst).includes('/') ? String(r.dst) : `${r.dst}/${family === '-4' ? 32 : 128}`;
        s.routes.set(cidr, { kind: 'route', key: cidr, cidr, gateway: String(r.gateway ?? ''), mode });
      }
    }
  }
  for (const n of await json('ip', ['-n', netns, '-j', 'neigh', 'show', 'dev', device])) {
    if (!(n.state as string[] | undefined)?.includes('PERMANENT') || !n.lladdr) continue;
    s.neighbours.set(String(n.dst), {
      kind: 'neighbour',
      key: String(n.dst),
      ip: String(n.dst),
      mac: String(n.lladdr),
    });
  }
  for (const f of await json('bridge', ['-n', netns, '-j', 'fdb', 'show', 'dev', device])) {
    if (!f.dst || f.mac === '00:00:00:00:00:00') continue;
    s.fdb.set(String(f.mac), { kind: 'fdb', key: String(f.mac), mac: String(f.mac), dst: String(f.dst) });
  }
  return s;
}

/** A local-cluster node's routing: the agent's mode (from its metrics) and the underlay address and prefix of its underlay device. */
export async function readNodeRouting(netns: string, mode: RoutingMode, underlayDevice = 'eth0'): Promise<Routing> {
  const [link] = await jsonOf('ip', ['-n', netns, '-j', '-4', 'addr', 'show', 'dev', underlayDevice]);
  const a = (link?.addr_info as { local: string; prefixlen: number; scope: string }[] | undefined)?.find(
    (x) => x.scope === 'global',
  );
  if (!a) throw new Error(`${underlayDevice} in ${netns} has no IPv4 address`);
  return { mode, underlay: { address: a.local, prefixLength: a.prefixlen } };
}

export interface NodeRoutesReport {
  node: string;
  revision: number;
  /** The routing the desired state was computed with (null: unknown, not a local-cluster node; VXLAN assumed). */
  routing: Routing | null;
  /** How each remote node is reached: vxlan, direct, or refused (direct mode, off the subnet). */
  peers: PeerChoice[];
  desired: KernelEntry[];
  /** Null when the node's kernel cannot be read from here (not a local-cluster node). */
  missing: KernelEntry[] | null;
  stale: KernelEntry[] | null;
}

export function compareNode(
  node: string,
  revision: number,
  nodes: RemoteNode[],
  actual: KernelState | null,
  routing: Routing | null = null,
): NodeRoutesReport {
  const desired = computeDesired(node, nodes, routing ?? VXLAN_ONLY);
  const list = [...desired.neighbours.values(), ...desired.fdb.values(), ...desired.routes.values()];
  const base = { node, revision, routing, peers: desired.peers, desired: list };
  if (!actual) return { ...base, missing: null, stale: null };
  return { ...base, ...compareState(desired, actual) };
}

/** One entry as a line, led by its mode: neighbour and FDB entries exist only for VXLAN. */
export const describeEntry = (e: KernelEntry) =>
  e.kind === 'route'
    ? `${e.mode.padEnd(6)} route ${e.cidr} via ${e.gateway}${e.mode === 'vxlan' ? ' onlink' : ''}`
    : e.kind === 'neighbour'
      ? `vxlan  neighbour ${e.ip} lladdr ${e.mac}`
      : `vxlan  fdb ${e.mac} dst ${e.dst}`;

/** The agent's own view from its metrics endpoint inside the node namespace. */
export async function agentStatus(
  netns: string,
  port: number,
): Promise<{ synced: boolean; revision: number; routingMode: RoutingMode | null } | null> {
  try {
    const text = await run(
      'ip',
      [
        'netns',
        'exec',
        netns,
        process.execPath,
        '-e',
        `fetch('http://127.0.0.1:${port}/metrics').then(r => r.text()).then(t => process.stdout.write(t), () => process.exit(1))`,
      ],
      { timeoutMs: 5000 },
    );
    const value = (name: string) => Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
    const mode = /^weft_agent_routing_mode\{mode="(\w+)"\} 1$/m.exec(text)?.[1] as RoutingMode | undefined;
    return {
      synced: value('weft_agent_synced') === 1,
      revision: value('weft_agent_revision_applied'),
      routingMode: mode ?? null,
    };
  } catch {
    return null;
  }
}
