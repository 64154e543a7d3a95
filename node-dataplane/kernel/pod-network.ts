import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { classNet, DEFAULT_HOST_PATHS, netSysctl, type HostPaths } from './host-paths.js';
import type { ObservedAttachment, ObservedLink, ObservedRoute } from '../domain/attachment-check.js';
import {
  formatAttachmentRecord,
  isOfContainer,
  parseAttachmentRecord,
  type AttachmentRecord,
} from '../domain/attachment-record.js';
import { POD_HOST_IFNAME, type HostLink } from '../domain/garbage-collection.js';
import netlinkPkg from 'netlink';
import type { RtNetlinkSocket } from 'netlink';
import { run } from '../../lib/exec.js';
import { isNotFound } from './kernel-errors.js';
import { deleteLink, ip, showLink, type LinkInfo } from './links.js';
import { ipBuf } from './netlink-overlay.js';
import {
  AF_INET,
  AF_INET6,
  IFLA_IFNAME,
  IFLA_INFO_DATA,
  IFLA_INFO_KIND,
  IFLA_MTU,
  IFLA_NET_NS_FD,
  NLM_F_CREATE,
  NLM_F_EXCL,
  NLM_F_REPLACE,
  RT_SCOPE_LINK,
  RT_TABLE_MAIN,
  VETH_INFO_PEER,
} from '../../lib/net/netlink-constants.js';

/**
 * The pod side of an attachment: a veth pair whose pod end is created directly inside the pod's namespace under
 * the requested name, the address as a /32, a default route via the link-local gateway (answered by proxy ARP on
 * the host end), and a host route to the pod. Pod-namespace work runs `ip` under nsenter, so this process never
 * changes its own namespace (see DESIGN.md); the host route goes over rtnetlink.
 */
export const POD_GATEWAY = '169.254.1.1';
/**
 * A dual-stack pod's IPv6 gateway: a link-local address on the host end (every pod's host end has the same one; a
 * link-local address belongs to its link), so the pod resolves it by ordinary neighbour discovery, no proxy needed.
 */
export const POD_GATEWAY6 = 'fe80::1';

import type { PodAddresses, PodAttachment } from '../domain/pod-attachment.js';
export type { PodAddresses, PodAttachment };

/** Weft's host-side veth name for a handle: stable, 15 characters, recognisably Weft's. */
export function hostIfnameFor(containerId: string, ifname: string): string {
  return 'weft' + createHash('sha256').update(`${containerId}/${ifname}`).digest('hex').slice(0, 11);
}

export function checkNetnsPath(nsPath: string): void {
  if (!nsPath.startsWith('/') || !existsSync(nsPath)) throw new Error(`network namespace ${nsPath} does not exist`);
}

/**
 * True when the node already has the host end of this attachment's veth (a live attachment, or a crashed ADD's).
 * Read from sysfs's class/net (see host-paths.ts), which shows the agent's own network namespace (the host's on a
 * node; the node's in the local cluster, whose agents start under `ip netns exec`, which mounts /sys for the
 * namespace): no process to spawn.
 */
export async function hostLinkExists(
  containerId: string,
  ifname: string,
  paths: HostPaths = DEFAULT_HOST_PATHS,
): Promise<boolean> {
  return existsSync(classNet(paths, hostIfnameFor(containerId, ifname)));
}

/** A second interface's routing table in the pod: this + its pod end's ifindex (clear of main 254, local 255). */
export const SECOND_TABLE_BASE = 10_000;
/** The priority of a second interface's source rule: before the main table's (32766). */
export const SECOND_RULE_PRIORITY = 1000;

/**
 * The container's Weft interfaces on this node, by the records on their host veths (see
 * domain/attachment-record.ts): how many, and whether one holds the pod's default route. Read from sysfs like
 * hostLinkExists: a directory listing and one small read per pod veth, no process.
 */
export function containerAttachments(
  containerId: string,
  paths: HostPaths = DEFAULT_HOST_PATHS,
): { count: number; defaultRoute: boolean } {
  let names: string[];
  try {
    names = readdirSync(classNet(paths)).filter((n) => POD_HOST_IFNAME.test(n));
  } catch {
    return { count: 0, defaultRoute: false };
  }
  let count = 0;
  let defaultRoute = false;
  for (const n of names) {
    try {
      const r = parseAttachmentRecord(readFileSync(classNet(paths, n, 'ifalias'), 'utf8').trim());
      if (r === null || !isOfContainer(r, containerId)) continue;
      count++;
      defaultRoute ||= r.defaultRoute;
    } catch {
      // gone meanwhile
    }
  }
  return { count, defaultRoute };
}

