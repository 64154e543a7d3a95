import { createKernelTable } from '../kernel-table/table.js';
import type { Driver, KernelAccess } from '../kernel-table/dataplane.js';
import type { NeighbourEntry } from '../domain/desired.js';
import { DEVICE } from './vxlan-device.js';

/** Permanent neighbour entries on the VXLAN device (a block's first address → the VTEP MAC), keyed by address. */
export const NEIGHBOUR = 'neighbour';

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
