import { isOfNetwork, type AttachmentRecord } from './attachment-record.js';

/**
 * GC, as pure code: given the network GC names and the attachments the runtime still holds in it, which of this
 * node's pod addresses to release and which host-side pod interfaces to remove. The rules keep GC from ever touching
 * a live pod, or another network's:
 *
 * - An allocation is Weft's to collect only when the CNI endpoint made it: its handle is exactly
 *   "<containerId>/<ifname>" of its own container id. Allocations that other systems made through the IPAM API
 *   (any other handle shape) are never released.
 * - A handle that is valid, or whose Attach is running in this agent right now, is kept.
 * - A host interface is Weft's pod interface only by its name ("weft" + 11 hex digits, see hostIfnameFor); it is
 *   kept when it belongs to a valid or in-flight attachment. Other devices (weft.vxlan, anything not ours) are
 *   never candidates.
 * - Only the named network's attachments are collected: a live attachment (its host veth exists) is collected only
 *   when its veth records that network (domain/attachment-record.ts). One whose veth records no network (made before
 *   attachments recorded it) is never collected by GC: its DEL releases it. An allocation whose host veth is gone
 *   has no interface left that uses its address, so it is collected whatever its network (a crashed ADD's, or one
 *   left by a node that restarted). A veth with no record and no allocation behind it holds no address: collected.
 */
export interface NodeAllocation {
  handle: string;
  containerId: string;
  address: string;
}

/** One of the node's veths, with the attachment record on it (null: none). */
export interface HostLink {
  name: string;
  record: AttachmentRecord | null;
}

export interface GarbageCollectionInput {
  /** The network config's name of the GC ("" when the plugin sent none: no live attachment matches it). */
  network: string;
  /** Handles ("<containerId>/<ifname>") of the attachments the runtime still holds. */
  validHandles: ReadonlySet<string>;
  /** Host interface names of those attachments. */
  validHostIfnames: ReadonlySet<string>;
  /** Handles and host interface names of Attach calls running now (the runtime should not GC during ADD; if it does, they are safe). */
  inFlightHandles: ReadonlySet<string>;
  inFlightHostIfnames: ReadonlySet<string>;
  /** This node's live allocations, from IPAM. */
  allocations: readonly NodeAllocation[];
  /**
   * False when IPAM could not be asked: an empty `allocations` then says nothing, and a veth without a record (made
   * before attachments recorded their network, perhaps another network's live pod) is not removed.
   */
  allocationsKnown?: boolean;
  /** The node's veth devices. */
  hostLinks: readonly HostLink[];
  /** The host interface name of a pod handle's attachment (hostIfnameFor). */
  hostIfnameOf: (handle: string) => string;
}

export interface GarbageCollectionPlan {
  /** Removed first, so that no route leads to a released address. */
  removeLinks: string[];
  release: NodeAllocation[];
}

/** Weft's host veth names (hostIfnameFor, `weft` + 11 hex digits): nothing else is a pod interface. */
export const POD_HOST_IFNAME = /^weft[0-9a-f]{11}$/;
const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/** True when the handle has the shape the CNI endpoint gives it: "<containerId>/<ifname>" of its own container id. */
export function isPodHandle(a: Pick<NodeAllocation, 'handle' | 'containerId'>): boolean {
  if (!CONTAINER_ID.test(a.containerId) || !a.handle.startsWith(`${a.containerId}/`)) return false;
  const ifname = a.handle.slice(a.containerId.length + 1);
  return ifname.length > 0 && ifname.length <= 15 && !/[/:\s]/.test(ifname) && ifname !== '.' && ifname !== '..';
}

export function planGarbageCollection(input: GarbageCollectionInput): GarbageCollectionPlan {
  const links = new Map(input.hostLinks.filter((l) => POD_HOST_IFNAME.test(l.name)).map((l) => [l.name, l]));
  const candidates = input.allocations.filter(
    (a) => isPodHandle(a) && !input.validHandles.has(a.handle) && !input.inFlightHandles.has(a.handle),
  );
  /** Host interfaces of every live pod allocation: a veth without a record but with an address is a live attachment. */
  const allocated = new Set(input.allocations.filter(isPodHandle).map((a) => input.hostIfnameOf(a.handle)));
  const ofNetwork = (l: HostLink) =>
    l.record ? isOfNetwork(l.record, input.network) : input.allocationsKnown !== false && !allocated.has(l.name);
  const removeLinks = [...links.values()]
    .filter((l) => !input.validHostIfnames.has(l.name) && !input.inFlightHostIfnames.has(l.name) && ofNetwork(l))
    .map((l) => l.name)
    .sort();
  const release = candidates
    .filter((a) => {
      const link = links.get(input.hostIfnameOf(a.handle));
      return !link || (link.record !== null && isOfNetwork(link.record, input.network));
    })
    .sort((x, y) => (x.handle < y.handle ? -1 : x.handle > y.handle ? 1 : 0));
  return { removeLinks, release };
}
