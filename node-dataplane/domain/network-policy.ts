/**
 * Network policy in the kernel, purely: the compiled rules of the node's pods (from WatchNodePolicy) rendered as
 * ipsets and iptables `filter` chains, compared with what `ipset save` and `iptables-save` print, and the difference
 * as `ipset restore` and `iptables-restore --noflush` input. Nothing else's chains or sets are read or written.
 *
 *   -I FORWARD 1 -m comment --comment "weft: network policy" -j WEFT-FORWARD
 *   WEFT-FORWARD:   replies to allowed connections first (conntrack RELATED,ESTABLISHED -j ACCEPT); then traffic from
 *                   a pod veth (`-i weft+`) to WEFT-FROM-POD and traffic to one (`-o weft+`) to WEFT-TO-POD.
 *   WEFT-FROM-POD:  the VXLAN device returns; each local pod whose rules are held: `-i <veth> -g WEFT-E-<veth>` (its
 *                   egress entries) or `-i <veth> -j RETURN` (none); anything else DROP: a pod whose rules are not
 *                   held (yet) is cut off both ways (fail closed), with no moment between its veth appearing and a
 *                   rule for it. WEFT-TO-POD the same with `-o` and WEFT-I-<veth>.
 *   WEFT-I-<veth>:  the entries in order: allow → RETURN (back in WEFT-FORWARD, the packet goes on to the other end's
 *                   dispatch), deny → DROP, pass → goto WEFT-I-<veth>-N, which holds the entries after the admin tier;
 *                   falling off the end allows.
 *
 * Peer address sets are ipsets (`hash:net`, IPv4) named by a hash of their content, so a set's name always means the
 * same members: a changed selector result is a new set, created before the rules that use it and destroyed after the
 * last rule using it is gone. A set whose members were changed by hand is refilled through a temporary set and
 * `swap`, so that rules never see it half-filled.
 */
export const POLICY_CHAIN = 'WEFT-FORWARD';
const FROM_POD = 'WEFT-FROM-POD';
const TO_POD = 'WEFT-TO-POD';
/** Host ends of pod veths (`weft` + 11 hex digits) all match it; so does the VXLAN device, which returns first. */
const POD_VETHS = 'weft+';
const JUMP_COMMENT = 'weft: network policy';
const OWNED_CHAIN = /^WEFT-(FORWARD$|FROM-POD$|TO-POD$|[IE]-)/;
const OWNED_SET = /^weft-/;

export interface PolicyEntry {
  tier: 'admin' | 'networkpolicy' | 'baseline';
  action: 'allow' | 'deny' | 'pass';
  peerSet: string | null;
  protocol: 'TCP' | 'UDP' | 'SCTP' | null;
  ports: { from: number; to: number } | null;
  source: string;
}

export interface PodRules {
  namespace: string;
  name: string;
  addresses: string[];
  ingress: PolicyEntry[];
  egress: PolicyEntry[];
}

export interface NodeRules {
  revision: number;
  pods: PodRules[];
  sets: ReadonlyMap<string, string[]>;
}

export interface PolicyDesired {
  /** Chain → its rules as iptables-save prints them. */
  chains: Map<string, string[]>;
  /** Set → its members as `ipset save` prints them (host addresses without /32), sorted. */
  sets: Map<string, string[]>;
}

export interface PolicyActual {
  chains: Map<string, string[]>;
  jumps: number;
  sets: Map<string, string[]>;
}

const isV4 = (cidr: string) => !cidr.includes(':');
const member = (cidr: string) => (cidr.endsWith('/32') ? cidr.slice(0, -3) : cidr);
const comment = (text: string) => `-m comment --comment "weft ${text.replace(/[^A-Za-z0-9/._[\] :=-]/g, '_').slice(0, 200)}"`;

function entryRule(chain: string, e: PolicyEntry, dir: 'ingress' | 'egress', passChain: string): string {
  const parts = [`-A ${chain}`];
  if (e.protocol) parts.push(`-p ${e.protocol.toLowerCase()}`);
  if (e.peerSet) parts.push(`-m set --match-set ${e.peerSet} ${dir === 'ingress' ? 'src' : 'dst'}`);
  if (e.protocol && e.ports) parts.push(`-m ${e.protocol.toLowerCase()} --dport ${e.ports.from === e.ports.to ? e.ports.from : `${e.ports.from}:${e.ports.to}`}`);
  parts.push(comment(e.source));
  parts.push(e.action === 'allow' ? '-j RETURN' : e.action === 'deny' ? '-j DROP' : `-g ${passChain}`);
  return parts.join(' ');
}

