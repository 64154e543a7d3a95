import { ip, listAddresses } from './links.js';

export interface DetectedUnderlay {
  interface: string;
  ifindex: number;
  address: string;
  /** Prefix length of the address on the interface: the underlay subnet that direct routing reaches (32 when the configured address is not on the interface). */
  prefixLength: number;
  mtu: number;
}

/** Finds the underlay interface and address: as configured, else the default route's interface, else the first global IPv4. */
export async function detectUnderlay(want: { interface: string; address: string }): Promise<DetectedUnderlay> {
  const links = await listAddresses();
  let name = want.interface;
  if (!name && want.address) name = links.find((l) => l.addr_info?.some((a) => a.local === want.address))?.ifname ?? '';
  if (!name) {
    const routes = JSON.parse(await ip(['-j', 'route', 'show', 'default'])) as { dev?: string }[];
    name = routes[0]?.dev ?? '';
  }
  if (!name) name = links.find((l) => l.addr_info?.some((a) => a.family === 'inet' && a.scope === 'global'))?.ifname ?? '';
  const link = links.find((l) => l.ifname === name);
  if (!link) throw new Error(`underlay interface ${JSON.stringify(name)} not found; set WEFT_UNDERLAY_INTERFACE`);
  const address = want.address || link.addr_info?.find((a) => a.family === 'inet' && a.scope === 'global')?.local;
  if (!address) throw new Error(`underlay interface ${name} has no IPv4 address; set WEFT_UNDERLAY_ADDRESS`);
  const prefixLength = link.addr_info?.find((a) => a.family === 'inet' && a.local === address)?.prefixlen ?? 32;
  return { interface: name, ifindex: link.ifindex, address, prefixLength, mtu: link.mtu };
}
