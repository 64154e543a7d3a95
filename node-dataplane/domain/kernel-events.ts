/**
 * Kernel change notifications, reduced to what decides whether the overlay needs a reconcile pass. Pure: the
 * netlink subscription (sources/kernel-watch.ts) turns messages into these events, and this module only answers
 * "does this concern Weft's overlay?". Whether the change was an addition, a replacement or a removal does not
 * matter: the pass reads the kernel back and plans the difference.
 */
export type KernelEvent =
  | { kind: 'route'; cidr: string; protocol: number; table: number; oif: number | null }
  | { kind: 'neighbour'; family: 'inet' | 'inet6' | 'bridge'; ifindex: number; permanent?: boolean }
  | { kind: 'link'; ifindex: number; ifname: string }
  /** An IPv4 address added to or removed from an interface: the underlay may have moved. */
  | { kind: 'address'; ifindex: number };

/** What the reconciler knows right now about Weft's overlay. */
export interface OverlayView {
  deviceName: string;
  /** The VXLAN device's index as last ensured; null before the first pass. */
  ifindex: number | null;
  /** The underlay device's index: direct routes (Weft's protocol) leave through it. */
  underlayIfindex: number | null;
  routeProtocol: number;
  /** Route destinations (CIDRs) of the current desired state. */
  routeCidrs: ReadonlySet<string>;
}

export const MAIN_TABLE = 254;

/**
 * True when the event touches Weft's overlay: Weft's VXLAN device itself (by name or index), an IPv4 neighbour or
 * FDB entry on it, or a main-table route that carries Weft's protocol through that device or the underlay device
 * (direct routes), or whose destination Weft wants (so that a route replaced by someone else's is noticed too).
 * ARP on the underlay device is the underlay's own business and does not count. Pod host routes (Weft's protocol, a pod veth)
 * and IPv6 neighbour discovery on the device (entries that are not permanent) do not concern the overlay; Weft's
 * permanent IPv6 neighbour entries (IPv6 blocks' next hops) do.
 */
export function concernsOverlay(e: KernelEvent, view: OverlayView): boolean {
  switch (e.kind) {
    case 'link':
      return e.ifname === view.deviceName || (view.ifindex !== null && e.ifindex === view.ifindex);
    case 'neighbour':
      return view.ifindex !== null && e.ifindex === view.ifindex && (e.family !== 'inet6' || e.permanent === true);
    case 'address':
      return false;
    case 'route':
      if (e.table !== MAIN_TABLE) return false;
      if (view.routeCidrs.has(e.cidr)) return true;
      return e.protocol === view.routeProtocol && e.oif !== null && (e.oif === view.ifindex || e.oif === view.underlayIfindex);
  }
}
