import { canonicalCidr } from './desired.js';
import { isPodHandle, POD_HOST_IFNAME, type NodeAllocation } from './garbage-collection.js';

export { POD_HOST_IFNAME };

/**
 * The host side of the node's pod attachments, as pure code: which pod veths (host ends) the node should have, with
 * which settings, and the host route to each pod address. The runtime's ADD makes a veth (kernel/pod-network.ts);
 * these managers say what of it the agent keeps true afterwards (drivers/pod-links.ts, drivers/pod-routes.ts).
 */

/** One attachment of this node: its host veth (hostIfnameFor) and the pod's addresses (IPv4, and IPv6 when dual-stack). */
export interface HostAttachment {
  hostIfname: string;
  addresses: readonly string[];
}

/**
 * The host end of a pod's veth: proxy ARP on (it answers for the pod's gateway 169.254.1.1) with no delay, and for a
 * dual-stack pod the IPv6 gateway fe80::1/64. `ifindex` is what the kernel gave the device (read back; not compared):
 * a stale veth is removed only while its name still denotes that device.
 */
export interface PodLinkEntry {
  name: string;
  proxyArp: boolean;
  proxyDelay: number;
  gateway6: boolean;
  ifindex?: number;
}

/** `<pod address>/32 dev <host veth> scope link proto <Weft's>` (`/128` for IPv6), keyed by CIDR. */
export interface PodRouteEntry {
  cidr: string;
  dev: string;
  /** The device's index when read back (not compared). */
  ifindex?: number;
}

export const podHostCidr = (address: string) => canonicalCidr(`${address}/${address.includes(':') ? 128 : 32}`);

export function desiredPodLinks(attachments: ReadonlyMap<string, HostAttachment>): Map<string, PodLinkEntry> {
  const out = new Map<string, PodLinkEntry>();
  for (const a of attachments.values())
    out.set(a.hostIfname, {
      name: a.hostIfname,
      proxyArp: true,
      proxyDelay: 0,
      gateway6: a.addresses.some((x) => x.includes(':')),
    });
  return out;
}

export function desiredPodRoutes(attachments: ReadonlyMap<string, HostAttachment>): Map<string, PodRouteEntry> {
  const out = new Map<string, PodRouteEntry>();
  for (const a of attachments.values())
    for (const address of a.addresses) {
      let cidr: string;
      try {
        cidr = podHostCidr(address);
      } catch {
        continue; // not an address (IPAM's answers are checked; this keeps one bad row from stopping the rest)
      }
      out.set(cidr, { cidr, dev: a.hostIfname });
    }
  return out;
}

/**
 * The attachments behind IPAM's allocations of this node: those the CNI endpoint made (handle
 * `<containerId>/<ifname>`, isPodHandle), one per handle with all its addresses. Others (made through the IPAM API
 * by other systems) are not attachments.
 */
export function attachmentsOf(
  allocations: readonly NodeAllocation[],
  hostIfnameOf: (containerId: string, ifname: string) => string,
): Map<string, HostAttachment> {
  const out = new Map<string, { hostIfname: string; addresses: string[] }>();
  for (const a of allocations) {
    if (!isPodHandle(a)) continue;
    const hostIfname = hostIfnameOf(a.containerId, a.handle.slice(a.containerId.length + 1));
    const entry = out.get(hostIfname) ?? { hostIfname, addresses: [] };
    entry.addresses.push(a.address);
    out.set(hostIfname, entry);
  }
  return out;
}
