import { createHash } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { deleteLink, ip, showLink } from './links.js';

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

export async function attachPod(opts: {
  containerId: string; nsPath: string; ifname: string; address: string; mtu: number; routeProtocol: number;
}): Promise<PodAttachment> {
  const host = hostIfnameFor(opts.containerId, opts.ifname);
  // A runtime may retry ADD: rebuild rather than fail on our own leftovers.
  await deleteLink(host);
  await ip(['link', 'add', host, 'mtu', String(opts.mtu), 'type', 'veth', 'peer', 'name', opts.ifname, 'mtu', String(opts.mtu), 'netns', opts.nsPath]);
  try {
    writeFileSync(`/proc/sys/net/ipv4/conf/${host}/proxy_arp`, '1');
    writeFileSync(`/proc/sys/net/ipv4/neigh/${host}/proxy_delay`, '0');
    await ip(['link', 'set', 'dev', host, 'up']);
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
    await ip(['route', 'replace', `${opts.address}/32`, 'dev', host, 'scope', 'link', 'proto', String(opts.routeProtocol)]);
    const [hostLink, podLink] = await Promise.all([showLink(host), showLink(opts.ifname, opts.nsPath)]);
    if (!hostLink || !podLink) throw new Error('veth pair vanished during setup');
    return { hostIfname: host, hostMac: hostLink.address, podIfname: opts.ifname, podMac: podLink.address, address: opts.address };
  } catch (err) {
    await deleteLink(host).catch(() => {});
    throw err;
  }
}

/** Removes the veth pair (and with it the host route). Already gone is success. */
export async function detachPod(opts: { containerId: string; ifname: string }): Promise<void> {
  await deleteLink(hostIfnameFor(opts.containerId, opts.ifname));
}
