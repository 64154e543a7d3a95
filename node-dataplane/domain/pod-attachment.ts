import type { HostAttachment } from './pod-host.js';

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

/**
 * A node's attachments as they change, told synchronously at the moment each happens: the CNI endpoint tells them
 * (cni-endpoint/ports.ts), the attachments source follows them for the pod veths' and host routes' drivers
 * (sources/attachments.ts).
 */
export interface AttachmentEvents {
  /** An ADD begins making this host veth. */
  attaching(hostIfname: string): void;
  /** That ADD ended, whatever its outcome. */
  attachEnded(hostIfname: string): void;
  /** The ADD made the attachment. */
  attached(a: HostAttachment): void;
  /** A DEL or GC removes this attachment (its veth, or its allocation when the veth is gone). */
  detached(hostIfname: string): void;
}
