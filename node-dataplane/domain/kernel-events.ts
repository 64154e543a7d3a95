/**
 * Kernel change notifications, reduced to what decides whether the overlay needs a reconcile pass. Pure: the
 * netlink subscription (sources/kernel-watch.ts) turns messages into these events, and this module only answers
 * "does this concern Weft's overlay?" and "is it only the echo of what the agent itself wrote?". A notification that
 * concerns the overlay and disagrees with the agent's target causes a pass, which reads the kernel back and plans the
 * difference.
 */
import { RT_TABLE_MAIN } from '../../lib/net/netlink-constants.js';
import type { KernelState } from './desired.js';

export type KernelEvent =
  | {
      kind: 'route';
      cidr: string;
      protocol: number;
      table: number;
      oif: number | null;
      op?: EventOp;
      gateway?: string | null;
    }
  /** `ip`: the neighbour's address (inet, inet6) or the FDB entry's destination (bridge); `mac`: its link-layer address. */
  | {
      kind: 'neighbour';
      family: 'inet' | 'inet6' | 'bridge';
      ifindex: number;
      permanent?: boolean;
      op?: EventOp;
      ip?: string | null;
      mac?: string | null;
    }
  | { kind: 'link'; ifindex: number; ifname: string }
  /** An IPv4 address added to or removed from an interface: the underlay may have moved. */
  | { kind: 'address'; ifindex: number };

/** Whether the notification announced an entry (new or replaced) or its removal; unknown events are treated as drift. */
export type EventOp = 'new' | 'del';

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
  /**
   * The desired state of the last pass (the drivers' tables), or null when unknown (before the first
   * pass, after the underlay moved). Notifications that agree with it are the agent's own writes coming back.
   */
  target?: KernelState | null;
}

/**
 * True when a notification agrees with the state the agent is bringing the kernel to: an entry announced exactly as
 * the target has it (route: same destination, Weft's protocol, gateway and device; neighbour: same address and MAC,
 * permanent, on the VXLAN device; FDB: same MAC and destination), or the removal of an entry the target does not
 * hold. Such a notification is the echo of the agent's own write (or a change that leaves nothing to do), so it needs
 * no pass. Anything else (a wanted entry removed or changed, an unwanted one added, an event without its details)
 * disagrees and is drift: the pass reads the kernel back and repairs it. Only events that concern the overlay are
 * asked; link events never agree (the device is ensured by a complete pass).
 */
export function agreesWithTarget(e: KernelEvent, view: OverlayView): boolean {
  const target = view.target;
  if (!target) return false;
  switch (e.kind) {
    case 'route': {
      if (e.op === undefined || e.table !== RT_TABLE_MAIN) return false;
      const want = target.routes.get(e.cidr);
      if (e.op === 'del') return want === undefined;
      if (!want || e.protocol !== view.routeProtocol || e.gateway !== want.gateway) return false;
      return e.oif !== null && e.oif === (want.mode === 'vxlan' ? view.ifindex : view.underlayIfindex);
    }
    case 'neighbour': {
      if (e.op === undefined || view.ifindex === null || e.ifindex !== view.ifindex || !e.ip) return false;
      if (e.family === 'bridge') {
        if (!e.mac) return false;
        const want = target.fdb.get(e.mac);
        return e.op === 'del' ? want === undefined : want !== undefined && want.dst === e.ip;
      }
      const want = target.neighbours.get(e.ip);
      return e.op === 'del' ? want === undefined : want !== undefined && e.permanent === true && want.mac === e.mac;
    }
    default:
      return false;
  }
}

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
      // IPv6 neighbour discovery on the device is not Weft's; a permanent entry, or any event about an address Weft
      // wants there (deleting a neighbour announces it FAILED, then removes it: neither is permanent), is.
      return (
        view.ifindex !== null &&
        e.ifindex === view.ifindex &&
        (e.family !== 'inet6' || e.permanent === true || (!!e.ip && view.target?.neighbours.has(e.ip) === true))
      );
    case 'address':
      return false;
    case 'route':
      if (e.table !== RT_TABLE_MAIN) return false;
      if (view.routeCidrs.has(e.cidr)) return true;
      return (
        e.protocol === view.routeProtocol &&
        e.oif !== null &&
        (e.oif === view.ifindex || e.oif === view.underlayIfindex)
      );
  }
}
