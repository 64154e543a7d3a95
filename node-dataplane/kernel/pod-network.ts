import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import type { ObservedAttachment, ObservedLink, ObservedRoute } from '../domain/attachment-check.js';
import { deleteLink, ip, showLink, type LinkInfo } from './links.js';

/**
 * The pod side of an attachment: a veth pair whose pod end is created directly inside the pod's namespace under
 * the requested name, the address as a /32, a default route via the link-local gateway (answered by proxy ARP on
 * the host end), and a host route to the pod. Pod-namespace work runs `ip` under nsenter, so this process never
 * changes its own namespace (see DESIGN.md).
 */
export const POD_GATEWAY = '169.254.1.1';

export interface PodAttachment {
  hostIfname: string;
  hostMac: string;
  podIfname: string;
  podMac: string;
  address: string;
}

/** Weft's host-side veth name for a handle: stable, 15 characters, recognisably Weft's. */
export function hostIfnameFor(containerId: string, ifname: string): string {
  return 'weft' + createHash('sha256').update(`${containerId}/${ifname}`).digest('hex').slice(0, 11);
}

export function checkNetnsPath(nsPath: string): void {
  if (!nsPath.startsWith('/') || !existsSync(nsPath)) throw new Error(`network namespace ${nsPath} does not exist`);
}

/**
 * True when the node already has the host end of this attachment's veth (a live attachment, or a crashed ADD's).
 * Read from /sys/class/net, which shows the agent's own network namespace (the host's on a node; the node's in the
 * local cluster, whose agents start under `ip netns exec`, which mounts /sys for the namespace): no process to spawn.
 */
export async function hostLinkExists(containerId: string, ifname: string): Promise<boolean> {
  return existsSync(`/sys/class/net/${hostIfnameFor(containerId, ifname)}`);
}

/**
 * The pod end's MAC when the runtime asks for none: locally administered and derived from the pod's address
 * (0a:58:<IPv4 bytes>, as OVN-Kubernetes does), so Attach need not read it back and CHECK knows what to expect.
 */
