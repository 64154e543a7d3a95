import { createKernelTable } from '../kernel-table/table.js';
import type { Driver, KernelAccess } from '../kernel-table/dataplane.js';
import type { VxlanDeviceState } from '../kernel/vxlan-device.js';
import type { DriverModule } from './driver-module.js';

/**
 * The VXLAN device: one entry, keyed by the device's name. A device that matches the spec is kept untouched (so the
 * entries on it survive an agent restart); a missing or mismatched one is made (rebuilt) by the write, after which
 * the entries on it are read back (the dataplane's `dependents`). Its index is not compared.
 */
export const DEVICE = 'device';

/** First of all: the overlay lives on it. Never removed (its one entry is always wanted). Made by reconciler.ts. */
export const vxlanDeviceModule: DriverModule = { placements: [{ kind: DEVICE, deletes: 'never' }] };

export interface VxlanDeviceDriver extends Driver<VxlanDeviceState> {
  /** The device's index as last read or made; null while it does not exist. */
  ifindex(): number | null;
}

export function createVxlanDeviceDriver(access: KernelAccess<VxlanDeviceState>): VxlanDeviceDriver {
  const table = createKernelTable<VxlanDeviceState>(
    (a, b) =>
      a.name === b.name &&
      a.vni === b.vni &&
      a.port === b.port &&
      a.localAddress === b.localAddress &&
      a.underlayInterface === b.underlayInterface &&
      a.mtu === b.mtu &&
      a.mac === b.mac &&
      a.learning === b.learning &&
      a.up === b.up,
  );
  return {
    kind: DEVICE,
    table,
    access,
    ifindex() {
      for (const d of table.cache.values()) return d.ifindex ?? null;
      return null;
    },
  };
}