/**
 * The pod end's MAC when the runtime asks for none: locally administered and derived from the pod's address
 * (0a:58:<IPv4 bytes>, as OVN-Kubernetes does), so Attach need not read it back and CHECK knows what to expect.
 */
export function podMacFor(address: string): string {
  const bytes = address.includes('.')
    ? address.split('.').map(Number)
    : [...createHash('sha256').update(address).digest().subarray(0, 4)];
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
  containerId: string;
  nsPath: string;
  ifname: string;
  address: Promise<PodAddresses>;
  mtu: number;
  routeProtocol: number;
  mac?: string;
  /**
   * Recorded on the host end (its alias): the network, and whether this interface gets the pod's default route (the
   * link route to the gateway and the default route via it, IPv4 and IPv6, in the main table) or is a second interface
   * of the same container: then those routes go to a table of its own (SECOND_TABLE_BASE + the pod end's ifindex,
   * unique in the pod's namespace), which a source rule (`from <its address> lookup T`, priority SECOND_RULE_PRIORITY)
   * gives to traffic from its addresses only, so the pod's default route stays with the first interface, replies
   * leave through the interface the request came in by, and strict reverse-path filtering in the pod accepts it.
   * Absent: no record, and the default route.
   */
  record?: AttachmentRecord;
  /** The pod will be dual-stack (its address will carry ipv6): the host end gets its IPv6 gateway while IPAM allocates. */
  ipv6?: boolean;
  /** Told how long each step took, in ms: `host` (the veth, from the start), `pod` (the pod's namespace and the host route, from the address). */
  onPhase?: (phase: string, ms: number) => void;
  /** Where the host's sysctls and sysfs are (see host-paths.ts); the host end's settings and record go there. */
  paths?: HostPaths;
}): Promise<PodAttachment> {
  const t0 = performance.now();
  const paths = opts.paths ?? DEFAULT_HOST_PATHS;
  const host = hostIfnameFor(opts.containerId, opts.ifname);
  // Order matters on one event loop: the caller has issued IPAM's Allocate; the netlink request goes out here; the
  // pod-side process is spawned (a blocking fork) only when the veth is done, by which time Allocate is on its way.
  let addressError: { err: unknown } | undefined;
  const address = opts.address.catch((err: unknown) => {
    addressError = { err };
    throw err;
  });
  let table: number | undefined;
  const hostSide = createVeth({ host, peer: opts.ifname, mtu: opts.mtu, nsPath: opts.nsPath }).then(async () => {
    // The record, as the host end's alias (RTM_NEWLINK ignores IFLA_IFALIAS when it creates a device). A second
    // interface's table is numbered by its pod end's index (the host end's iflink).
    if (opts.record && !opts.record.defaultRoute)
      table = SECOND_TABLE_BASE + Number(readFileSync(classNet(paths, host, 'iflink'), 'utf8'));
    if (opts.record)
      writeFileSync(
        classNet(paths, host, 'ifalias'),
        formatAttachmentRecord({ ...opts.record, ...(table !== undefined ? { table } : {}) }),
      );
    writeFileSync(netSysctl(paths, 'ipv4', 'conf', host, 'proxy_arp'), '1');
    writeFileSync(netSysctl(paths, 'ipv4', 'neigh', host, 'proxy_delay'), '0');
    if (opts.ipv6) await addHostGateway6(host, paths);
    opts.onPhase?.('host', performance.now() - t0);
  });
  let tAddress = 0;
  const podCommands = Promise.all([address, hostSide]).then(([addrs]) => {
    tAddress = performance.now();
    const podMac = (opts.mac || podMacFor(addrs.ipv4)).toLowerCase();
    // IPv6: the /128 without duplicate address detection (IPAM made it unique; DAD would hold it back for a second),
    // and the default route via the host end's link-local gateway.
    const v6 = addrs.ipv6 ? [`addr add ${addrs.ipv6}/128 dev ${opts.ifname} nodad`] : [];
    // A second interface's routes go to its own table, for traffic from its addresses (see `record`).
    const inTable = table === undefined ? '' : ` table ${table}`;
    const v6Routes = addrs.ipv6 ? [`route add ::/0 via ${POD_GATEWAY6} dev ${opts.ifname}${inTable}`] : [];
    const routes = [
      `route add ${POD_GATEWAY} dev ${opts.ifname} scope link${inTable}`,
      `route add default via ${POD_GATEWAY} dev ${opts.ifname}${inTable}`,
      ...v6Routes,
    ];
    const rules =
      table === undefined
        ? []
        : [
            `rule add from ${addrs.ipv4}/32 lookup ${table} priority ${SECOND_RULE_PRIORITY}`,
            ...(addrs.ipv6 ? [`rule add from ${addrs.ipv6}/128 lookup ${table} priority ${SECOND_RULE_PRIORITY}`] : []),
          ];
    return (
      [
        'link set dev lo up',
        `link set dev ${opts.ifname} address ${podMac}`,
        `addr add ${addrs.ipv4}/32 dev ${opts.ifname}`,
        ...v6,
        `link set dev ${opts.ifname} up`,
        ...routes,
        ...rules,
      ].join('\n') + '\n'
    );
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
    const made = existsSync(classNet(paths, host));
    if (made) await deleteHostLink(host).catch(() => {});
    if (!made && (await showLink(opts.ifname, opts.nsPath).catch(() => null))) {
      throw new Error(`an interface named ${opts.ifname} already exists in network namespace ${opts.nsPath}`, {
        cause: err,
      });
    }
    throw err;
  }
  try {
    const addrs = await address;
    if (addrs.ipv6 && !opts.ipv6) throw new Error(`IPAM gave ${addrs.ipv6} to a pod that was not set up for IPv6`);
    await Promise.all([
      podSide,
      addHostRoute(host, addrs.ipv4, opts.routeProtocol, paths),
      ...(addrs.ipv6 ? [addHostRoute(host, addrs.ipv6, opts.routeProtocol, paths)] : []),
    ]);
    opts.onPhase?.('pod', performance.now() - tAddress);
    const hostMac = readFileSync(classNet(paths, host, 'address'), 'utf8').trim();
    return {
      hostIfname: host,
      hostMac,
      podIfname: opts.ifname,
      podMac: (opts.mac || podMacFor(addrs.ipv4)).toLowerCase(),
      address: addrs.ipv4,
      ...(addrs.ipv6 ? { address6: addrs.ipv6 } : {}),
    };
  } catch (err) {
    try {
      await deleteHostLink(host);
    } catch (undo) {
      throw new Error(`${(err as Error).message}; removing ${host} again also failed (${(undo as Error).message})`, {
        cause: undo,
      });
    }
    if (addressError) throw addressError.err;
    throw err;
  }
}

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
    const linkinfo = Buffer.concat([
      attr(IFLA_INFO_KIND, cstr('veth')),
      attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer)),
    ]);
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
    if (isNotFound(err)) return;
    throw err;
  }
}