export function podMacFor(address: string): string {
  const bytes = address.includes('.') ? address.split('.').map(Number) : [...createHash('sha256').update(address).digest().subarray(0, 4)];
  return ['0a', '58', ...bytes.map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

/**
 * Makes the pod's interface. The caller has made sure the host end does not exist yet, so everything made here is
 * this call's own: on any failure it is all removed again (deleting the host end takes the pod end and the host
 * route with it) before the error is thrown.
 */
export async function attachPod(opts: {
  containerId: string; nsPath: string; ifname: string; address: string; mtu: number; routeProtocol: number; mac?: string;
  /** Told how long each step took, in ms: `host` (the veth and host route), `pod` (the pod's namespace). */
  onPhase?: (phase: string, ms: number) => void;
}): Promise<PodAttachment> {
  let t0 = performance.now();
  const host = hostIfnameFor(opts.containerId, opts.ifname);
  const podMac = opts.mac || podMacFor(opts.address);
  // Two `ip -batch` runs (one on the node, one in the pod's namespace) instead of a process per step: each spawn
  // costs milliseconds, and a pod's ADD waits for all of them.
  try {
    await ip(['-batch', '-'], {
      input: [
        `link add ${host} mtu ${opts.mtu} type veth peer name ${opts.ifname} address ${podMac} mtu ${opts.mtu} netns ${opts.nsPath}`,
        `link set dev ${host} up`,
        `route replace ${opts.address}/32 dev ${host} scope link proto ${opts.routeProtocol}`,
      ].join('\n') + '\n',
    });
  } catch (err) {
    // Undo whatever of the batch ran; say why in the runtime's terms when we can.
    const made = existsSync(`/sys/class/net/${host}`);
    if (made) await deleteLink(host).catch(() => {});
    if (!made && (await showLink(opts.ifname, opts.nsPath).catch(() => null))) {
      throw new Error(`an interface named ${opts.ifname} already exists in network namespace ${opts.nsPath}`);
    }
    throw err;
  }
  opts.onPhase?.('host', performance.now() - t0);
  t0 = performance.now();
  try {
    writeFileSync(`/proc/sys/net/ipv4/conf/${host}/proxy_arp`, '1');
    writeFileSync(`/proc/sys/net/ipv4/neigh/${host}/proxy_delay`, '0');
    await ip(['-batch', '-'], {
      nsPath: opts.nsPath,
      input: [
        'link set dev lo up',
        `addr add ${opts.address}/32 dev ${opts.ifname}`,
        `link set dev ${opts.ifname} up`,
        `route add ${POD_GATEWAY} dev ${opts.ifname} scope link`,
        `route add default via ${POD_GATEWAY} dev ${opts.ifname}`,
      ].join('\n') + '\n',
    });
    const hostMac = readFileSync(`/sys/class/net/${host}/address`, 'utf8').trim();
    opts.onPhase?.('pod', performance.now() - t0);
    return { hostIfname: host, hostMac, podIfname: opts.ifname, podMac: podMac.toLowerCase(), address: opts.address };
  } catch (err) {
    try {
      await deleteLink(host);
    } catch (undo) {
      throw new Error(`${(err as Error).message}; removing ${host} again also failed (${(undo as Error).message})`);
    }
    throw err;
  }
}

/** Names of the node's veth devices (GC picks Weft's pod interfaces among them). */
export async function listVethNames(): Promise<string[]> {
  const links = JSON.parse(await ip(['-j', 'link', 'show', 'type', 'veth'])) as { ifname: string }[];
  return links.map((l) => l.ifname);
}

/**
 * Reads back what attachPod made for one attachment (for CHECK): the pod end, its routes, the host end, its
 * proxy_arp setting and its routes. Reads only; a missing piece is reported as missing, not as an error.
 */
export async function observeAttachment(opts: {
  nsPath: string; ifname: string; hostIfname: string;
}): Promise<Omit<ObservedAttachment, 'allocation'>> {
  const netnsExists = opts.nsPath.startsWith('/') && existsSync(opts.nsPath);
  const [podInfo, podRoutes, hostInfo, hostRoutes] = await Promise.all([
    netnsExists ? showLinkWithAddresses(opts.ifname, opts.nsPath) : null,
    netnsExists ? routesThrough(opts.ifname, opts.nsPath) : [],
    showLink(opts.hostIfname),
    routesThrough(opts.hostIfname),
  ]);
  let hostProxyArp: boolean | null = null;
  try {
    hostProxyArp = readFileSync(`/proc/sys/net/ipv4/conf/${opts.hostIfname}/proxy_arp`, 'utf8').trim() === '1';
  } catch {
    // The device is gone, or the sysctl unreadable: reported as null.
  }
  return {
    netnsExists,
    podLink: podInfo ? observedLink(podInfo) : null,
    podRoutes,
    hostLink: hostInfo ? observedLink(hostInfo) : null,
    hostProxyArp,
    hostRoutes,
  };
}

async function showLinkWithAddresses(name: string, nsPath: string): Promise<LinkInfo | null> {
  try {
    return (JSON.parse(await ip(['-j', '-d', 'addr', 'show', 'dev', name], { nsPath })) as LinkInfo[])[0] ?? null;
  } catch (err) {
    if (/does not exist|Cannot find device/.test((err as Error).message)) return null;
    throw err;
  }
}

/** Main-table IPv4 routes whose device is `dev` (iproute2 leaves "dev" out of them; it is filled in here). */
async function routesThrough(dev: string, nsPath?: string): Promise<ObservedRoute[]> {
  let out: string;
  try {
    out = await ip(['-j', '-4', 'route', 'show', 'table', 'main', 'dev', dev], { nsPath });
  } catch (err) {
    if (/does not exist|Cannot find device/.test((err as Error).message)) return [];
    throw err;
  }
  const routes = JSON.parse(out || '[]') as { dst: string; gateway?: string; scope?: string; protocol?: string | number }[];
  return routes.map((r) => ({ dst: r.dst, gateway: r.gateway ?? '', dev, scope: r.scope ?? 'global', protocol: String(r.protocol ?? 'boot') }));
}

function observedLink(l: LinkInfo & { link_index?: number }): ObservedLink {
  return {
    ifindex: l.ifindex,
    kind: l.linkinfo?.info_kind ?? '',
    up: l.flags.includes('UP'),
    mac: l.address,
    peerIfindex: typeof l.link_index === 'number' ? l.link_index : null,
    addresses: (l.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`),
  };
}

/** Removes the veth pair (and with it the host route). Already gone is success. */
export async function detachPod(opts: { containerId: string; ifname: string }): Promise<void> {
  await deleteLink(hostIfnameFor(opts.containerId, opts.ifname));
}
