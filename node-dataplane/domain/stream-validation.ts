import {
  cidrContains,
  formatAddress,
  formatCidr,
  isMac,
  parseAddress,
  parseCidr,
  type Family,
} from '../../lib/net/ip.js';
import type { RemoteNode } from './desired.js';
import type { PodRules, PolicyEntry } from './network-policy.js';

/**
 * What the control plane's streams (WatchNodePolicy, WatchRoutes) and ListPools say is checked here, field by field,
 * before the agent holds it: every field ends up in `iptables-restore` or `ipset restore` input, in a netlink
 * request or in a log, and a field that is not what it claims to be (a set name carrying a newline and
 * `-A FORWARD -j ACCEPT`, a CIDR `10.0.0.0/8 -j ACCEPT`, a protocol `tcp -j ACCEPT`) must never reach the kernel. An
 * entry with a bad field is refused whole (with the reason, for the log) and the rest of the message is applied:
 *
 * - a policy entry makes its pod refused (dropping one entry would change what the pod's rules mean: a lost deny
 *   would open it); a refused pod's rules are not held, so the dispatch chains' last rule drops its traffic (fail
 *   closed), as for a pod the rules do not mention;
 * - an address set is refused whole (a partial set would change what it matches), and so is every pod whose entries
 *   name it;
 * - a remote node (its underlay address, VTEP MAC and blocks) is refused whole: no route, neighbour or FDB entry
 *   for it;
 * - a pool is left out of the masquerade exceptions.
 *
 * Pure: no I/O, no logging (the sources log what is refused). CIDRs and addresses come back in canonical form (as the
 * kernel's read-back prints them).
 */
export type Checked<T> = { value: T; refused?: undefined } | { refused: string; value?: undefined };

/**
 * Peer set names as the policy service makes them (`weft-<hash>`). ipset names have at most 31 characters, and the
 * agent derives from one the IPv6 set's name (`weft6-<hash>`) and a temporary one (`…t`): so at most 24 characters
 * after the prefix, lower-case letters and digits.
 */
const SET_NAME = /^weft-[a-z0-9]{1,24}$/;
/** Node, namespace and pod names: DNS names (letters, digits, '-', '.'), as the routes service registers nodes. */
const NAME = /^[a-zA-Z0-9]([-a-zA-Z0-9.]{0,251}[a-zA-Z0-9])?$/;
const TIERS: ReadonlySet<string> = new Set(['admin', 'networkpolicy', 'baseline']);
const ACTIONS: ReadonlySet<string> = new Set(['allow', 'deny', 'pass']);
const PROTOCOLS: ReadonlySet<string> = new Set(['TCP', 'UDP', 'SCTP']);
/** A rule's source (in the rule's comment): printable, no control characters, bounded. */
const SOURCE_MAX = 1024;
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

const show = (v: unknown) => JSON.stringify(v);

/** Why a peer set name is refused, or null. */
export function setNameProblem(name: string): string | null {
  return SET_NAME.test(name)
    ? null
    : `set name ${show(name)} is not Weft's (weft- and 1-24 lower-case letters or digits)`;
}

/** Why a node, namespace or pod name is refused, or null. */
export function nameProblem(what: string, name: string): string | null {
  return NAME.test(name) ? null : `${what} ${show(name)} is not a DNS name (letters, digits, '-', '.'; at most 253)`;
}

/** A CIDR parsed strictly (no host bits, nothing around it), of `family` when given; canonical. */
export function checkCidr(text: string, what: string, family?: Family): Checked<string> {
  try {
    const c = parseCidr(text, what);
    if (family && c.family !== family) return { refused: `${what} ${show(text)} is not IPv${family}` };
    return { value: formatCidr(c) };
  } catch (err) {
    return { refused: (err as Error).message };
  }
}

/** An address (no prefix) parsed strictly, of `family` when given; canonical. */
export function checkAddress(text: string, what: string, family?: Family): Checked<string> {
  try {
    const a = parseAddress(text, what);
    if (family && a.family !== family) return { refused: `${what} ${show(text)} is not IPv${family}` };
    return { value: formatAddress(a.family, a.value) };
  } catch (err) {
    return { refused: (err as Error).message };
  }
}

/** A policy entry as the stream carries it (ports 0: none). */
export interface StreamPolicyEntry {
  tier: string;
  action: string;
  peerSet: string;
  protocol: string;
  portFrom: number;
  portTo: number;
  source: string;
}

export function checkPolicyEntry(e: StreamPolicyEntry): Checked<PolicyEntry> {
  if (!TIERS.has(e.tier)) return { refused: `tier ${show(e.tier)} is not one of admin, networkpolicy, baseline` };
  if (!ACTIONS.has(e.action)) return { refused: `action ${show(e.action)} is not one of allow, deny, pass` };
  if (e.peerSet !== '') {
    const p = setNameProblem(e.peerSet);
    if (p) return { refused: `peer ${p}` };
  }
  if (e.protocol !== '' && !PROTOCOLS.has(e.protocol))
    return { refused: `protocol ${show(e.protocol)} is not one of TCP, UDP, SCTP` };
  const port = (n: number) => Number.isInteger(n) && n >= 1 && n <= 65535;
  let ports: PolicyEntry['ports'] = null;
  if (e.portFrom !== 0 || e.portTo !== 0) {
    const to = e.portTo || e.portFrom;
    if (!port(e.portFrom) || !port(to)) return { refused: `ports ${e.portFrom}-${e.portTo} are not in 1-65535` };
    if (to < e.portFrom) return { refused: `port range ${e.portFrom}-${e.portTo} ends before it starts` };
    // Without a protocol the renderer would leave the ports out, and the entry would match every port.
    if (e.protocol === '') return { refused: `ports ${e.portFrom}-${to} without a protocol` };
    ports = { from: e.portFrom, to };
  }
  if (e.source.length > SOURCE_MAX || CONTROL.test(e.source))
    return { refused: `source ${show(e.source.slice(0, 80))} has control characters or is longer than ${SOURCE_MAX}` };
  return {
    value: {
      tier: e.tier as PolicyEntry['tier'],
      action: e.action as PolicyEntry['action'],
      peerSet: e.peerSet || null,
      protocol: (e.protocol || null) as PolicyEntry['protocol'],
      ports,
      source: e.source,
    },
  };
}

