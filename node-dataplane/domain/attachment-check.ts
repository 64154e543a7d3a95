import type { AttachmentRecord } from './attachment-record.js';

/**
 * CHECK, as pure code: what ADD makes for one attachment (see kernel/pod-network.ts) compared with what the agent
 * reads back from the kernel and IPAM. The first difference is returned as a sentence that says what differs, in
 * the order a person would look: the address record, the pod's interface and routes, then the host side.
 *
 * Only what ADD made is required; anything more (another address, a route a later chained plugin added) is allowed,
 * as the CNI spec asks of CHECK.
 */
export interface ExpectedAttachment {
  /** "<containerID>/<ifname>". */
  handle: string;
  node: string;
  netns: string;
  ifname: string;
  hostIfname: string;
  /** The pod's link-local gateway, answered by proxy ARP on the host end. */
  gateway: string;
  /** A dual-stack pod's IPv6 gateway: a link-local address on the host end. */
  gateway6: string;
  /** Route protocol that marks Weft's routes. */
  routeProtocol: number;
  /** From the runtime's prevResult, when it sent one: the addresses (CIDR) ADD reported for the pod interface. */
  reportedAddresses: readonly string[];
  /** From the runtime's prevResult: the pod interface's MAC; empty when not reported. */
  reportedMac: string;
}

export interface ObservedLink {
  ifindex: number;
  /** "veth" for Weft's pairs. */
  kind: string;
  /** Administratively up. */
  up: boolean;
  mac: string;
  /** The ifindex of the veth's other end, as the kernel reports it (in the other end's namespace). */
  peerIfindex: number | null;
  /** Its addresses in CIDR notation. */
  addresses: readonly string[];
}

export interface ObservedRoute {
  /** "default", or a prefix; iproute2 writes a host route without "/32". */
  dst: string;
  gateway: string;
  dev: string;
  scope: string;
  protocol: string;
}

export interface ObservedAttachment {
  /**
   * The record on the host end (domain/attachment-record.ts); null: none (made before records, or the veth is gone).
   * A container's second interface has its routes in its own table: podRoutes and podRoutes6 are then read from it.
   */
  hostRecord?: AttachmentRecord | null;
  /** The live allocation IPAM holds for the handle on this node (its IPv4 address, and its IPv6 one when dual-stack), or null. */
  allocation: { address: string; address6?: string } | null;
  netnsExists: boolean;
  /** The interface named ifname in the pod's namespace, or null. */
  podLink: ObservedLink | null;
  /** The pod namespace's main-table IPv4 routes through ifname. */
  podRoutes: readonly ObservedRoute[];
  /** Its IPv6 routes through ifname (iproute2 writes the IPv6 default route as "default" too). */
  podRoutes6?: readonly ObservedRoute[];
  hostLink: ObservedLink | null;
  /** net.ipv4.conf.<host end>.proxy_arp; null when unreadable. */
  hostProxyArp: boolean | null;
  /** The node's main-table IPv4 routes through the host end. */
  hostRoutes: readonly ObservedRoute[];
  /** Its IPv6 routes through the host end. */
  hostRoutes6?: readonly ObservedRoute[];
}

