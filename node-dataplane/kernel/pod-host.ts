import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import netlinkPkg from 'netlink';
import type { RtNetlinkSocket } from 'netlink';
import {
  AF_INET,
  AF_INET6,
  NLM_F_CREATE,
  NLM_F_REPLACE,
  RT_SCOPE_LINK,
  RT_TABLE_MAIN,
} from '../../lib/net/netlink-constants.js';
import type { Logger } from '../../lib/logger.js';
import { POD_HOST_IFNAME, type PodLinkEntry, type PodRouteEntry } from '../domain/pod-host.js';
import { EntryWaiting, type KernelAccess } from '../kernel-table/dataplane.js';
import { classNet, netSysctl, type HostPaths } from './host-paths.js';
import { isNotFound } from './kernel-errors.js';
import { deleteLink } from './links.js';
import { bufIp, ipBuf, routeProtocolNumber } from './netlink-overlay.js';
import { addHostGateway6, POD_GATEWAY6 } from './pod-network.js';

/**
 * The kernel access of the pod drivers. Pod veths are found by name in sysfs (`/sys/class/net/weft…`: a directory
 * listing and a few small reads, no process), their settings in the host's sysctls (see host-paths.ts), their IPv6
 * gateway and their host routes over rtnetlink (one dump each). Ownership: a pod link is a device named like
 * hostIfnameFor's; a host route carries Weft's protocol in the main table and leaves by a pod link. A stale veth is
 * removed with `ip link del` in a child (a device deletion waits for RCU grace periods inside the sender's
 * `sendmsg`), and only while its name still denotes the device that was read back (its index).
 */
export interface PodHostAccess {
  links: KernelAccess<PodLinkEntry>;
  routes: KernelAccess<PodRouteEntry>;
  close(): void;
}