/**
 * The host route to a pod (`<address>/32 dev <host veth> scope link proto <Weft's>`, or `/128` for its IPv6 address),
 * over rtnetlink.
 */
async function addHostRoute(host: string, address: string, routeProtocol: number, paths: HostPaths): Promise<void> {
  const oif = Number(readFileSync(classNet(paths, host, 'ifindex'), 'utf8'));
  const v6 = address.includes(':');
  await podNetlink().newRoute(
    {
      family: v6 ? AF_INET6 : AF_INET,
      dstLen: v6 ? 128 : 32,
      table: RT_TABLE_MAIN,
      protocol: routeProtocol,
      scope: v6 ? 'UNIVERSE' : 'LINK',
      type: 'UNICAST',
    },
    { dst: ipBuf(address), oif },
    { flags: NLM_F_CREATE | NLM_F_REPLACE },
  );
}

/**
 * The pod's IPv6 gateway on the host end: `fe80::1/64 nodad` over rtnetlink (IPv6 switched on for the device first:
 * a node whose default is disable_ipv6=1 still serves dual-stack pods).
 */
export async function addHostGateway6(host: string, paths: HostPaths): Promise<void> {
  writeFileSync(netSysctl(paths, 'ipv6', 'conf', host, 'disable_ipv6'), '0');
  const index = Number(readFileSync(classNet(paths, host, 'ifindex'), 'utf8'));
  await podNetlink().newAddress(
    { family: AF_INET6, prefixlen: 64, flags: { nodad: true, permanent: true }, scope: RT_SCOPE_LINK, index },
    { local: ipBuf(POD_GATEWAY6), address: ipBuf(POD_GATEWAY6) },
    { flags: NLM_F_CREATE | NLM_F_REPLACE },
  );
}

/** The node's veth devices with the attachment record on each (GC picks Weft's pod interfaces among them). */
export async function listVeths(): Promise<HostLink[]> {
  const links = JSON.parse(await ip(['-j', 'link', 'show', 'type', 'veth'])) as { ifname: string; ifalias?: string }[];
  return links.map((l) => ({ name: l.ifname, record: parseAttachmentRecord(l.ifalias) }));
}