/** The first way the observed attachment differs from what ADD made, or null when it is all there. */
export function findAttachmentDifference(want: ExpectedAttachment, seen: ObservedAttachment): string | null {
  if (!seen.allocation) return `IPAM holds no address for handle ${want.handle} on node ${want.node}`;
  const address = seen.allocation.address;
  const cidr = `${address}/32`;
  const cidr6 = seen.allocation.address6 ? `${seen.allocation.address6}/128` : null;

  for (const c of cidr6 ? [cidr, cidr6] : [cidr]) {
    if (want.reportedAddresses.length > 0 && !want.reportedAddresses.some((a) => sameCidr(a, c))) {
      return `the runtime's prevResult reports ${want.reportedAddresses.join(', ')} for ${want.ifname}, but IPAM holds ${c} for handle ${want.handle}`;
    }
  }

  const inPod = `in network namespace ${want.netns}`;
  if (!seen.netnsExists) return `network namespace ${want.netns} does not exist`;
  const pod = seen.podLink;
  if (!pod) return `interface ${want.ifname} does not exist ${inPod}`;
  if (pod.kind !== 'veth')
    return `interface ${want.ifname} ${inPod} is a ${pod.kind || 'non-veth'} device, not Weft's veth`;
  if (!pod.addresses.some((a) => sameCidr(a, cidr))) {
    const has = pod.addresses.length > 0 ? pod.addresses.join(', ') : 'no IPv4 address';
    return `interface ${want.ifname} ${inPod} has ${has}, not ${cidr} (the address IPAM holds for handle ${want.handle})`;
  }
  if (cidr6 && !pod.addresses.some((a) => sameCidr(a, cidr6))) {
    return `interface ${want.ifname} ${inPod} lacks ${cidr6} (the IPv6 address IPAM holds for handle ${want.handle})`;
  }
  const missing = want.reportedAddresses.find((r) => !pod.addresses.some((a) => sameCidr(a, r)));
  if (missing) return `interface ${want.ifname} ${inPod} lacks ${missing}, which the runtime's prevResult reports`;
  if (!pod.up) return `interface ${want.ifname} ${inPod} is down`;
  if (want.reportedMac && pod.mac.toLowerCase() !== want.reportedMac.toLowerCase()) {
    return `interface ${want.ifname} ${inPod} has MAC ${pod.mac}, but the runtime's prevResult reports ${want.reportedMac}`;
  }
  const table = seen.hostRecord?.table !== undefined ? ` in its table ${seen.hostRecord.table}` : '';
  if (!seen.podRoutes.some((r) => r.dst === want.gateway && r.scope === 'link' && r.dev === want.ifname)) {
    return `the pod has no link route to its gateway ${want.gateway} on ${want.ifname}${table}`;
  }
  if (!seen.podRoutes.some((r) => r.dst === 'default' && r.gateway === want.gateway && r.dev === want.ifname)) {
    return `the pod has no default route via ${want.gateway} dev ${want.ifname}${table}`;
  }
  if (
    cidr6 &&
    !(seen.podRoutes6 ?? []).some((r) => r.dst === 'default' && r.gateway === want.gateway6 && r.dev === want.ifname)
  ) {
    return `the pod has no IPv6 default route via ${want.gateway6} dev ${want.ifname}${table}`;
  }

  const host = seen.hostLink;
  if (!host) return `host interface ${want.hostIfname} (the node's end of ${want.ifname}) does not exist`;
  if (host.kind !== 'veth')
    return `host interface ${want.hostIfname} is a ${host.kind || 'non-veth'} device, not Weft's veth`;
  if (pod.peerIfindex !== host.ifindex || host.peerIfindex !== pod.ifindex) {
    return `host interface ${want.hostIfname} is not the other end of ${want.ifname} ${inPod}`;
  }
  if (!host.up) return `host interface ${want.hostIfname} is down`;
  if (seen.hostProxyArp !== true)
    return `proxy ARP is off on host interface ${want.hostIfname}, so the pod's gateway ${want.gateway} gets no answer`;
  const hostRoute = seen.hostRoutes.find((r) => sameCidr(r.dst, cidr));
  if (!hostRoute) return `the node has no route to ${cidr} through ${want.hostIfname}`;
  if (hostRoute.protocol !== String(want.routeProtocol)) {
    return `the node's route to ${cidr} through ${want.hostIfname} has protocol ${hostRoute.protocol || 'unknown'}, not Weft's ${want.routeProtocol}`;
  }
  if (cidr6) {
    if (!host.addresses.some((a) => sameCidr(a, `${want.gateway6}/64`))) {
      return `host interface ${want.hostIfname} lacks ${want.gateway6}/64, so the pod's IPv6 gateway gets no answer`;
    }
    const hostRoute6 = (seen.hostRoutes6 ?? []).find((r) => sameCidr(r.dst, cidr6));
    if (!hostRoute6) return `the node has no route to ${cidr6} through ${want.hostIfname}`;
    if (hostRoute6.protocol !== String(want.routeProtocol)) {
      return `the node's route to ${cidr6} through ${want.hostIfname} has protocol ${hostRoute6.protocol || 'unknown'}, not Weft's ${want.routeProtocol}`;
    }
  }
  return null;
}

/** "10.0.0.1" and "10.0.0.1/32" are the same prefix (iproute2 leaves "/32" and "/128" off host routes). */
function sameCidr(a: string, b: string): boolean {
  const norm = (s: string) => (s.includes('/') ? s : `${s}/${s.includes(':') ? 128 : 32}`).toLowerCase();
  return norm(a) === norm(b);
}
