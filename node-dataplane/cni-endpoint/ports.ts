import type { ErrorKind } from '../../lib/errors.js';
import type { ObservedAttachment } from '../domain/attachment-check.js';
import type { HostLink } from '../domain/garbage-collection.js';
import type { PodReporter } from '../pod-reports.js';

/**
 * What the CNI endpoint's use cases (attach.ts, detach.ts, check.ts, garbage-collect.ts, status.ts) need from the
 * rest of the agent, as small interfaces: IPAM, the pod side of the kernel, the records on pod veths, and network
 * policy with its pod reports. The agent passes the real ones (ipam-client.ts, pod-kernel.ts; endpoint.ts wires
 * them); the use cases' unit tests pass fakes (fake-ports.ts). The use cases import no gRPC, generated types or kernel
 * module (eslint.config.js).
 */

import type { AttachmentEvents, PodAddresses, PodAttachment } from '../domain/pod-attachment.js';
/** Domain types the ports speak in; `AttachmentEvents`: the attachments this endpoint makes and ends, as told. */
export type { AttachmentEvents, PodAddresses, PodAttachment };

/** One allocation of this node as IPAM lists it. */
export interface NodeAllocation {
  handle: string;
  containerId: string;
  podNamespace: string;
  podName: string;
  address: string;
  /** 6 for an IPv6 address, else 4. */
  family: 4 | 6;
}

export interface AllocationRequest {
  handle: string;
  /** Empty: the default pool. */
  pool: string;
  /** Every family of the pod, asked in one call: IPAM gives all or none. */
  families: readonly (4 | 6)[];
  /** Exact addresses the runtime asked for (at most one per family). */
  addresses: readonly string[];
  podNamespace: string;
  podName: string;
  podUid: string;
  containerId: string;
  /** Names this allocation: a release naming it fences it (services/ipam/DESIGN.md, "Allocation attempts"). */
  attemptId: string;
}

/** IPAM, as the endpoint uses it (for this node). Failures of IPAM's own are IpamCallErrors. */
export interface IpamPort {
  /** Where IPAM is, for messages. */
  readonly target: string;
  /** The addresses IPAM gave the handle, by family (either may be missing: the use case judges). */
  allocate(req: AllocationRequest): Promise<{ ipv4?: string; ipv6?: string }>;
  /** Releases the handle's live addresses; with an attempt id, also fences that allocation attempt. */
  release(handle: string, attemptId?: string): Promise<{ released: boolean; address: string }>;
  /** Every live allocation of this node. */
  nodeAllocations(): Promise<NodeAllocation[]>;
  /** Resolves when IPAM answers a cheap call in time (Status). */
  ping(): Promise<void>;
}

/** An IPAM call that IPAM refused or did not answer. */
export class IpamCallError extends Error {
  constructor(
    /** The kind of failure for the runtime: `exhausted`, `invalid_argument`, `unavailable`, else `failed_precondition`. */
    readonly kind: ErrorKind,
    /** IPAM's stable error code (`ipam.pool_not_found`), when it sent one. */
    readonly code: string | undefined,
    /** IPAM's own message. */
    readonly details: string,
    /** IPAM may not have finished the call (deadline, unreachable, cancelled): an Allocate may still commit. */
    readonly unanswered: boolean,
    message: string,
  ) {
    super(message);
    this.name = 'IpamCallError';
  }
}

/** The pod side of the kernel: a pod's veth pair, addresses and routes (kernel/pod-network.ts). */
export interface PodNetwork {
  /** Weft's host-side veth name for an attachment (stable, recognisably Weft's). */
  hostIfname(containerId: string, ifname: string): string;
  /** The pod's IPv4 gateway (link-local, answered by proxy ARP on the host end) and its IPv6 one. */
  readonly gateway: string;
  readonly gateway6: string;
  /** True when the host end of this attachment's veth exists. */
  hostLinkExists(containerId: string, ifname: string): Promise<boolean>;
  /**
   * Makes the pod's interface while `address` is being allocated; on failure removes all it made, never before
   * `address` settled, and rethrows `address`'s own rejection as it is.
   */
  attach(opts: {
    containerId: string;
    nsPath: string;
    ifname: string;
    address: Promise<PodAddresses>;
    mtu: number;
    routeProtocol: number;
    mac: string;
    ipv6: boolean;
    record: { network: string; containerId: string; defaultRoute: boolean };
    onPhase?: (phase: string, ms: number) => void;
  }): Promise<PodAttachment>;
  /** Removes the attachment's veth (gone is done) and a second interface's source rules. */
  detach(opts: { containerId: string; ifname: string; nsPath: string }): Promise<void>;
  /** Reads back what attach made (a missing piece is reported as missing). */
  observe(opts: {
    nsPath: string;
    ifname: string;
    hostIfname: string;
  }): Promise<Omit<ObservedAttachment, 'allocation'>>;
  /** Deletes one host interface (GC). */
  deleteLink(name: string): Promise<void>;
}

/** The records on pod host veths (domain/attachment-record.ts). */
export interface AttachmentRecords {
  /** The container's Weft interfaces on this node: how many, and whether one holds the pod's default route. */
  ofContainer(containerId: string): { count: number; defaultRoute: boolean };
  /** The node's veths, with the record on each. */
  hostLinks(): Promise<HostLink[]>;
}

/** Network policy on this node, as attach and detach wait for it. */
export interface PolicyPort {
  /**
   * Resolves once policy of the family is in force on this node, rejects when it is not within `timeoutMs`.
   * Absent: IPv4 counts as in force (the endpoint alone, in tests), IPv6 never does.
   */
  inForce?(family: 4 | 6, timeoutMs: number): Promise<void>;
  /** A pod's veth appeared or went: resolves once a policy pass that started after the call has finished. */
  podsChanged?(): Promise<void> | void;
}

/** The pod reports to the policy service (pod-reports.ts). */
export type PodReports = Pick<PodReporter, 'attached' | 'detached'>;
