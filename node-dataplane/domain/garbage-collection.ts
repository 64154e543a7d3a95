/**
 * GC, as pure code: given the attachments the runtime still holds, which of this node's pod addresses to release
 * and which host-side pod interfaces to remove. The rules keep GC from ever touching a live pod:
 *
 * - An allocation is Weft's to collect only when the CNI endpoint made it: its handle is exactly
 *   "<containerId>/<ifname>" of its own container id. Allocations that other systems made through the IPAM API
 *   (any other handle shape) are never released.
 * - A handle that is valid, or whose Attach is running in this agent right now, is kept.
 * - A host interface is Weft's pod interface only by its name ("weft" + 11 hex digits, see hostIfnameFor); it is
 *   kept when it belongs to a valid or in-flight attachment. Other devices (weft.vxlan, anything not ours) are
 *   never candidates.
 */
export interface NodeAllocation {
  handle: string;
  containerId: string;
  address: string;
}

export interface GarbageCollectionInput {
  /** Handles ("<containerId>/<ifname>") of the attachments the runtime still holds. */
  validHandles: ReadonlySet<string>;
  /** Host interface names of those attachments. */
  validHostIfnames: ReadonlySet<string>;
  /** Handles and host interface names of Attach calls running now (the runtime should not GC during ADD; if it does, they are safe). */
  inFlightHandles: ReadonlySet<string>;
  inFlightHostIfnames: ReadonlySet<string>;
  /** This node's live allocations, from IPAM. */
  allocations: readonly NodeAllocation[];
  /** Names of the node's veth devices. */
  hostLinks: readonly string[];
}

export interface GarbageCollectionPlan {
  /** Removed first, so that no route leads to a released address. */
  removeLinks: string[];
  release: NodeAllocation[];
}

const POD_HOST_IFNAME = /^weft[0-9a-f]{11}$/;
const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/** True when the handle has the shape the CNI endpoint gives it: "<containerId>/<ifname>" of its own container id. */
export function isPodHandle(a: Pick<NodeAllocation, 'handle' | 'containerId'>): boolean {
  if (!CONTAINER_ID.test(a.containerId) || !a.handle.startsWith(`${a.containerId}/`)) return false;
  const ifname = a.handle.slice(a.containerId.length + 1);
  return ifname.length > 0 && ifname.length <= 15 && !/[/:\s]/.test(ifname) && ifname !== '.' && ifname !== '..';
}

export function planGarbageCollection(input: GarbageCollectionInput): GarbageCollectionPlan {
  const removeLinks = input.hostLinks
    .filter((name) => POD_HOST_IFNAME.test(name) && !input.validHostIfnames.has(name) && !input.inFlightHostIfnames.has(name))
    .sort();
  const release = input.allocations
    .filter((a) => isPodHandle(a) && !input.validHandles.has(a.handle) && !input.inFlightHandles.has(a.handle))
    .sort((x, y) => (x.handle < y.handle ? -1 : x.handle > y.handle ? 1 : 0));
  return { removeLinks, release };
}