/** A pod's compiled rules as the stream carries them. */
export interface StreamPod {
  namespace: string;
  name: string;
  addresses: string[];
  ingress: StreamPolicyEntry[];
  egress: StreamPolicyEntry[];
}

/** A pod's rules; refused when any field is bad or an entry names a set that is not held (`setHeld`: refused, or never sent). */
export function checkPod(p: StreamPod, setHeld: (name: string) => boolean = () => true): Checked<PodRules> {
  const bad = nameProblem('namespace', p.namespace) ?? nameProblem('pod name', p.name);
  if (bad) return { refused: bad };
  const addresses: string[] = [];
  for (const a of p.addresses) {
    const c = checkAddress(a, 'pod address');
    if (c.refused !== undefined) return { refused: c.refused };
    addresses.push(c.value);
  }
  const dirs = { ingress: [] as PolicyEntry[], egress: [] as PolicyEntry[] };
  for (const dir of ['ingress', 'egress'] as const) {
    for (const [i, raw] of p[dir].entries()) {
      const e = checkPolicyEntry(raw);
      if (e.refused !== undefined) return { refused: `${dir}[${i}]: ${e.refused}` };
      if (e.value.peerSet && !setHeld(e.value.peerSet))
        return { refused: `${dir}[${i}] names the set ${e.value.peerSet}, which is not held (refused, or never sent)` };
      dirs[dir].push(e.value);
    }
  }
  return { value: { namespace: p.namespace, name: p.name, addresses, ...dirs } };
}

const OCTET = '(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)';
/** An IPv4 CIDR already in canonical form (no leading zeros); its host bits are checked apart. */
const CANONICAL_CIDR4 = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}/(3[0-2]|[12]?\\d)$`);

/**
 * An IPv4 CIDR in canonical form with no host bits set: the common case of a set member, checked without the
 * general parser (a set of 150,000 pods took 0.6 s through it, 150 times longer).
 */
function isCanonicalCidr4(text: string): boolean {
  const m = CANONICAL_CIDR4.exec(text);
  if (!m) return false;
  const value = ((+m[1]! << 24) | (+m[2]! << 16) | (+m[3]! << 8) | +m[4]!) >>> 0;
  const bits = +m[5]!;
  // /0 is left to the general path, which refuses it.
  return bits === 32 || (bits !== 0 && (value & (0xffffffff >>> bits)) === 0);
}

/** An address set: a name of Weft's and CIDRs (either family, each strictly parsed). */
export function checkAddressSet(s: { name: string; cidrs: string[] }): Checked<{ name: string; cidrs: string[] }> {
  const bad = setNameProblem(s.name);
  if (bad) return { refused: bad };
  const cidrs: string[] = [];
  for (const c of s.cidrs) {
    if (isCanonicalCidr4(c)) {
      cidrs.push(c);
      continue;
    }
    const r = checkCidr(c, `member of ${s.name}`);
    if (r.refused !== undefined) return { refused: r.refused };
    // ipset's hash:net cannot hold a /0 (`ipset restore` would fail, taking every other set of the batch with it);
    // the policy service never sends one (it splits every address into two /1s). Found by the property test.
    if (r.value.endsWith('/0'))
      return { refused: `member of ${s.name} ${show(c)} is every address; hash:net cannot hold a /0` };
    cidrs.push(r.value);
  }
  // The array held is the stream's when nothing needed rewriting.
  return { value: { name: s.name, cidrs: cidrs.every((c, i) => c === s.cidrs[i]) ? s.cidrs : cidrs } };
}

/** A remote node from WatchRoutes: its name, IPv4 underlay address, VTEP MAC and blocks (either family). */
export function checkRemoteNode(n: RemoteNode): Checked<RemoteNode> {
  const bad = nameProblem('node name', n.node);
  if (bad) return { refused: bad };
  const address = checkAddress(n.underlayAddress, `${n.node}'s underlay address`, 4);
  if (address.refused !== undefined) return { refused: address.refused };
  if (!isMac(n.vtepMac)) return { refused: `${n.node}'s VTEP MAC ${show(n.vtepMac)} is not a MAC address` };
  const blockCidrs: string[] = [];
  for (const b of n.blockCidrs) {
    const c = checkCidr(b, `${n.node}'s block`);
    if (c.refused !== undefined) return { refused: c.refused };
    // A route to a /0 would replace the node's default route; a block over the node's own underlay address would
    // send the VXLAN packets meant for that node into the overlay. IPAM makes neither.
    const parsed = parseCidr(c.value);
    if (parsed.prefixLength === 0)
      return { refused: `${n.node}'s block ${show(b)} is every address; a pod block never is` };
    const own = parseAddress(address.value);
    if (parsed.family === own.family && cidrContains(parsed, own.family, own.value)) {
      return { refused: `${n.node}'s block ${show(b)} holds its own underlay address ${address.value}` };
    }
    blockCidrs.push(c.value);
  }
  return { value: { node: n.node, underlayAddress: address.value, vtepMac: n.vtepMac.toLowerCase(), blockCidrs } };
}

/** A pool's CIDR from ListPools (either family). */
export const checkPoolCidr = (cidr: string): Checked<string> => checkCidr(cidr, 'pool');
