import { createKernelTable } from '../kernel-table/table.js';
import type { Driver, KernelAccess } from '../kernel-table/dataplane.js';
import type { NeighbourEntry } from '../domain/desired.js';
import type { DriverModule } from './driver-module.js';
import { DEVICE } from './vxlan-device.js';

/** Permanent neighbour entries on the VXLAN device (a block's first address → the VTEP MAC), keyed by address. */
export const NEIGHBOUR = 'neighbour';

/** Lives on the device. Made by reconciler.ts (the overlay's manager, `computeDesired`). */
export const neighbourModule: DriverModule = { placements: [{ kind: NEIGHBOUR, livesOn: [DEVICE] }] };

export function createNeighbourDriver(
  access: KernelAccess<NeighbourEntry>,
  deviceName: string,
): Driver<NeighbourEntry> {
  return {
    kind: NEIGHBOUR,
    table: createKernelTable<NeighbourEntry>(),
    access,
    dependsOn: () => [`${DEVICE}/${deviceName}`],
  };
}
