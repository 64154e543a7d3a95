import netlinkPkg from 'netlink';
import type { RtNetlinkSocket } from 'netlink';
import { formatAddress, parseAddress } from '../../lib/net/ip.js';
import { AF_BRIDGE, AF_INET, AF_INET6, NLM_F_CREATE, NLM_F_REPLACE, RT_TABLE_MAIN, RTNH_F_ONLINK } from '../../lib/net/netlink-constants.js';
import { forEachBounded } from '../../lib/bounded-concurrency.js';
import { isNotFound } from './kernel-errors.js';
import type { Logger } from '../../lib/logger.js';
import { emptyState, type KernelEntry, type KernelState, type Plan } from '../domain/desired.js';

const { createRtNetlink, rt } = netlinkPkg;

/**
 * Reads back and programs the overlay's kernel entries over rtnetlink. Ownership: routes carry Weft's route
 * protocol and leave through Weft's VXLAN device (VXLAN peers) or the underlay device (direct peers); neighbour and
 * FDB entries live on the VXLAN device. Nothing else is read or touched. At most `maxInFlight` requests are outstanding (the netlink package aborts near 512).
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

export interface ApplyResult {
  applied: number;
  failed: { op: 'add' | 'delete'; entry: KernelEntry; error: string }[];
}

/** Interface indexes of the devices Weft's entries live on. */
export interface OverlayDevices { vxlan: number; underlay: number }

export interface OverlayDriver {
  readActual(devices: OverlayDevices): Promise<KernelState>;
  /** Applies the plan phase by phase; a failed entry is logged and returned, and the rest goes on. */
  apply(devices: OverlayDevices, plan: Plan): Promise<ApplyResult>;
  linkIndex(name: string): Promise<number | null>;
  close(): void;
}

export function createOverlayDriver(opts: { routeProtocol: number; logger: Logger; maxInFlight?: number }): OverlayDriver {
  const nl: RtNetlinkSocket = createRtNetlink();
  // Requests report their own errors; this only keeps a stray socket error from crashing the process.
  nl.socket.on('error', (err) => opts.logger.warn('netlink socket error', { err: err.message }));
  const maxInFlight = Math.min(opts.maxInFlight ?? 64, 256);

  async function readActual(devices: OverlayDevices): Promise<KernelState> {
    const ifindex = devices.vxlan;
    const s = emptyState();
    for (const family of [AF_INET, AF_INET6]) {
      for (const n of await nl.getNeighbors({ family })) {
        if (n.data.ifindex !== ifindex || !n.data.state?.permanent || !n.attrs.dst || !n.attrs.lladdr) continue;
        const ip = bufIp(n.attrs.dst);
        s.neighbours.set(ip, { kind: 'neighbour', key: ip, ip, mac: bufMac(n.attrs.lladdr) });
      }
    }
    for (const n of await nl.getNeighbors({ family: AF_BRIDGE })) {
      if (n.data.ifindex !== ifindex || !n.attrs.dst || !n.attrs.lladdr || n.attrs.dst.length !== 4) continue;
      const mac = bufMac(n.attrs.lladdr);
      if (mac === '00:00:00:00:00:00') continue;
      s.fdb.set(mac, { kind: 'fdb', key: mac, mac, dst: bufIp(n.attrs.dst) });
    }
    for (const family of [AF_INET, AF_INET6]) {
      for (const r of await nl.getRoutes({ family })) {
        if (routeProtocolNumber(r.data.protocol) !== opts.routeProtocol || !r.attrs.dst) continue;
        if (r.attrs.oif !== ifindex && r.attrs.oif !== devices.underlay) continue;
        if ((r.attrs.table ?? r.data.table) !== RT_TABLE_MAIN) continue;
        const cidr = `${bufIp(r.attrs.dst)}/${r.data.dstLen}`;
        s.routes.set(cidr, { kind: 'route', key: cidr, cidr, gateway: r.attrs.gateway ? bufIp(r.attrs.gateway) : '', mode: r.attrs.oif === ifindex ? 'vxlan' : 'direct' });
      }
    }
    return s;
  }

  async function applyOne(devices: OverlayDevices, op: 'add' | 'delete', e: KernelEntry): Promise<void> {
    const ifindex = devices.vxlan;
    const flags = op === 'add' ? NLM_F_CREATE | NLM_F_REPLACE : 0;
    try {
      switch (e.kind) {
        case 'neighbour': {
          const data = { family: familyOf(e.ip), ifindex, state: { permanent: true as const } };
          const attrs = { dst: ipBuf(e.ip), lladdr: macBuf(e.mac) };
          await (op === 'add' ? nl.newNeighbor(data, attrs, { flags }) : nl.delNeighbor(data, { dst: attrs.dst }));
          break;
        }
        case 'fdb': {
          const data = { family: AF_BRIDGE, ifindex, state: { permanent: true as const }, flags: { self: true as const } };
          await (op === 'add'
            ? nl.newNeighbor(data, { lladdr: macBuf(e.mac), dst: ipBuf(e.dst) }, { flags })
            : nl.delNeighbor(data, { lladdr: macBuf(e.mac), dst: ipBuf(e.dst) }));
          break;
        }
        case 'route': {
          // VXLAN: onlink via the block's first address on the VXLAN device; direct: via the node's underlay address
          // on the underlay device. Adding replaces a route to the same block in place, whatever its device.
          const [base, len] = e.cidr.split('/');
          const oif = e.mode === 'direct' ? devices.underlay : ifindex;
          const family = familyOf(base!);
          const data = { family, dstLen: Number(len), table: RT_TABLE_MAIN, protocol: opts.routeProtocol, scope: 'UNIVERSE' as const, type: 'UNICAST' as const, ...(e.mode === 'vxlan' ? { flags: { __unknown: RTNH_F_ONLINK } } : {}) };
          await (op === 'add'
            ? nl.newRoute(data, { dst: ipBuf(base!), gateway: ipBuf(e.gateway), oif }, { flags })
            : nl.delRoute({ family, dstLen: Number(len), table: RT_TABLE_MAIN, protocol: opts.routeProtocol }, { dst: ipBuf(base!), oif }));
          break;
        }
      }
    } catch (err) {
      if (op === 'delete' && isNotFound(err)) return;
      throw err;
    }
  }

  async function apply(devices: OverlayDevices, plan: Plan): Promise<ApplyResult> {
    let applied = 0;
    const failed: ApplyResult['failed'] = [];
    for (const phase of plan.phases) {
      await forEachBounded(phase.entries, maxInFlight, async (e) => {
        try {
          await applyOne(devices, phase.op, e);
          applied++;
        } catch (err) {
          failed.push({ op: phase.op, entry: e, error: (err as Error).message });
          opts.logger.warn('kernel update failed; will retry', { op: phase.op, entry: e, err: (err as Error).message });
        }
      });
    }
    return { applied, failed };
  }

  async function linkIndex(name: string): Promise<number | null> {
    const links = await nl.getLinks();
    return links.find((l) => l.attrs.ifname === name)?.data.index ?? null;
  }

  return { readActual, apply, linkIndex, close: () => nl.socket.close() };
}
