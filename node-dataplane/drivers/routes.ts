import { createKernelTable } from '../kernel-table/table.js';
import type { Driver, KernelAccess } from '../kernel-table/dataplane.js';
import type { NeighbourEntry, RouteEntry } from '../domain/desired.js';
import type { DriverModule } from './driver-module.js';
import { FDB } from './fdb.js';
import { NEIGHBOUR } from './neighbours.js';
import { DEVICE } from './vxlan-device.js';

/**
 * Routes to remote blocks, keyed by CIDR in the kernel's compressed form (whatever the mode, so a node changing mode
 * has its route replaced in place). A VXLAN route needs the device, its next hop's neighbour entry and that MAC's FDB
 * entry; a direct route leaves by the underlay device, which is not Weft's, and needs nothing of Weft's.
 */
export const ROUTE = 'route';

/**
 * Lives on the device; its VXLAN routes need their neighbour and FDB entries. Its deletes go first, and the
 * neighbour and FDB deletes after them, so that every route that used an entry is deleted or replaced (a node
 * switching to direct routing) before the entry goes: a switching block is never without a path. Made by
 * reconciler.ts (the overlay's manager, `computeDesired`).
 */
export const routeModule: DriverModule = {
  placements: [{ kind: ROUTE, livesOn: [DEVICE], dependsOn: [NEIGHBOUR, FDB], deletes: 'first' }],
};

export function createRouteDriver(access: KernelAccess<RouteEntry>, deviceName: string): Driver<RouteEntry> {
  return {
    kind: ROUTE,
    table: createKernelTable<RouteEntry>(),
    access,
    dependsOn(_key, route, lookup) {
      if (route.mode === 'direct') return [];
      const mac = (lookup(NEIGHBOUR, route.gateway) as NeighbourEntry | undefined)?.mac;
      return [`${DEVICE}/${deviceName}`, `${NEIGHBOUR}/${route.gateway}`, ...(mac ? [`${FDB}/${mac}`] : [])];
    },
  };
}
