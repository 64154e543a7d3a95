import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import type { ObservedAttachment, ObservedLink, ObservedRoute } from '../domain/attachment-check.js';
import netlinkPkg from 'netlink';
import type { RtNetlinkSocket } from 'netlink';
import { deleteLink, ip, showLink, type LinkInfo } from './links.js';

/**
 * The pod side of an attachment: a veth pair whose pod end is created directly inside the pod's namespace under
 * the requested name, the address as a /32, a default route via the link-local gateway (answered by proxy ARP on
 * the host end), and a host route to the pod. Pod-namespace work runs `ip` under nsenter, so this process never
 * changes its own namespace (see DESIGN.md); the host route goes over rtnetlink.
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
 * Makes the pod's interface while its address is being allocated. The caller has made sure the host end does not
 * exist yet, so everything made here is this call's own: on any failure it is all removed again (deleting the host
 * end takes the pod end and the host route with it) before the error is thrown, and never before `address` has
 * settled, so that the caller's release comes after the allocation it undoes. When `address` rejects, that same
 * error is thrown.
 *
 * What runs when (see DESIGN.md, "Kernel choices"): at once, one rtnetlink request makes the veth pair (the pod end
 * directly in the pod's namespace) with the host end up; then `ip -batch` under nsenter starts in the pod's
 * namespace and waits for its commands; once the address is there too, the pod end gets its MAC, the /32, up and
 * its routes, and the host route is added over rtnetlink. Only that last step waits for IPAM.
 */
export async function attachPod(opts: {
  containerId: string; nsPath: string; ifname: string; address: Promise<string>; mtu: number; routeProtocol: number; mac?: string;
  /** Told how long each step took, in ms: `host` (the veth, from the start), `pod` (the pod's namespace and the host route, from the address). */
  onPhase?: (phase: string, ms: number) => void;
}): Promise<PodAttachment> {
  const t0 = performance.now();
  const host = hostIfnameFor(opts.containerId, opts.ifname);
  // Order matters on one event loop: the caller has issued IPAM's Allocate; the netlink request goes out here; the
  // pod-side process is spawned (a blocking fork) only when the veth is done, by which time Allocate is on its way.
  let addressError: { err: unknown } | undefined;
  const address = opts.address.catch((err: unknown) => {
    addressError = { err };
    throw err;
  });
  const hostSide = createVeth({ host, peer: opts.ifname, mtu: opts.mtu, nsPath: opts.nsPath }).then(() => {
    writeFileSync(`/proc/sys/net/ipv4/conf/${host}/proxy_arp`, '1');
    writeFileSync(`/proc/sys/net/ipv4/neigh/${host}/proxy_delay`, '0');
    opts.onPhase?.('host', performance.now() - t0);
  });
  let tAddress = 0;
  const podCommands = Promise.all([address, hostSide]).then(([addr]) => {
    tAddress = performance.now();
    const podMac = (opts.mac || podMacFor(addr)).toLowerCase();
    return [
      'link set dev lo up',
      `link set dev ${opts.ifname} address ${podMac}`,
      `addr add ${addr}/32 dev ${opts.ifname}`,
      `link set dev ${opts.ifname} up`,
      `route add ${POD_GATEWAY} dev ${opts.ifname} scope link`,
      `route add default via ${POD_GATEWAY} dev ${opts.ifname}`,
    ].join('\n') + '\n';
  });
  // Started once the veth is there, so its start-up (two execs) overlaps the rest of the allocation; it reads nothing
  // until podCommands resolves. Not at once: spawning forks this process, which blocks its event loop for a few ms,
  // and at once that would hold back IPAM's Allocate request before grpc-js has written it.
  const podSide = hostSide.then(() => ip(['-batch', '-'], { nsPath: opts.nsPath, input: podCommands }));
  // Awaited below when they matter (a failure after another one is not reported twice). Without these, a failed
  // veth would leave podCommands' rejection unhandled, and Node ends the process on an unhandled rejection.
  podCommands.catch(() => {});
  podSide.catch(() => {});

  try {
    await hostSide;
  } catch (err) {
    // Undo whatever of the batch ran; say why in the runtime's terms when we can. Wait for the address first.
    await address.catch(() => {});
    const made = existsSync(`/sys/class/net/${host}`);
    if (made) await deleteHostLink(host).catch(() => {});
    if (!made && (await showLink(opts.ifname, opts.nsPath).catch(() => null))) {
      throw new Error(`an interface named ${opts.ifname} already exists in network namespace ${opts.nsPath}`);
    }
    throw err;
  }
  try {
    const addr = await address;
    await Promise.all([podSide, addHostRoute(host, addr, opts.routeProtocol)]);
    opts.onPhase?.('pod', performance.now() - tAddress);
    const hostMac = readFileSync(`/sys/class/net/${host}/address`, 'utf8').trim();
    return { hostIfname: host, hostMac, podIfname: opts.ifname, podMac: (opts.mac || podMacFor(addr)).toLowerCase(), address: addr };
  } catch (err) {
    try {
      await deleteHostLink(host);
    } catch (undo) {
      throw new Error(`${(err as Error).message}; removing ${host} again also failed (${(undo as Error).message})`);
    }
    if (addressError) throw addressError.err;
    throw err;
  }
}

