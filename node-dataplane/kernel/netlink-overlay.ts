import netlinkPkg from 'netlink';
import type { RtNetlinkSocket } from 'netlink';
import { formatAddress, parseAddress } from '../../lib/net/ip.js';
import {
  AF_BRIDGE,
  AF_INET,
  AF_INET6,
  NLM_F_CREATE,
  NLM_F_REPLACE,
  RT_TABLE_MAIN,
  RTNH_F_ONLINK,
} from '../../lib/net/netlink-constants.js';
import { isNotFound } from './kernel-errors.js';
import type { Logger } from '../../lib/logger.js';
import type { FdbEntry, NeighbourEntry, RouteEntry } from '../domain/desired.js';
import type { KernelAccess } from '../kernel-table/dataplane.js';

const { createRtNetlink, rt } = netlinkPkg;

/**
 * Reads back and programs the overlay's kernel entries over rtnetlink. Ownership: routes carry Weft's route
 * protocol and leave through Weft's VXLAN device (VXLAN peers) or the underlay device (direct peers); neighbour and
 * FDB entries live on the VXLAN device. Nothing else is read or touched. How many requests are in flight is the
 * dataplane's business (kernel-table/dataplane.ts: the netlink package aborts near 512).
 */

/** An address as the kernel takes it: 4 or 16 bytes, network order. */
export const ipBuf = (ip: string) => {
  const { family, value } = parseAddress(ip);
  const b = Buffer.alloc(family === 4 ? 4 : 16);
  for (let i = b.length - 1, v = value; i >= 0; i--, v >>= 8n) b[i] = Number(v & 255n);
  return b;
};
/** The kernel's 4- or 16-byte address as text (IPv6 compressed, as formatCidr prints it). */
export const bufIp = (b: Buffer) => {
  if (b.length === 4) return formatAddress(4, BigInt(b.readUInt32BE(0)));
  let v = 0n;
  for (const x of b) v = (v << 8n) | BigInt(x);
  return formatAddress(6, v);
};
const familyOf = (ip: string) => (ip.includes(':') ? AF_INET6 : AF_INET);
const macBuf = (mac: string) => Buffer.from(mac.split(':').map((h) => parseInt(h, 16)));
/** The kernel's 6-byte MAC address as text (lower-case, colon-separated). */
export const bufMac = (b: Buffer) => [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');

/** A route's protocol as a number: the package names the well-known ones (12 arrives as 'BIRD'). */
export function routeProtocolNumber(p: number | string | undefined): number {
  if (typeof p === 'number') return p;
  return p === undefined ? NaN : (rt.RouteProtocol[p as keyof typeof rt.RouteProtocol] ?? NaN);
}

/** Interface indexes of the devices Weft's entries live on (the VXLAN device's: null while it does not exist). */
export interface OverlayDevices {
  vxlan: number | null;
  underlay: number;
}

/** The overlay's kernel access over one rtnetlink socket, one part per kind of entry (the drivers in ../drivers/). */
export interface OverlayNetlink {
  neighbours: KernelAccess<NeighbourEntry>;
  fdb: KernelAccess<FdbEntry>;
  routes: KernelAccess<RouteEntry>;
  close(): void;
}

export function createOverlayNetlink(opts: {
  routeProtocol: number;
  logger: Logger;
  devices: () => OverlayDevices;
}): OverlayNetlink {
  const nl: RtNetlinkSocket = createRtNetlink();
  // Requests report their own errors; this only keeps a stray socket error from crashing the process.
  nl.socket.on('error', (err) => opts.logger.warn('netlink socket error', { err: err.message }));
  const vxlanIndex = () => {
    const i = opts.devices().vxlan;
    if (i === null) throw new Error('the VXLAN device does not exist');
    return i;
  };
  /** "Not found" on delete is success: the entry is gone either way. */
  const removing = async (p: Promise<unknown>) => {
    try {
      await p;
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  };

  const neighbours: KernelAccess<NeighbourEntry> = {
    async read() {
      const out = new Map<string, NeighbourEntry>();
      const ifindex = opts.devices().vxlan;
      if (ifindex === null) return out;
      for (const family of [AF_INET, AF_INET6]) {
        for (const n of await nl.getNeighbors({ family })) {
          if (n.data.ifindex !== ifindex || !n.data.state?.permanent || !n.attrs.dst || !n.attrs.lladdr) continue;
          const ip = bufIp(n.attrs.dst);
          out.set(ip, { kind: 'neighbour', key: ip, ip, mac: bufMac(n.attrs.lladdr) });
        }
      }
      return out;
    },
    async write(_key, e) {
      const data = { family: familyOf(e.ip), ifindex: vxlanIndex(), state: { permanent: true as const } };
      await nl.newNeighbor(data, { dst: ipBuf(e.ip), lladdr: macBuf(e.mac) }, { flags: NLM_F_CREATE | NLM_F_REPLACE });
    },
    async remove(_key, e) {
      const data = { family: familyOf(e.ip), ifindex: vxlanIndex(), state: { permanent: true as const } };
      await removing(nl.delNeighbor(data, { dst: ipBuf(e.ip) }));
    },
  };

  const fdbData = () => ({
    family: AF_BRIDGE,
    ifindex: vxlanIndex(),
    state: { permanent: true as const },
    flags: { self: true as const },
  });
  const fdb: KernelAccess<FdbEntry> = {
    async read() {
      const out = new Map<string, FdbEntry>();
      const ifindex = opts.devices().vxlan;
      if (ifindex === null) return out;
      for (const n of await nl.getNeighbors({ family: AF_BRIDGE })) {
        if (n.data.ifindex !== ifindex || !n.attrs.dst || !n.attrs.lladdr || n.attrs.dst.length !== 4) continue;
        const mac = bufMac(n.attrs.lladdr);
        if (mac === '00:00:00:00:00:00') continue;
        out.set(mac, { kind: 'fdb', key: mac, mac, dst: bufIp(n.attrs.dst) });
      }
      return out;
    },
    async write(_key, e) {
      await nl.newNeighbor(
        fdbData(),
        { lladdr: macBuf(e.mac), dst: ipBuf(e.dst) },
        { flags: NLM_F_CREATE | NLM_F_REPLACE },
      );
    },
    async remove(_key, e) {
      await removing(nl.delNeighbor(fdbData(), { lladdr: macBuf(e.mac), dst: ipBuf(e.dst) }));
    },
  };

  const routes: KernelAccess<RouteEntry> = {
    async read() {
      const out = new Map<string, RouteEntry>();
      const { vxlan, underlay } = opts.devices();
      for (const family of [AF_INET, AF_INET6]) {
        for (const r of await nl.getRoutes({ family })) {
          if (routeProtocolNumber(r.data.protocol) !== opts.routeProtocol || !r.attrs.dst) continue;
          if ((vxlan === null || r.attrs.oif !== vxlan) && r.attrs.oif !== underlay) continue;
          if ((r.attrs.table ?? r.data.table) !== RT_TABLE_MAIN) continue;
          const cidr = `${bufIp(r.attrs.dst)}/${r.data.dstLen}`;
          out.set(cidr, {
            kind: 'route',
            key: cidr,
            cidr,
            gateway: r.attrs.gateway ? bufIp(r.attrs.gateway) : '',
            mode: r.attrs.oif === vxlan ? 'vxlan' : 'direct',
          });
        }
      }
      return out;
    },
    // VXLAN: onlink via the block's first address on the VXLAN device; direct: via the node's underlay address on the
    // underlay device. Writing replaces a route to the same block in place, whatever its device (NLM_F_REPLACE).
    async write(_key, e) {
      const [base, len] = e.cidr.split('/');
      const oif = e.mode === 'direct' ? opts.devices().underlay : vxlanIndex();
      const data = {
        family: familyOf(base!),
        dstLen: Number(len),
        table: RT_TABLE_MAIN,
        protocol: opts.routeProtocol,
        scope: 'UNIVERSE' as const,
        type: 'UNICAST' as const,
        ...(e.mode === 'vxlan' ? { flags: { __unknown: RTNH_F_ONLINK } } : {}),
      };
      await nl.newRoute(
        data,
        { dst: ipBuf(base!), gateway: ipBuf(e.gateway), oif },
        { flags: NLM_F_CREATE | NLM_F_REPLACE },
      );
    },
    async remove(_key, e) {
      const [base, len] = e.cidr.split('/');
      const devices = opts.devices();
      const oif = e.mode === 'direct' ? devices.underlay : devices.vxlan;
      // Without the device its routes are gone with it.
      if (oif === null) return;
      await removing(
        nl.delRoute(
          { family: familyOf(base!), dstLen: Number(len), table: RT_TABLE_MAIN, protocol: opts.routeProtocol },
          { dst: ipBuf(base!), oif },
        ),
      );
    },
  };

  return { neighbours, fdb, routes, close: () => nl.socket.close() };
}
