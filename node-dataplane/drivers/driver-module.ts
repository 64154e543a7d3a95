import type { Logger } from '../../lib/logger.js';
import type { HostAttachment } from '../domain/pod-host.js';
import type { Driver } from '../kernel-table/dataplane.js';
import type { Placement } from '../kernel-table/placement.js';
import type { HostPaths } from '../kernel/host-paths.js';

/**
 * One entry of the registry (registry.ts): the kinds a driver module drives, each with its place in the dependency
 * order, and, for drivers that carry their own manager (`Driver.desired`), how the agent makes them.
 */
export interface DriverModule {
  placements: readonly Placement[];
  /**
   * Its drivers on the node's settings and inputs, with what to close when the agent stops. Absent: the scheduler's
   * managers make and feed them (reconciler.ts: the device, the overlay, masquerade, network policy).
   */
  create?(node: DriverContext): { drivers: Driver<unknown>[]; close?(): void };
}

/** The node's pods as the pod drivers see them (sources/attachments.ts). */
export interface PodInputs {
  /** Host veth name → attachment; null while IPAM has not been asked yet. */
  attachments(): ReadonlyMap<string, HostAttachment> | null;
  /** Whether an ADD is making this veth right now. */
  attaching(hostIfname: string): boolean;
}

/** What the agent (main.ts) gives every driver module's `create`. */
export interface DriverContext {
  /** The protocol number that marks Weft's routes. */
  routeProtocol: number;
  /** The host's sysctls and sysfs. */
  hostPaths: HostPaths;
  pods: PodInputs;
  logger: Logger;
}