const AF_INET = 2;
const MAIN_TABLE = 254;
const NLM_F_REPLACE = 0x100;
const NLM_F_EXCL = 0x200;
const NLM_F_CREATE = 0x400;
const IFLA_IFNAME = 3;
const IFLA_MTU = 4;
const IFLA_NET_NS_FD = 28;
const IFLA_INFO_KIND = 1;
const IFLA_INFO_DATA = 2;
const VETH_INFO_PEER = 1;
let rtnl: RtNetlinkSocket | undefined;

/**
 * The agent's rtnetlink socket for pod interfaces, opened on first use and kept (unreferenced, so it never holds the
 * process open). It lives in the agent's own namespace; the pod end reaches the pod's by IFLA_NET_NS_FD.
 */
function podNetlink(): RtNetlinkSocket {
  return (rtnl ??= netlinkPkg.createRtNetlink());
}

/** One netlink attribute: length, type, payload, padded to 4 bytes. */
function attr(type: number, payload: Buffer): Buffer {
  const out = Buffer.alloc(4 + Math.ceil(payload.length / 4) * 4);
  out.writeUInt16LE(4 + payload.length, 0);
  out.writeUInt16LE(type, 2);
  payload.copy(out, 4);
  return out;
}
const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n, 0);
  return b;
};
const cstr = (s: string) => Buffer.from(`${s}\0`);

/**
 * `ip link add <host> mtu M up type veth peer name <peer> mtu M netns <nsPath>` as one RTM_NEWLINK: the pair exists
 * whole or not at all, with the host end up. The package has no encoder for veth's peer, so IFLA_LINKINFO is built
 * here: kind "veth", and as its data the peer's ifinfomsg and attributes (name, MTU, the namespace's descriptor).
 */
async function createVeth(opts: { host: string; peer: string; mtu: number; nsPath: string }): Promise<void> {
  const nsFd = openSync(opts.nsPath, 'r');
  try {
    const peer = Buffer.concat([
      netlinkPkg.rt.formatLink({}),
      attr(IFLA_IFNAME, cstr(opts.peer)),
      attr(IFLA_MTU, u32(opts.mtu)),
      attr(IFLA_NET_NS_FD, u32(nsFd)),
    ]);
    const linkinfo = Buffer.concat([attr(IFLA_INFO_KIND, cstr('veth')), attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer))]);
    await podNetlink().newLink(
      { flags: { up: true }, change: { up: true } },
      { ifname: opts.host, mtu: opts.mtu, linkinfo },
      { flags: NLM_F_CREATE | NLM_F_EXCL },
    );
  } finally {
    closeSync(nsFd);
  }
}

/** Deletes a host veth (and with it its pod end and host route) over rtnetlink. Already gone is success. */
async function deleteHostLink(name: string): Promise<void> {
  try {
    await podNetlink().delLink({}, { ifname: name });
  } catch (err) {
    if (/ENODEV|ENOENT/.test(String((err as Error).message))) return;
    throw err;
  }
}

/**
 * The host route to a pod (`<address>/32 dev <host veth> scope link proto <Weft's>`), over rtnetlink.
 */
async function addHostRoute(host: string, address: string, routeProtocol: number): Promise<void> {
  const oif = Number(readFileSync(`/sys/class/net/${host}/ifindex`, 'utf8'));
  const dst = Buffer.from(address.split('.').map(Number));
  await podNetlink().newRoute(
    { family: AF_INET, dstLen: 32, table: MAIN_TABLE, protocol: routeProtocol, scope: 'LINK', type: 'UNICAST' },
    { dst, oif },
    { flags: NLM_F_CREATE | NLM_F_REPLACE },
  );
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

/**
 * Removes the veth pair (and with it the host route). Already gone is success. Through `ip link del` in a child
 * process, not the agent's rtnetlink socket: the kernel handles a netlink request inside the sender's `sendmsg`, and
 * deleting a device waits there for RCU grace periods (about 20 ms on the test machines), during which the agent's
 * event loop would stand still: every other pod's Attach, and this Detach's own IPAM Release, waited behind it.
 */
export async function detachPod(opts: { containerId: string; ifname: string }): Promise<void> {
  await deleteLink(hostIfnameFor(opts.containerId, opts.ifname));
}