export function createPodHostAccess(opts: { routeProtocol: number; paths: HostPaths; logger: Logger }): PodHostAccess {
  const { paths } = opts;
  let nl: RtNetlinkSocket | undefined;
  const netlink = () => {
    if (!nl) {
      nl = netlinkPkg.createRtNetlink();
      nl.socket.on('error', (err) => opts.logger.warn('netlink socket error', { err: err.message }));
    }
    return nl;
  };
  /**
   * Runs the socket's dumps one after the other: the kernel takes one dump at a time on a socket (a second meanwhile
   * gets EBUSY or breaks the first's multipart answer), and the two kinds are read side by side (dataplane.ts).
   */
  let dumping: Promise<unknown> = Promise.resolve();
  const dump = <T>(request: () => Promise<T>): Promise<T> => {
    const next = dumping.then(request, request);
    dumping = next.catch(() => {});
    return next;
  };
  /** A device's index, or null when there is no device of that name. */
  const ifindexOf = (name: string): number | null => {
    try {
      return Number(readFileSync(classNet(paths, name, 'ifindex'), 'utf8'));
    } catch {
      return null;
    }
  };
  /** The pod links there are now, by index. */
  const podLinks = (): Map<number, string> => {
    const out = new Map<number, string>();
    for (const name of readdirSync(classNet(paths))) {
      if (!POD_HOST_IFNAME.test(name)) continue;
      const index = ifindexOf(name);
      if (index !== null) out.set(index, name);
    }
    return out;
  };
  const gone = (what: string) =>
    new EntryWaiting(`${what} does not exist (only the runtime's ADD makes it; its DEL or GC ends the attachment)`);

  const links: KernelAccess<PodLinkEntry> = {
    async read() {
      const byIndex = podLinks();
      const gateway6 = new Set<number>();
      for (const a of await dump(() => netlink().getAddresses({ family: AF_INET6 }))) {
        const local = a.attrs.local ?? a.attrs.address;
        if (a.data.prefixlen === 64 && local && bufIp(local) === POD_GATEWAY6 && a.data.index !== undefined)
          gateway6.add(a.data.index);
      }
      const out = new Map<string, PodLinkEntry>();
      for (const [index, name] of byIndex) {
        try {
          const proxyArp = readFileSync(netSysctl(paths, 'ipv4', 'conf', name, 'proxy_arp'), 'utf8').trim() === '1';
          const proxyDelay = Number(readFileSync(netSysctl(paths, 'ipv4', 'neigh', name, 'proxy_delay'), 'utf8'));
          out.set(name, { name, proxyArp, proxyDelay, gateway6: gateway6.has(index), ifindex: index });
        } catch {
          // gone meanwhile
        }
      }
      return out;
    },
    async write(name, e, held) {
      const index = ifindexOf(name);
      if (index === null) throw gone(`pod veth ${name}`);
      try {
        writeFileSync(netSysctl(paths, 'ipv4', 'conf', name, 'proxy_arp'), e.proxyArp ? '1' : '0');
        writeFileSync(netSysctl(paths, 'ipv4', 'neigh', name, 'proxy_delay'), String(e.proxyDelay));
        if (e.gateway6) await addHostGateway6(name, paths);
        else if (held?.gateway6)
          await netlink()
            .delAddress(
              { family: AF_INET6, prefixlen: 64, scope: RT_SCOPE_LINK, index },
              { local: ipBuf(POD_GATEWAY6), address: ipBuf(POD_GATEWAY6) },
            )
            .catch((err: unknown) => {
              if (!isNotFound(err)) throw err;
            });
      } catch (err) {
        if (ifindexOf(name) === null) throw gone(`pod veth ${name}`);
        throw err;
      }
      return { ...e, ifindex: index };
    },
    async remove(name, held) {
      const index = ifindexOf(name);
      // Gone already; or the name is another device's now (a newer ADD's): not the one read back, not removed.
      if (index === null || (held.ifindex !== undefined && index !== held.ifindex)) return;
      await deleteLink(name);
    },
  };

  const routeData = (cidr: string) => {
    const v6 = cidr.includes(':');
    return {
      family: v6 ? AF_INET6 : AF_INET,
      dstLen: Number(cidr.split('/')[1]),
      table: RT_TABLE_MAIN,
      protocol: opts.routeProtocol,
    };
  };
  const routes: KernelAccess<PodRouteEntry> = {
    async read() {
      const byIndex = podLinks();
      const out = new Map<string, PodRouteEntry>();
      for (const family of [AF_INET, AF_INET6]) {
        for (const r of await dump(() => netlink().getRoutes({ family }))) {
          if (routeProtocolNumber(r.data.protocol) !== opts.routeProtocol || !r.attrs.dst) continue;
          if ((r.attrs.table ?? r.data.table) !== RT_TABLE_MAIN || r.attrs.oif === undefined) continue;
          const dev = byIndex.get(r.attrs.oif);
          if (dev === undefined) continue;
          const cidr = `${bufIp(r.attrs.dst)}/${r.data.dstLen}`;
          out.set(cidr, { cidr, dev, ifindex: r.attrs.oif });
        }
      }
      return out;
    },
    async write(cidr, e) {
      const oif = ifindexOf(e.dev);
      if (oif === null) throw gone(`pod veth ${e.dev}`);
      const data = routeData(cidr);
      try {
        await netlink().newRoute(
          { ...data, scope: data.family === AF_INET6 ? 'UNIVERSE' : 'LINK', type: 'UNICAST' },
          { dst: ipBuf(cidr.split('/')[0]!), oif },
          { flags: NLM_F_CREATE | NLM_F_REPLACE },
        );
      } catch (err) {
        if (ifindexOf(e.dev) === null) throw gone(`pod veth ${e.dev}`);
        throw err;
      }
      return { ...e, ifindex: oif };
    },
    async remove(cidr, held) {
      const oif = ifindexOf(held.dev);
      // Its veth gone: the route went with it. Its veth re-made: not the route read back.
      if (oif === null || (held.ifindex !== undefined && oif !== held.ifindex)) return;
      try {
        await netlink().delRoute(routeData(cidr), { dst: ipBuf(cidr.split('/')[0]!), oif });
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
    },
  };

  return { links, routes, close: () => nl?.socket.close() };
}