/**
 * Reads back what attachPod made for one attachment (for CHECK): the pod end, its routes, the host end, its
 * proxy_arp setting and its routes. Reads only; a missing piece is reported as missing, not as an error.
 */
export async function observeAttachment(opts: {
  nsPath: string;
  ifname: string;
  hostIfname: string;
  /** Where the host's sysctls and sysfs are (see host-paths.ts). */
  paths?: HostPaths;
}): Promise<Omit<ObservedAttachment, 'allocation'>> {
  const paths = opts.paths ?? DEFAULT_HOST_PATHS;
  const netnsExists = opts.nsPath.startsWith('/') && existsSync(opts.nsPath);
  let hostRecord: AttachmentRecord | null = null;
  try {
    hostRecord = parseAttachmentRecord(readFileSync(classNet(paths, opts.hostIfname, 'ifalias'), 'utf8').trim());
  } catch {
    // no host end: reported below
  }
  // A second interface's routes are in its own table.
  const table = hostRecord?.table !== undefined ? String(hostRecord.table) : 'main';
  const [podInfo, podRoutes, podRoutes6, hostInfo, hostRoutes, hostRoutes6] = await Promise.all([
    netnsExists ? showLinkWithAddresses(opts.ifname, opts.nsPath) : null,
    netnsExists ? routesThrough(opts.ifname, opts.nsPath, 4, table) : [],
    netnsExists ? routesThrough(opts.ifname, opts.nsPath, 6, table) : [],
    showLinkWithAddresses(opts.hostIfname),
    routesThrough(opts.hostIfname),
    routesThrough(opts.hostIfname, undefined, 6),
  ]);
  let hostProxyArp: boolean | null = null;
  try {
    hostProxyArp = readFileSync(netSysctl(paths, 'ipv4', 'conf', opts.hostIfname, 'proxy_arp'), 'utf8').trim() === '1';
  } catch {
    // The device is gone, or the sysctl unreadable: reported as null.
  }
  return {
    netnsExists,
    hostRecord,
    podLink: podInfo ? observedLink(podInfo) : null,
    podRoutes,
    podRoutes6,
    hostLink: hostInfo ? observedLink(hostInfo) : null,
    hostProxyArp,
    hostRoutes,
    hostRoutes6,
  };
}

async function showLinkWithAddresses(name: string, nsPath?: string): Promise<LinkInfo | null> {
  try {
    return (JSON.parse(await ip(['-j', '-d', 'addr', 'show', 'dev', name], { nsPath })) as LinkInfo[])[0] ?? null;
  } catch (err) {
    if (isNotFound(err)) return null;
    throw err;
  }
}

/** IPv4 (or IPv6) routes of a table (main by default) whose device is `dev` (iproute2 leaves "dev" out of them; it is filled in here). */
async function routesThrough(
  dev: string,
  nsPath?: string,
  family: 4 | 6 = 4,
  table = 'main',
): Promise<ObservedRoute[]> {
  let out: string;
  try {
    out = await ip(['-j', `-${family}`, 'route', 'show', 'table', table, 'dev', dev], { nsPath });
  } catch (err) {
    if (isNotFound(err)) return [];
    throw err;
  }
  const routes = JSON.parse(out || '[]') as {
    dst: string;
    gateway?: string;
    scope?: string;
    protocol?: string | number;
  }[];
  return routes.map((r) => ({
    dst: r.dst,
    gateway: r.gateway ?? '',
    dev,
    scope: r.scope ?? 'global',
    protocol: String(r.protocol ?? 'boot'),
  }));
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
export async function detachPod(opts: {
  containerId: string;
  ifname: string;
  nsPath?: string;
  paths?: HostPaths;
}): Promise<void> {
  const host = hostIfnameFor(opts.containerId, opts.ifname);
  const paths = opts.paths ?? DEFAULT_HOST_PATHS;
  // A second interface's source rules stay in the pod's namespace when its veth goes (its table empties with it):
  // they are removed too, when the namespace is still there.
  let record: AttachmentRecord | null = null;
  try {
    record = parseAttachmentRecord(readFileSync(classNet(paths, host, 'ifalias'), 'utf8').trim());
  } catch {
    // no veth (already gone): nothing of it to find
  }
  const table = record?.table;
  await Promise.all([
    deleteLink(host),
    table !== undefined && opts.nsPath && existsSync(opts.nsPath)
      ? run('nsenter', [
          `--net=${opts.nsPath}`,
          'sh',
          '-c',
          `while ip -4 rule del lookup ${table} 2>/dev/null; do :; done; while ip -6 rule del lookup ${table} 2>/dev/null; do :; done; true`,
        ]).catch(() => {})
      : undefined,
  ]);
}
