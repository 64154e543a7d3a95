import type { Logger } from '../../lib/logger.js';
import { parseIPv4 } from '../../lib/net/ip.js';
import { deleteLink, ip, showLink } from './links.js';
import type { KernelAccess } from '../kernel-table/dataplane.js';

/** VXLAN header overhead on an IPv4 underlay. */
export const VXLAN_OVERHEAD_V4 = 50;

export interface VxlanSpec {
  name: string;
  vni: number;
  port: number;
  localAddress: string;
  underlayInterface: string;
  mtu: number;
}

/** A stable, locally administered VTEP MAC derived from the underlay address, so a rebuilt device keeps it. */
export function vtepMacFor(underlayAddress: string): string {
  const n = parseIPv4(underlayAddress);
  return ['02', '57', n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]
    .map((x) => (typeof x === 'string' ? x : x.toString(16).padStart(2, '0')))
    .join(':');
}

/**
 * Ensures the VXLAN device: a device that matches the spec is reused untouched (so its neighbour and FDB entries
 * survive an agent restart); a mismatched one is rebuilt. Learning is off: Weft programs every entry.
 */
export async function ensureVxlanDevice(
  spec: VxlanSpec,
  logger: Logger,
): Promise<{ ifindex: number; mac: string; rebuilt: boolean }> {
  const mac = vtepMacFor(spec.localAddress);
  const cur = await showLink(spec.name);
  const d = cur?.linkinfo?.info_data ?? {};
  const matches =
    cur?.linkinfo?.info_kind === 'vxlan' &&
    d.id === spec.vni &&
    d.local === spec.localAddress &&
    d.port === spec.port &&
    d.link === spec.underlayInterface &&
    d.learning === false &&
    cur.address === mac;
  if (cur && !matches) {
    logger.warn('VXLAN device does not match its spec; rebuilding', { device: spec.name });
    await deleteLink(spec.name);
  }
  if (!cur || !matches) {
    if (!cur) logger.info('creating the VXLAN device', { device: spec.name });
    await ip([
      'link',
      'add',
      spec.name,
      'address',
      mac,
      'mtu',
      String(spec.mtu),
      'type',
      'vxlan',
      'id',
      String(spec.vni),
      'local',
      spec.localAddress,
      'dev',
      spec.underlayInterface,
      'dstport',
      String(spec.port),
      'nolearning',
    ]);
  } else if (cur.mtu !== spec.mtu) {
    await ip(['link', 'set', 'dev', spec.name, 'mtu', String(spec.mtu)]);
  }
  await ip(['link', 'set', 'dev', spec.name, 'up']);
  const after = await showLink(spec.name);
  if (!after) throw new Error(`VXLAN device ${spec.name} vanished right after creation`);
  return { ifindex: after.ifindex, mac, rebuilt: !!cur && !matches };
}

/** The VXLAN device as the driver compares it: the spec's fields as the kernel holds them, and its index. */
export interface VxlanDeviceState extends VxlanSpec {
  mac: string;
  learning: boolean;
  up: boolean;
  /** The kernel's index for it (not compared: a device re-made to the same spec is the same device to Weft). */
  ifindex?: number;
}

/** The state a spec asks for. */
export const vxlanStateFor = (spec: VxlanSpec): VxlanDeviceState => ({
  ...spec,
  mac: vtepMacFor(spec.localAddress),
  learning: false,
  up: true,
});

/** Reads the device named `name` back (null: no such device). A device of another kind reads as a mismatch. */
export async function readVxlanDevice(name: string): Promise<VxlanDeviceState | null> {
  const cur = await showLink(name);
  if (!cur) return null;
  const d = cur.linkinfo?.info_data ?? {};
  const vxlan = cur.linkinfo?.info_kind === 'vxlan';
  return {
    name,
    vni: vxlan ? Number(d.id) : -1,
    port: Number(d.port),
    localAddress: String(d.local ?? ''),
    underlayInterface: String(d.link ?? ''),
    mtu: cur.mtu,
    mac: cur.address,
    learning: d.learning !== false,
    up: cur.flags.includes('UP'),
    ifindex: cur.ifindex,
  };
}

/** The device as kernel access for its driver (drivers/vxlan-device.ts): read it back, ensure it, delete it. */
export function createVxlanDeviceAccess(name: string, logger: Logger): KernelAccess<VxlanDeviceState> {
  return {
    async read() {
      const d = await readVxlanDevice(name);
      return new Map(d ? [[name, d]] : []);
    },
    async write(_key, spec) {
      const made = await ensureVxlanDevice(spec, logger);
      return { ...vxlanStateFor(spec), ifindex: made.ifindex };
    },
    remove: (key) => deleteLink(key),
  };
}
