/** The addresses IPAM gave one attachment: always IPv4, and IPv6 for a dual-stack pod. */
export interface PodAddresses {
  ipv4: string;
  ipv6?: string;
}

/** What the kernel made for an attachment: both ends of its veth and the pod's addresses. */
export interface PodAttachment {
  hostIfname: string;
  hostMac: string;
  podIfname: string;
  podMac: string;
  address: string;
  /** The pod's IPv6 address (dual-stack pods). */
  address6?: string;
}
