import { DomainError } from '../../lib/errors.js';
import { findAttachmentDifference } from '../domain/attachment-check.js';
import type { Shared } from './use-case-deps.js';

/** A check the RPC adapter has checked (rpc.ts). */
export interface CheckParams {
  containerId: string;
  netns: string;
  ifname: string;
  /** From prevResult; empty: not compared. */
  reportedAddresses: readonly string[];
  reportedMac: string;
}

/**
 * Check: read back IPAM's allocation and the kernel's state at once, and compare them with what ADD made
 * (domain/attachment-check.ts); the first difference is FAILED_PRECONDITION `agent.check_failed`.
 */
export function createCheck({ deps, nodeAllocations }: Shared) {
  return async function check(req: CheckParams): Promise<void> {
    const handle = `${req.containerId}/${req.ifname}`;
    const hostIfname = deps.pods.hostIfname(req.containerId, req.ifname);
    const [allocations, observed] = await Promise.all([
      nodeAllocations(),
      deps.pods.observe({ nsPath: req.netns, ifname: req.ifname, hostIfname }),
    ]);
    // What IPAM holds for the handle is what ADD made: its IPv4 address, and its IPv6 one for a dual-stack pod.
    const held = allocations.filter((a) => a.handle === handle);
    const held4 = held.find((a) => a.family !== 6);
    const held6 = held.find((a) => a.family === 6);
    const difference = findAttachmentDifference(
      {
        handle,
        node: deps.node,
        netns: req.netns,
        ifname: req.ifname,
        hostIfname,
        gateway: deps.pods.gateway,
        gateway6: deps.pods.gateway6,
        routeProtocol: deps.routeProtocol,
        reportedAddresses: req.reportedAddresses,
        reportedMac: req.reportedMac,
      },
      {
        ...observed,
        allocation: held4 ? { address: held4.address, ...(held6 ? { address6: held6.address } : {}) } : null,
      },
    );
    if (difference) throw new DomainError('agent.check_failed', 'failed_precondition', difference);
  };
}
