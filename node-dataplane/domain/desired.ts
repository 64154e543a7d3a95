import { formatAddress, formatCidr, formatIPv4, networkOf, parseCidr, parseIPv4 } from '../../lib/net/ip.js';

/**
 * Pure desired-state computation and planning for the overlay. Keys are stable so that the plan is a minimal
 * difference: an entry that is already right is never touched.
 *
 * Each remote node is reached in one of two ways, chosen per node by the routing mode:
 * - VXLAN: a permanent FDB entry (VTEP MAC -> underlay address), and per block a permanent neighbour entry and an
 *   onlink route through Weft's VXLAN device;
 * - direct: per block a route via the node's underlay address on the underlay device, and nothing else (the
 *   underlay's own ARP resolves the next hop). Only possible when the node sits on this node's underlay subnet.
 *
 * IPv6 blocks travel through VXLAN over the (IPv4) underlay: an IPv6 permanent neighbour entry for the block's first
 * address and an onlink IPv6 route, sharing the node's FDB entry. A direct route would need an IPv6 underlay address
 * as its gateway, so a node reached directly still gets its IPv6 blocks through VXLAN in `auto`, and they are refused
 * in `direct`.
 */
export interface RemoteNode {
  node: string;
  underlayAddress: string;
  vtepMac: string;
  blockCidrs: string[];
}

export interface NeighbourEntry {
  kind: 'neighbour';
  key: string;
  ip: string;
  mac: string;
}
export interface FdbEntry {
  kind: 'fdb';
  key: string;
  mac: string;
  dst: string;
}
/** How a route leaves: through Weft's VXLAN device (onlink, via the block's first address) or directly on the underlay device (via the node's underlay address). */
export type RouteMode = 'vxlan' | 'direct';
export interface RouteEntry {
  kind: 'route';
  key: string;
  cidr: string;
  gateway: string;
  mode: RouteMode;
}
export type KernelEntry = NeighbourEntry | FdbEntry | RouteEntry;

export interface KernelState {
  neighbours: Map<string, NeighbourEntry>;
  fdb: Map<string, FdbEntry>;
  routes: Map<string, RouteEntry>;
}

export const emptyState = (): KernelState => ({ neighbours: new Map(), fdb: new Map(), routes: new Map() });

/** The next hop of a block's route: the block's first address, resolved by a permanent neighbour entry to the VTEP MAC. */
export function gatewayOf(blockCidr: string): string {
  const c = parseCidr(blockCidr, 'block');
  return formatAddress(c.family, c.base);
}

/** A block's CIDR in the form the kernel's read-back prints it (IPv6 compressed, lower case). */
export const canonicalCidr = (cidr: string) => formatCidr(parseCidr(cidr, 'block'));
const isV6 = (cidr: string) => cidr.includes(':');

/**
 * The agent's routing mode (WEFT_ROUTING_MODE): `vxlan` reaches every node through the VXLAN device; `direct` routes
 * every node via its underlay address and refuses a node outside this node's underlay subnet (it could not be
 * reached: a route via an off-link gateway would be broken); `auto` routes nodes on the subnet directly and the rest
 * through VXLAN.
 */
export const ROUTING_MODES = ['vxlan', 'direct', 'auto'] as const;
export type RoutingMode = (typeof ROUTING_MODES)[number];

/** This node's underlay: its address and the prefix length of its subnet on the underlay device. */
export interface Underlay {
  address: string;
  prefixLength: number;
}
export interface Routing {
  mode: RoutingMode;
  underlay: Underlay;
}

/** How the desired state reaches one remote node (refused: `direct` mode, and the node is off this node's subnet). */
export interface PeerChoice {
  node: string;
  underlayAddress: string;
  mode: RouteMode | 'refused';
  reason?: string;
  /** How the node's IPv6 blocks are reached, when it has any: through VXLAN, or refused (`direct` mode). */
  ipv6?: 'vxlan' | 'refused';
}

export interface DesiredState extends KernelState {
  /** One per remote node with blocks, sorted by name. */
  peers: PeerChoice[];
}

/** True when `address` lies inside the underlay subnet (same network under the underlay's prefix length). */
export function onUnderlaySubnet(underlay: Underlay, address: string): boolean {
  return (
    networkOf(parseIPv4(address), underlay.prefixLength) ===
    networkOf(parseIPv4(underlay.address), underlay.prefixLength)
  );
}

/** True when the IPv4 CIDR and the underlay subnet share an address. */
export function overlapsUnderlay(underlay: Underlay, cidr: string): boolean {
  const c = parseCidr(cidr);
  if (c.family !== 4) return false;
  const shorter = Math.min(c.prefixLength, underlay.prefixLength);
  return networkOf(Number(c.base), shorter) === networkOf(parseIPv4(underlay.address), shorter);
}