/**
 * The chains and sets the node's pods want. `veths` maps a local pod address to its host-side veth; `rules` null:
 * no rule set held yet, so every local pod is dropped both ways. A pod the rules do not mention (not reported to the
 * policy service yet) is dropped both ways too, by the dispatch chains' last rule.
 */
export function desiredPolicy(rules: NodeRules | null, veths: ReadonlyMap<string, string>, vxlanDevice = 'weft.vxlan'): PolicyDesired {
  const chains = new Map<string, string[]>();
  const sets = new Map<string, string[]>();
  const v4Sets = new Map<string, string[]>();
  for (const [name, cidrs] of rules?.sets ?? []) {
    const v4 = cidrs.filter(isV4).map(member).sort();
    if (v4.length > 0) v4Sets.set(name, v4);
  }
  const byAddress = new Map<string, PodRules>();
  for (const pod of rules?.pods ?? []) for (const a of pod.addresses) byAddress.set(a, pod);
  const dispatch = { egress: [`-A ${FROM_POD} -i ${vxlanDevice} -j RETURN`], ingress: [`-A ${TO_POD} -o ${vxlanDevice} -j RETURN`] };
  for (const [address, veth] of [...veths].sort((a, b) => a[1].localeCompare(b[1]))) {
    const pod = byAddress.get(address);
    if (!pod) continue;
    for (const dir of ['egress', 'ingress'] as const) {
      const [from, match] = dir === 'ingress' ? [TO_POD, '-o'] : [FROM_POD, '-i'];
      // Entries whose set has no IPv4 member can match no IPv4 packet.
      const entries = pod[dir].filter((e) => e.peerSet === null || v4Sets.has(e.peerSet));
      if (entries.length === 0) {
        dispatch[dir].push(`-A ${from} ${match} ${veth} ${comment(`${pod.namespace}/${pod.name}: no ${dir} policy`)} -j RETURN`);
        continue;
      }
      const chain = `WEFT-${dir === 'ingress' ? 'I' : 'E'}-${veth}`;
      const pass = `${chain}-N`;
      dispatch[dir].push(`-A ${from} ${match} ${veth} ${comment(`${pod.namespace}/${pod.name} ${dir}`)} -g ${chain}`);
      chains.set(chain, entries.map((e) => entryRule(chain, e, dir, pass)));
      if (entries.some((e) => e.action === 'pass')) chains.set(pass, entries.filter((e) => e.tier !== 'admin').map((e) => entryRule(pass, e, dir, pass)));
      for (const e of entries) if (e.peerSet) sets.set(e.peerSet, v4Sets.get(e.peerSet)!);
    }
  }
  const failClosed = comment(rules ? 'fail closed: pod not known to policy yet' : 'fail closed: no rules held yet');
  chains.set(FROM_POD, [...dispatch.egress, `-A ${FROM_POD} ${failClosed} -j DROP`]);
  chains.set(TO_POD, [...dispatch.ingress, `-A ${TO_POD} ${failClosed} -j DROP`]);
  chains.set(POLICY_CHAIN, [
    `-A ${POLICY_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
    `-A ${POLICY_CHAIN} -i ${POD_VETHS} -j ${FROM_POD}`,
    `-A ${POLICY_CHAIN} -o ${POD_VETHS} -j ${TO_POD}`,
  ]);
  return { chains, sets };
}

/**
 * What to want while no rule set is held yet, given what the kernel holds. A fresh node: every local pod dropped both
 * ways (`desiredPolicy(null, …)`). A restarted agent finds its previous rules: it keeps them, exactly, in force (so
 * nothing is rewritten and no connection is cut); a pod that appeared since has no dispatch rule, so the dispatch
 * chains' last rule drops it.
 */
export function desiredBeforeRules(actual: PolicyActual, veths: ReadonlyMap<string, string>, vxlanDevice = 'weft.vxlan'): PolicyDesired {
  const layout = desiredPolicy(null, veths, vxlanDevice);
  const held = [POLICY_CHAIN, FROM_POD, TO_POD].every((c) => actual.chains.has(c)) && sameList(actual.chains.get(POLICY_CHAIN), layout.chains.get(POLICY_CHAIN)!);
  return held ? { chains: new Map(actual.chains), sets: new Map(actual.sets) } : layout;
}

/** Weft's chains, their rules and the FORWARD jumps, from `iptables-save -t filter`; Weft's sets from `ipset save`. */
export function readPolicyActual(filterSave: string, ipsetSave: string): PolicyActual {
  const chains = new Map<string, string[]>();
  let jumps = 0;
  for (const raw of filterSave.split('\n')) {
    const l = raw.trim();
    const decl = /^:(\S+) /.exec(l);
    if (decl && OWNED_CHAIN.test(decl[1]!)) chains.set(decl[1]!, []);
    const rule = /^-A (\S+) /.exec(l);
    if (rule && OWNED_CHAIN.test(rule[1]!)) chains.get(rule[1]!)?.push(l);
    if (rule && rule[1] === 'FORWARD' && l.endsWith(` -j ${POLICY_CHAIN}`)) jumps++;
  }
  const sets = new Map<string, string[]>();
  for (const raw of ipsetSave.split('\n')) {
    const [verb, name, value] = raw.trim().split(/\s+/);
    if (!name || !OWNED_SET.test(name)) continue;
    if (verb === 'create') sets.set(name, sets.get(name) ?? []);
    if (verb === 'add' && value) sets.set(name, [...(sets.get(name) ?? []), member(value)]);
  }
  for (const [k, v] of sets) sets.set(k, v.sort());
  return { chains, jumps, sets };
}

export interface PolicyPlan {
  /** `ipset restore` input that creates or refills the sets the rules will use; null: nothing to do. */
  setsBefore: string | null;
  /** `iptables-restore --noflush` input: changed chains flushed and refilled, stale ones deleted, the jump ensured. */
  filter: string | null;
  /** `ipset restore` input that destroys Weft's sets no rule uses any more (after `filter` is applied). */
  setsAfter: string | null;
  /** Chains rewritten or deleted, and sets created, refilled or destroyed, for logs and metrics. */
  changed: string[];
}

const sameList = (a: readonly string[] | undefined, b: readonly string[]) => !!a && a.length === b.length && a.every((x, i) => x === b[i]);

export function planPolicy(desired: PolicyDesired, actual: PolicyActual): PolicyPlan {
  const changed: string[] = [];
  const before: string[] = [];
  for (const [name, members] of desired.sets) {
    const have = actual.sets.get(name);
    if (sameList(have, members)) continue;
    changed.push(`set ${name}`);
    // Filled under a temporary name and swapped in: a set that rules already use is never seen half-filled.
    const target = have ? `${name}t` : name;
    before.push(`create ${target} hash:net family inet`, `flush ${target}`, ...members.map((m) => `add ${target} ${m}`));
    if (have) before.push(`swap ${target} ${name}`, `destroy ${target}`);
  }
  const filter: string[] = [];
  const stale = [...actual.chains.keys()].filter((c) => !desired.chains.has(c)).sort();
  for (const [chain, rules] of desired.chains) {
    if (sameList(actual.chains.get(chain), rules)) continue;
    changed.push(`chain ${chain}`);
    filter.push(`:${chain} - [0:0]`);
  }
  // Declarations first (each flushes its chain), so that every rule below finds the chains it jumps to.
  for (const c of stale) filter.push(`:${c} - [0:0]`);
  const declared = new Set(filter.map((l) => l.slice(1, l.indexOf(' '))));
  for (const [chain, rules] of desired.chains) if (declared.has(chain) && !stale.includes(chain)) filter.push(...rules);
  for (const c of stale) {
    changed.push(`chain ${c} (deleted)`);
    filter.push(`-X ${c}`);
  }
  const jump = `-A FORWARD -m comment --comment "${JUMP_COMMENT}" -j ${POLICY_CHAIN}`;
  if (actual.jumps === 0) {
    changed.push('jump');
    filter.push(jump.replace(/^-A FORWARD /, '-I FORWARD 1 '));
  }
  for (let i = 1; i < actual.jumps; i++) filter.push(jump.replace(/^-A /, '-D '));
  const unused = [...actual.sets.keys()].filter((s) => !desired.sets.has(s)).sort();
  for (const s of unused) changed.push(`set ${s} (destroyed)`);
  return {
    setsBefore: before.length > 0 ? `${before.join('\n')}\n` : null,
    filter: filter.length > 0 ? `*filter\n${filter.join('\n')}\nCOMMIT\n` : null,
    setsAfter: unused.length > 0 ? `${unused.map((s) => `destroy ${s}`).join('\n')}\n` : null,
    changed,
  };
}
