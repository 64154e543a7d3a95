import { createKernelTable } from '../kernel-table/table.js';
import type { Driver, KernelAccess } from '../kernel-table/dataplane.js';
import type { FdbEntry } from '../domain/desired.js';
import type { DriverModule } from './driver-module.js';
import { DEVICE } from './vxlan-device.js';

/** Permanent FDB entries on the VXLAN device (a node's VTEP MAC → its underlay address), keyed by MAC. */
export const FDB = 'fdb';

/** Lives on the device. Made by reconciler.ts (the overlay's manager, `computeDesired`). */
export const fdbModule: DriverModule = { placements: [{ kind: FDB, livesOn: [DEVICE] }] };

export function createFdbDriver(access: KernelAccess<FdbEntry>, deviceName: string): Driver<FdbEntry> {
  return { kind: FDB, table: createKernelTable<FdbEntry>(), access, dependsOn: () => [`${DEVICE}/${deviceName}`] };
}
