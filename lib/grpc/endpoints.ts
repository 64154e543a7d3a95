import { isIP } from 'node:net';

/**
 * Where the control plane answers, as its clients (agents, the CLI, the Kubernetes controller) are told: one endpoint,
 * or several replicas, turned into one gRPC target that grpc-js balances and fails over itself (no failover of our
 * own). Accepted:
 *
 * - `unix:///path`: the local socket (alone);
 * - `host:port`: a DNS name (or one address); grpc-js resolves it and uses every address it resolves to, so a name
 *   with one record per replica (a Kubernetes headless Service, round-robin DNS) is a list of replicas;
 * - `a:port,b:port,…`: several replicas by address, all IPv4 or all IPv6 (`[fd00::1]:7400`): grpc-js's `ipv4:` and
 *   `ipv6:` targets hold one family. Several DNS names are refused: give one name that resolves to all of them.
 *
 * Every channel uses `pick_first` over the addresses in an order of its own (CONTROL_PLANE_SERVICE_CONFIG and
 * spreadTarget, both applied by createClient): each client keeps its calls and watch streams on one replica, clients
 * spread over the replicas, and when that
 * replica goes (its connection fails, or keepalive gives up on it) the channel connects to another and the next
 * calls and reopened streams go there. Watch streams then resume from the revision they had (agents' sources).
 * The server's name checked under TLS is `weft-control-plane` whatever address was dialled (credentials.ts).
 */
export function controlPlaneGrpcTarget(endpoints: string): string {
  const items = endpoints
    .split(',')
    .map((e) => e.trim())
    .filter((e) => e !== '');
  const wanted = 'expected host:port, unix:///path, or several ip:port separated by commas';
  if (items.length === 0) throw new Error(`no control-plane endpoint given: ${wanted}`);
  if (items.some((e) => e.startsWith('unix:'))) {
    if (items.length > 1) throw new Error(`a unix socket endpoint stands alone: ${JSON.stringify(endpoints)}`);
    return items[0]!;
  }
  const parsed = items.map((e) => {
    const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(e);
    const port = m ? Number(m[3]) : NaN;
    if (!m || port < 1 || port > 65535)
      throw new Error(`control-plane endpoint ${JSON.stringify(e)} is not host:port (an IPv6 address in brackets)`);
    const host = (m[1] ?? m[2])!;
    if (m[1] !== undefined && isIP(host) !== 6)
      throw new Error(`control-plane endpoint ${JSON.stringify(e)}: only an IPv6 address goes in brackets`);
    return { host, port, family: isIP(host) };
  });
  if (parsed.length === 1) {
    const p = parsed[0]!;
    return `dns:${p.family === 6 ? `[${p.host}]` : p.host}:${p.port}`;
  }
  const families = new Set(parsed.map((p) => p.family));
  if (families.has(0))
    throw new Error(
      `several control-plane endpoints must be IP addresses (${JSON.stringify(endpoints)}); for names, give one DNS name that resolves to every replica`,
    );
  if (families.size > 1)
    throw new Error(`several control-plane endpoints must be all IPv4 or all IPv6: ${JSON.stringify(endpoints)}`);
  return families.has(4)
    ? `ipv4:${parsed.map((p) => `${p.host}:${p.port}`).join(',')}`
    : `ipv6:${parsed.map((p) => `[${p.host}]:${p.port}`).join(',')}`;
}

/**
 * A list target (`ipv4:a,b,…`, `ipv6:…`) with its addresses in a random order, for one channel; any other target as it
 * is. grpc-js's own `shuffleAddressList` (1.14) does not do it: its Fisher–Yates loop stops before index 1, so it
 * leaves a list of two as given and keeps the first of three first two times in three, and every client would use the
 * first replica listed. A DNS name's addresses come in the resolver's order, which grpc-js's shuffle mixes only from
 * three addresses on (round-robin DNS servers rotate them themselves).
 */
export function spreadTarget(target: string, random: () => number = Math.random): string {
  const m = /^(ipv4|ipv6):(.+,.+)$/.exec(target);
  if (!m) return target;
  const items = m[2]!.split(',');
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return `${m[1]}:${items.join(',')}`;
}

/** For a config parser: the endpoints as given, once they are known to make a target. */
export function parseControlPlaneEndpoints(raw: string): string {
  controlPlaneGrpcTarget(raw);
  return raw;
}

/**
 * pick_first over shuffled addresses: one replica per channel, channels spread over replicas (see controlPlaneGrpcTarget;
 * a list target is shuffled by spreadTarget too). Harmless with one address.
 */
export const CONTROL_PLANE_SERVICE_CONFIG = JSON.stringify({
  loadBalancingConfig: [{ pick_first: { shuffleAddressList: true } }],
});