/** Decides, purely, how one remote node is reached. */
export function choosePeerMode(routing: Routing, n: Pick<RemoteNode, 'node' | 'underlayAddress'>): PeerChoice {
  const base = { node: n.node, underlayAddress: n.underlayAddress };
  if (routing.mode === 'vxlan') return { ...base, mode: 'vxlan' };
  const subnet = `${formatIPv4(networkOf(parseIPv4(routing.underlay.address), routing.underlay.prefixLength))}/${routing.underlay.prefixLength}`;
  if (onUnderlaySubnet(routing.underlay, n.underlayAddress)) return { ...base, mode: 'direct' };
  if (routing.mode === 'auto') return { ...base, mode: 'vxlan' };
  return {
    ...base,
    mode: 'refused',
    reason: `direct routing mode: ${n.node}'s underlay address ${n.underlayAddress} is outside this node's underlay subnet ${subnet}; set WEFT_ROUTING_MODE=auto to reach it through VXLAN`,
  };
}

/** Today's behaviour and the default for callers that know no underlay: every node through VXLAN. */
export const VXLAN_ONLY: Routing = { mode: 'vxlan', underlay: { address: '0.0.0.0', prefixLength: 32 } };

export function computeDesired(self: string, nodes: Iterable<RemoteNode>, routing: Routing = VXLAN_ONLY): DesiredState {
  const s: DesiredState = { ...emptyState(), peers: [] };
  for (const n of nodes) {
    if (n.node === self || n.blockCidrs.length === 0) continue;
    const blocks = n.blockCidrs.map(canonicalCidr);
    const v4 = blocks.filter((c) => !isV6(c));
    const v6 = blocks.filter(isV6);
    const choice = choosePeerMode(routing, n);
    // A block over this node's underlay subnet would take the underlay's own traffic (VXLAN's included) into the
    // overlay, or replace the subnet's link route: such a node is refused whole, never routed.
    const overUnderlay =
      routing.underlay.address === '0.0.0.0' ? [] : v4.filter((c) => overlapsUnderlay(routing.underlay, c));
    if (overUnderlay.length > 0) {
      s.peers.push({
        ...choice,
        mode: 'refused',
        reason: `${n.node}'s blocks ${overUnderlay.join(', ')} overlap this node's underlay subnet ${formatIPv4(networkOf(parseIPv4(routing.underlay.address), routing.underlay.prefixLength))}/${routing.underlay.prefixLength}: no route to them is written`,
      });
      continue;
    }
    if (v6.length > 0) {
      choice.ipv6 = routing.mode === 'direct' ? 'refused' : 'vxlan';
      if (choice.ipv6 === 'refused') {
        choice.reason = [
          choice.reason,
          `direct routing mode: ${n.node}'s IPv6 blocks (${v6.join(', ')}) need VXLAN over the IPv4 underlay; set WEFT_ROUTING_MODE=auto`,
        ]
          .filter(Boolean)
          .join('; ');
      }
    }
    s.peers.push(choice);
    const vxlan: string[] = [];
    if (choice.mode === 'direct') {
      for (const cidr of v4)
        s.routes.set(cidr, { kind: 'route', key: cidr, cidr, gateway: n.underlayAddress, mode: 'direct' });
    } else if (choice.mode === 'vxlan') {
      vxlan.push(...v4);
    }
    if (choice.ipv6 === 'vxlan') vxlan.push(...v6);
    if (vxlan.length === 0) continue;
    const mac = n.vtepMac.toLowerCase();
    s.fdb.set(mac, { kind: 'fdb', key: mac, mac, dst: n.underlayAddress });
    for (const cidr of vxlan) {
      const gw = gatewayOf(cidr);
      s.neighbours.set(gw, { kind: 'neighbour', key: gw, ip: gw, mac });
      s.routes.set(cidr, { kind: 'route', key: cidr, cidr, gateway: gw, mode: 'vxlan' });
    }
  }
  s.peers.sort((a, b) => a.node.localeCompare(b.node));
  return s;
}

/** Field by field, whatever order the fields were written in. */
function same(a: KernelEntry, b: KernelEntry): boolean {
  return JSON.stringify(a, Object.keys(a).sort()) === JSON.stringify(b, Object.keys(b).sort());
}

/**
 * How a kernel differs from the desired state, entry by entry (no order: the agent's drivers apply in the one
 * dependency order of drivers/registry.ts): `missing` are desired entries the kernel lacks or holds otherwise, `stale`
 * entries it holds that nobody wants. An entry that is right is in neither. `weft routes NODE` shows these.
 */
export function compareState(
  desired: KernelState,
  actual: KernelState,
): { missing: KernelEntry[]; stale: KernelEntry[] } {
  const missing: KernelEntry[] = [];
  const stale: KernelEntry[] = [];
  for (const kind of ['neighbours', 'fdb', 'routes'] as const) {
    const want = desired[kind] as Map<string, KernelEntry>;
    const held = actual[kind] as Map<string, KernelEntry>;
    for (const [k, d] of want) {
      const a = held.get(k);
      if (!a || !same(a, d)) missing.push(d);
    }
    for (const [k, a] of held) if (!want.has(k)) stale.push(a);
  }
  return { missing, stale };
}
