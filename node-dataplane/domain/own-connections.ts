import { formatAddress, parseAddress } from '../../lib/net/ip.js';

/**
 * Which TCP connections to destroy when the node's underlay address changes, purely. The agent's own connections
 * from the old address (its gRPC channels to the control plane) are dead but would be noticed only by keepalive
 * (up to 30 s); destroyed (`ss -K`), they reconnect from the new address at once. Only the agent's own sockets are
 * chosen, by their inode (from /proc/self/fd), and each is named to `ss -K` by its exact four-tuple, so no other
 * program's connection (kubelet's, an ssh session) bound to the old address is touched.
 */
export interface TcpSocket {
  family: 4 | 6;
  local: string;
  localPort: number;
  remote: string;
  remotePort: number;
  /** The kernel's TCP state (1 ESTABLISHED … 10 LISTEN). */
  state: number;
  inode: number;
}

const LISTEN = 10;

/** One address of /proc/net/tcp{,6}: 32-bit words in hex, each in the host's byte order. */
function procAddress(hex: string, family: 4 | 6, littleEndian: boolean): string {
  let value = 0n;
  for (let w = 0; w < hex.length; w += 8) {
    const word = hex.slice(w, w + 8).match(/../g)!;
    for (const byte of littleEndian ? word.reverse() : word) value = (value << 8n) | BigInt(parseInt(byte, 16));
  }
  return formatAddress(family, value);
}

/** The sockets of `/proc/self/net/tcp` (family 4) or `tcp6` (family 6). */
export function parseProcNetTcp(text: string, family: 4 | 6, littleEndian: boolean): TcpSocket[] {
  const out: TcpSocket[] = [];
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    const local = /^([0-9A-F]+):([0-9A-F]{4})$/i.exec(f[1] ?? '');
    const remote = /^([0-9A-F]+):([0-9A-F]{4})$/i.exec(f[2] ?? '');
    if (!local || !remote || !/^\d+$/.test(f[9] ?? '')) continue;
    out.push({
      family,
      local: procAddress(local[1]!, family, littleEndian),
      localPort: parseInt(local[2]!, 16),
      remote: procAddress(remote[1]!, family, littleEndian),
      remotePort: parseInt(remote[2]!, 16),
      state: parseInt(f[3]!, 16),
      inode: Number(f[9]),
    });
  }
  return out;
}

/** The agent's own connections (by socket inode) from `address`, an IPv4 address (also as `::ffff:` on IPv6 sockets); listeners are kept. */
export function ownConnectionsFrom(
  sockets: readonly TcpSocket[],
  ownInodes: ReadonlySet<number>,
  address: string,
): TcpSocket[] {
  const v4 = parseAddress(address).value;
  const mapped = formatAddress(6, (0xffffn << 32n) | v4);
  return sockets.filter(
    (s) =>
      s.inode !== 0 &&
      ownInodes.has(s.inode) &&
      s.state !== LISTEN &&
      (s.family === 4 ? s.local === address : s.local === mapped),
  );
}

/** `ss` arguments that destroy exactly these TCP connections (each by its four-tuple); null when there are none. */
export function destroyArgs(sockets: readonly TcpSocket[]): string[] | null {
  if (sockets.length === 0) return null;
  const ep = (family: 4 | 6, a: string, port: number) => (family === 4 ? `${a}:${port}` : `[${a}]:${port}`);
  const terms = sockets.flatMap((s, i) => [
    ...(i > 0 ? ['or'] : []),
    '(',
    'src',
    ep(s.family, s.local, s.localPort),
    'and',
    'dst',
    ep(s.family, s.remote, s.remotePort),
    ')',
  ]);
  return ['-K', '-t', '-n', ...terms];
}
