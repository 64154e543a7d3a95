import { parseAddress, parseCidr, type Cidr } from '../../lib/net/ip.js';

/**
 * Which interface and address carry the overlay: pure, from what the kernel reports. The operator says it by
 * (first that is set wins):
 *   1. an address (WEFT_UNDERLAY_ADDRESS): the interface holding it;
 *   2. CIDRs (WEFT_UNDERLAY_CIDR, comma-separated): the first interface with a global IPv4 address inside one;
 *   3. interface names or patterns (WEFT_UNDERLAY_INTERFACE, comma-separated, `*` and `?` as in shell globs, tried in
 *      the order given): the first matching interface with a global IPv4 address;
 *   4. the route to an address (WEFT_UNDERLAY_ROUTE_TO): that route's device and source address;
 * and with none of these, the default route's device, else the first interface with a global IPv4 address.
 * The MTU comes with the interface; pods get it less the encapsulation overhead.
 */
export interface UnderlayWanted {
  address: string;
  cidrs: string;
  interfaces: string;
  routeTo: string;
}

export interface UnderlayLink {
  ifindex: number;
  ifname: string;
  mtu: number;
  addr_info?: { family: string; local: string; prefixlen: number; scope: string }[];
}

export interface UnderlayChoice {
  interface: string;
  ifindex: number;
  address: string;
  /** Prefix length of the address on the interface: the subnet direct routing reaches. */
  prefixLength: number;
  mtu: number;
  /** How it was chosen, for the start-up log. */
  by: string;
}

export class UnderlayError extends Error {}

const globals = (l: UnderlayLink) => (l.addr_info ?? []).filter((a) => a.family === 'inet' && a.scope === 'global');

function globToRegExp(glob: string): RegExp {
  return new RegExp(
    `^${glob
      .replace(/[.+^${}()|[\]\\]/g, '\\$&')
      .replace(/\*/g, '.*')
      .replace(/\?/g, '.')}$`,
  );
}

function within(c: Cidr, address: string): boolean {
  const a = parseAddress(address);
  if (a.family !== c.family) return false;
  const shift = BigInt((c.family === 4 ? 32 : 128) - c.prefixLength);
  return a.value >> shift === c.base >> shift;
}

const list = (text: string) =>
  text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);

/** Checks the settings before anything is read from the kernel: a bad CIDR or address is the operator's to fix. */
export function validateUnderlayWanted(w: UnderlayWanted): void {
  const bad = (setting: string, value: string, why: string) =>
    new UnderlayError(`${setting}=${JSON.stringify(value)}: ${why}`);
  if (w.address) {
    try {
      if (parseAddress(w.address).family !== 4) throw new Error('IPv6');
    } catch {
      throw bad('WEFT_UNDERLAY_ADDRESS', w.address, 'not an IPv4 address');
    }
  }
  for (const c of list(w.cidrs)) {
    try {
      parseCidr(c);
    } catch (err) {
      throw bad('WEFT_UNDERLAY_CIDR', w.cidrs, (err as Error).message);
    }
  }
  if (w.routeTo) {
    try {
      parseAddress(w.routeTo);
    } catch {
      throw bad('WEFT_UNDERLAY_ROUTE_TO', w.routeTo, 'not an IP address');
    }
  }
}

export function chooseUnderlay(
  links: readonly UnderlayLink[],
  w: UnderlayWanted,
  routes: { routeTo?: { dev?: string; prefsrc?: string } | null; defaultDev?: string | null },
): UnderlayChoice {
  const pick = (link: UnderlayLink, address: string, by: string): UnderlayChoice => ({
    interface: link.ifname,
    ifindex: link.ifindex,
    address,
    mtu: link.mtu,
    by,
    prefixLength: (link.addr_info ?? []).find((a) => a.family === 'inet' && a.local === address)?.prefixlen ?? 32,
  });
  if (w.address) {
    const link = links.find((l) => (l.addr_info ?? []).some((a) => a.local === w.address));
    if (!link) throw new UnderlayError(`no interface holds WEFT_UNDERLAY_ADDRESS ${w.address}`);
    return pick(link, w.address, `address ${w.address}`);
  }
  if (list(w.cidrs).length > 0) {
    const cidrs = list(w.cidrs).map((c) => parseCidr(c));
    for (const c of cidrs) {
      for (const l of links) {
        const a = globals(l).find((x) => within(c, x.local));
        if (a) return pick(l, a.local, `CIDR ${w.cidrs}`);
      }
    }
    throw new UnderlayError(`no interface has a global IPv4 address inside WEFT_UNDERLAY_CIDR ${w.cidrs}`);
  }
  if (list(w.interfaces).length > 0) {
    for (const pattern of list(w.interfaces)) {
      const re = globToRegExp(pattern);
      const l = links.find((x) => re.test(x.ifname) && globals(x).length > 0);
      if (l) return pick(l, globals(l)[0]!.local, `interface ${pattern}`);
    }
    throw new UnderlayError(`no interface matching WEFT_UNDERLAY_INTERFACE ${w.interfaces} has a global IPv4 address`);
  }
  if (w.routeTo) {
    const r = routes.routeTo;
    const l = r?.dev ? links.find((x) => x.ifname === r.dev) : undefined;
    if (!l) throw new UnderlayError(`no route to WEFT_UNDERLAY_ROUTE_TO ${w.routeTo}`);
    const address = r!.prefsrc ?? globals(l)[0]?.local;
    if (!address)
      throw new UnderlayError(`the route to ${w.routeTo} leaves through ${l.ifname}, which has no IPv4 address`);
    return pick(l, address, `route to ${w.routeTo}`);
  }
  const byDefault = routes.defaultDev
    ? links.find((x) => x.ifname === routes.defaultDev && globals(x).length > 0)
    : undefined;
  if (byDefault) return pick(byDefault, globals(byDefault)[0]!.local, 'default route');
  const first = links.find((x) => globals(x).length > 0);
  if (!first)
    throw new UnderlayError(
      'no interface has a global IPv4 address; set WEFT_UNDERLAY_ADDRESS, WEFT_UNDERLAY_CIDR or WEFT_UNDERLAY_INTERFACE',
    );
  return pick(first, globals(first)[0]!.local, 'first global address');
}
