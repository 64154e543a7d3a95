import type { Driver, Phase } from '../kernel-table/dataplane.js';
import { dependentsOf, phaseOrder } from '../kernel-table/placement.js';
import type { DriverContext, DriverModule } from './driver-module.js';
import { fdbModule } from './fdb.js';
import { natModule } from './nat.js';
import { neighbourModule } from './neighbours.js';
import { podHostModule } from './pod-host.js';
import { policyModule } from './policy.js';
import { routeModule } from './routes.js';
import { DEVICE, vxlanDeviceModule } from './vxlan-device.js';

/**
 * Every kind of kernel object the agent drives: one driver module a line, the one list a new kind is added to.
 * The dependency order is derived from the modules' placements (kernel-table/placement.ts); where the placements
 * leave two phases free, this list decides: the device first; masquerade; the pods' host routes and veths; the
 * overlay's routes, FDB and neighbour entries; network policy. `placement.test.ts` pins the order this gives.
 */
export const DRIVER_MODULES: readonly DriverModule[] = [
  vxlanDeviceModule,
  natModule,
  podHostModule,
  routeModule,
  fdbModule,
  neighbourModule,
  policyModule,
];

const placements = DRIVER_MODULES.flatMap((m) => m.placements);

/** The one kernel dependency order: the phases of every kind. A dataplane of some kinds takes those of its own. */
export const ORDER: readonly Phase[] = phaseOrder(placements);

/** Kinds whose entries live on an entry of another: when it is re-made, they are read back. */
export const DEPENDENTS: Readonly<Record<string, readonly string[]>> = dependentsOf(placements);

/** The overlay's kinds: those that live on the VXLAN device (what the route snapshot decides). */
export const OVERLAY_KINDS: readonly string[] = DEPENDENTS[DEVICE] ?? [];

/**
 * The drivers that carry their own manager, made from the node's settings and inputs (main.ts hands them to the
 * reconciler), and what to close when the agent stops.
 */
export function createModuleDrivers(node: DriverContext): { drivers: Driver<unknown>[]; close(): void } {
  const made = DRIVER_MODULES.flatMap((m) => (m.create ? [m.create(node)] : []));
  return {
    drivers: made.flatMap((m) => m.drivers),
    close: () => made.forEach((m) => m.close?.()),
  };
}
