import { createHash } from 'node:crypto';

/**
 * Network policy in the kernel, purely: the compiled rules of the node's pods (from WatchNodePolicy) rendered as
 * ipsets and iptables `filter` chains, compared with what `ipset save` and `iptables-save` print, and the difference
 * as `ipset restore` and `iptables-restore --noflush` input. Nothing else's chains or sets are read or written.
 *
 *   -I FORWARD 1 -m comment --comment "weft: network policy" -j WEFT-FORWARD   (kept first: put back on top when
 *                   another program's rule is found above it)
 *   WEFT-FORWARD:   replies to allowed connections first (conntrack RELATED,ESTABLISHED -j ACCEPT); then traffic from
 *                   a pod veth (`-i weft+`) to WEFT-FROM-POD and traffic to one (`-o weft+`) to WEFT-TO-POD.
 *   WEFT-FROM-POD:  the VXLAN device returns; each local pod whose rules are held: `-i <veth> -g WEFT-P-<veth>`,
 *                   whether it has entries or not; anything else DROP: a pod whose rules are not held (yet) is cut
 *                   off both ways (fail closed), with no moment between its veth appearing and a rule for it.
 *                   WEFT-TO-POD the same with `-o`, to the same anchor. These chains change only when pods come and
 *                   go: editing a long chain makes iptables-nft read the whole table first.
 *   WEFT-P-<veth>:  the pod's anchor, one for both directions: per direction with entries one rule, `-i <veth> -g
 *                   WEFT-E-<veth>-<hash>` (egress) or `-o <veth> -g WEFT-I-<veth>-<hash>` (ingress); a direction
 *                   without entries has none (falling off the chain returns, as RETURN does). The two match disjoint
 *                   packets, so their order is not significant. The entries live in a chain named by a hash of its
 *                   rules, so that new entries are a new chain and a rule inserted first in the anchor (see
 *                   planPolicy). There, in order: allow → RETURN (back in WEFT-FORWARD, the packet goes on to the
 *                   other end's dispatch), deny → DROP, pass → goto <that chain>N, which holds the entries after the
 *                   admin tier; falling off the end allows. Consecutive entries with one action, set and protocol
 *                   are one multiport rule. One anchor per pod rather than one per direction: a chain costs
 *                   iptables-restore about as much as three rules, and most pods have entries one way only.
 *
 * Peer address sets are ipsets (`hash:net`) named by a hash of their content, so a set's name always means the
 * same members: a changed selector result is a new set, created before the rules that use it and destroyed after the
 * last rule using it is gone. A set whose members were changed by hand is refilled through a temporary set and
 * `swap`, so that rules never see it half-filled.
 *
 * Both families get the same structure: `family` 4 renders for iptables and `hash:net family inet` sets (`weft-…`),
 * 6 for ip6tables and `family inet6` sets (`weft6-…`, the same hash: ipset has one namespace for both families). A
 * peer set's CIDRs go to the family they belong to; an entry whose set has no member of the family is left out of
 * that family's chains (it can match no packet of it), and a pod is dispatched in a family by its address of that
 * family: a pod without one (an IPv4-only pod in ip6tables) meets the fail-closed drop.
 */
export const POLICY_CHAIN = 'WEFT-FORWARD';
const FROM_POD = 'WEFT-FROM-POD';
const TO_POD = 'WEFT-TO-POD';
/** The chains every node has: the policy chain and the two dispatch chains. */
export const POLICY_LAYOUT: readonly string[] = [POLICY_CHAIN, FROM_POD, TO_POD];
/** Host ends of pod veths (`weft` + 11 hex digits) all match it; so does the VXLAN device, which returns first. */
const POD_VETHS = 'weft+';
const JUMP_COMMENT = 'weft: network policy';
/** Weft's jump from FORWARD, as iptables-save prints it. */
const FORWARD_JUMP = `-A FORWARD -m comment --comment "${JUMP_COMMENT}" -j ${POLICY_CHAIN}`;
const OWNED_CHAIN = /^WEFT-(FORWARD$|FROM-POD$|TO-POD$|[IEP]-)/;
export type PolicyFamily = 4 | 6;
/** Weft's sets of a family: `weft-<hash>` (IPv4) and `weft6-<hash>` (IPv6), temporary `…t` ones included. */
const ownedSet = (family: PolicyFamily) => (family === 4 ? /^weft-/ : /^weft6-/);
/** The kernel's name of a peer set (named `weft-<hash>` by the policy service) in a family. */
const kernelSetName = (name: string, family: PolicyFamily) =>
  family === 4 ? name : `weft6-${name.replace(/^weft-/, '')}`;
const inFamily = (cidr: string, family: PolicyFamily) => cidr.includes(':') === (family === 6);
/** A pod's anchor chain, WEFT-P-<veth> (veth names have no dash); its entries chains are WEFT-[IE]-<veth>-<hash>. */
const ANCHOR = /^WEFT-P-[^-]+$/;
/** An anchor's rules match disjoint packets (`-i <veth>`: the pod's egress, `-o <veth>`: its ingress): their order is not significant. */
const sameAnchor = (have: readonly string[], want: readonly string[]) =>
  have.length === want.length && want.every((r) => have.includes(r));
/** `-i <veth>` or `-o <veth>` of an anchor's goto rule; null for any other rule. */
const anchorMatch = (rule: string) => /^-A \S+ (-[io] \S+) -g \S+$/.exec(rule)?.[1] ?? null;

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
  /**
   * FORWARD rules of others above Weft's last jump (an ACCEPT there would let traffic bypass policy). Absent or 0:
   * Weft's jumps are the first rules of FORWARD.
   */
  rulesAboveJump?: number;
  sets: Map<string, string[]>;
}

const member = (cidr: string) =>
  cidr.endsWith('/32') ? cidr.slice(0, -3) : cidr.endsWith('/128') ? cidr.slice(0, -4) : cidr;
const COMMENT_MAX = 200;
const commentText = (text: string) => text.replace(/[^A-Za-z0-9/._[\] :=-]/g, '_');
const comment = (text: string) => `-m comment --comment "weft ${commentText(text).slice(0, COMMENT_MAX)}"`;

/** A rule's text between `-A <chain>` and its target. */
function ruleMatch(
  e: PolicyEntry,
  dir: 'ingress' | 'egress',
  ports: string | null,
  multi: boolean,
  source: string,
): string {
  const parts: string[] = [];
  if (e.protocol) parts.push(`-p ${e.protocol.toLowerCase()}`);
  if (e.peerSet) parts.push(`-m set --match-set ${e.peerSet} ${dir === 'ingress' ? 'src' : 'dst'}`);
  if (e.protocol && ports !== null)
    parts.push(multi ? `-m multiport --dports ${ports}` : `-m ${e.protocol.toLowerCase()} --dport ${ports}`);
  parts.push(comment(source));
  return parts.join(' ');
}

const portText = (p: { from: number; to: number }) => (p.from === p.to ? `${p.from}` : `${p.from}:${p.to}`);
/** `-m multiport` takes at most 15 ports, a range counting as two. */
const MULTIPORT_MAX = 15;
const portWeight = (p: { from: number; to: number }) => (p.from === p.to ? 1 : 2);

/**
 * A chain's rules from its entries, in order. Consecutive entries with the same action, peer set and protocol, each
 * with ports, become one rule with `-m multiport --dports` (at most 15 ports, a range counting as two; the comment
 * names every source, while it fits): the first of them that matches decided before, and with the same action the
 * merged rule decides the same. A lone entry keeps `-m tcp --dport`. Rendered as iptables-save prints them.
 */
export function chainRules(
  chain: string,
  entries: readonly PolicyEntry[],
  dir: 'ingress' | 'egress',
  passChain: string,
): string[] {
  const out: string[] = [];
  const target = (e: PolicyEntry) =>
    e.action === 'allow' ? '-j RETURN' : e.action === 'deny' ? '-j DROP' : `-g ${passChain}`;
  for (let i = 0; i < entries.length;) {
    const e = entries[i]!;
    const group = [e];
    let weight = e.ports ? portWeight(e.ports) : 0;
    const sources = [e.source];
    if (e.protocol && e.ports) {
      for (let j = i + 1; j < entries.length; j++) {
        const n = entries[j]!;
        if (n.action !== e.action || n.peerSet !== e.peerSet || n.protocol !== e.protocol || !n.ports) break;
        if (weight + portWeight(n.ports) > MULTIPORT_MAX) break;
        const more = sources.includes(n.source) ? sources : [...sources, n.source];
        if (commentText(more.join(' ')).length > COMMENT_MAX) break;
        group.push(n);
        weight += portWeight(n.ports);
        sources.splice(0, sources.length, ...more);
      }
    }
    i += group.length;
    const multi = group.length > 1;
    const ports = e.ports ? group.map((g) => portText(g.ports!)).join(',') : null;
    out.push(`-A ${chain} ${ruleMatch(e, dir, ports, multi, sources.join(' '))} ${target(e)}`);
  }
  return out;
}

/** What the agent keeps between passes to render only the pods whose rules changed (keyed by the PodRules object). */
export interface RenderCache {
  pods: WeakMap<
    PodRules,
    {
      veth: string;
      used: string[];
      present: boolean[];
      chains: [string, string[]][];
      dispatch: { egress: string; ingress: string };
      sets: string[];
    }
  >;
  /** The veths map (as the agent last read it) → its entries by veth name. */
  veths: WeakMap<ReadonlyMap<string, string>, [string, string][]>;
  /** A set's CIDRs (the array held) → its members of the cache's family as `ipset save` prints them. */
  sets: WeakMap<readonly string[], string[]>;
}
export const createRenderCache = (): RenderCache => ({
  pods: new WeakMap(),
  sets: new WeakMap(),
  veths: new WeakMap(),
});

/**
 * The chains and sets the node's pods want. `veths` maps a local pod address to its host-side veth; `rules` null:
 * no rule set held yet, so every local pod is dropped both ways. A pod the rules do not mention (not reported to the
 * policy service yet) is dropped both ways too, by the dispatch chains' last rule. `cache`: a pod whose rules are the
 * same object as at an earlier call, on the same veth and with the same sets non-empty, is not rendered again (a
 * cache serves one family). `family`: 4 for iptables, 6 for ip6tables (`veths` then maps IPv6 pod addresses).
 */
export function desiredPolicy(
  rules: NodeRules | null,
  veths: ReadonlyMap<string, string>,
  vxlanDevice = 'weft.vxlan',
  cache?: RenderCache,
  family: PolicyFamily = 4,
): PolicyDesired {
  const chains = new Map<string, string[]>();
  const sets = new Map<string, string[]>();
  /** Peer sets with members of this family: their members as `ipset save` prints them. */
  const familySets = new Map<string, string[]>();
  for (const [name, cidrs] of rules?.sets ?? []) {
    let members = cache?.sets.get(cidrs);
    if (!members) {
      members = cidrs
        .filter((c) => inFamily(c, family))
        .map(member)
        .sort();
      cache?.sets.set(cidrs, members);
    }
    if (members.length > 0) familySets.set(kernelSetName(name, family), members);
  }
  const byAddress = new Map<string, PodRules>();
  for (const pod of rules?.pods ?? []) for (const a of pod.addresses) byAddress.set(a, pod);
  const dispatch = {
    egress: [`-A ${FROM_POD} -i ${vxlanDevice} -j RETURN`],
    ingress: [`-A ${TO_POD} -o ${vxlanDevice} -j RETURN`],
  };
  let sorted = cache?.veths.get(veths);
  if (!sorted) {
    sorted = [...veths].sort((a, b) => (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
    cache?.veths.set(veths, sorted);
  }
  for (const [address, veth] of sorted) {
    const pod = byAddress.get(address);
    if (!pod) continue;
    let r = cache?.pods.get(pod);
    // Rendered again on another veth, or when one of its sets became empty or non-empty.
    if (r && (r.veth !== veth || !r.used.every((name, i) => familySets.has(name) === r!.present[i]))) r = undefined;
    if (!r) {
      const used = [
        ...new Set(
          [...pod.ingress, ...pod.egress]
            .map((e) => e.peerSet)
            .filter((n): n is string => n !== null)
            .map((n) => kernelSetName(n, family)),
        ),
      ];
      r = {
        veth,
        used,
        present: used.map((n) => familySets.has(n)),
        chains: [],
        dispatch: { egress: '', ingress: '' },
        sets: [],
      };
      const anchor = `WEFT-P-${veth}`;
      const anchorRules: string[] = [];
      for (const dir of ['egress', 'ingress'] as const) {
        const [from, match] = dir === 'ingress' ? [TO_POD, '-o'] : [FROM_POD, '-i'];
        // Entries whose set has no member of this family can match no packet of it.
        const inKernel =
          family === 4
            ? pod[dir]
            : pod[dir].map((e) => (e.peerSet ? { ...e, peerSet: kernelSetName(e.peerSet, family) } : e));
        const entries = inKernel.filter((e) => e.peerSet === null || familySets.has(e.peerSet));
        // Every pod whose rules are held goes to its anchor both ways, with or without entries: a change of its
        // rules (to none, or from none) is a change of its own short anchor chain, never of the long dispatch
        // chains, which change only when pods come and go.
        r.dispatch[dir] = `-A ${from} ${match} ${veth} ${comment(`${pod.namespace}/${pod.name} ${dir}`)} -g ${anchor}`;
        // A direction without entries has no rule in the anchor: falling off a chain reached by goto returns to
        // WEFT-FORWARD, as RETURN would.
        if (entries.length === 0) continue;
        // The entries live in a chain named by a hash of its content, which the anchor's rule for the direction
        // goes to: new entries are a new chain and a rule inserted first in the anchor, which iptables-nft writes
        // without reading the table back; the old rule and chain go afterwards (see planPolicy).
        const body = chainRules('@C', entries, dir, '@CN');
        const tail = entries.some((e) => e.action === 'pass')
          ? chainRules(
              '@CN',
              entries.filter((e) => e.tier !== 'admin'),
              dir,
              '@CN',
            )
          : null;
        const chain = `WEFT-${dir === 'ingress' ? 'I' : 'E'}-${veth}-${createHash('sha256')
          .update(`${body.join('\n')}\n\n${tail?.join('\n') ?? ''}`)
          .digest('hex')
          .slice(0, 4)}`;
        const named = (lines: string[]) => lines.map((l) => l.replaceAll('@C', chain));
        anchorRules.push(`-A ${anchor} ${match} ${veth} -g ${chain}`);
        r.chains.push([chain, named(body)]);
        if (tail) r.chains.push([`${chain}N`, named(tail)]);
        for (const e of entries) if (e.peerSet && !r.sets.includes(e.peerSet)) r.sets.push(e.peerSet);
      }
      r.chains.push([anchor, anchorRules]);
      cache?.pods.set(pod, r);
    }
    for (const [chain, lines] of r.chains) chains.set(chain, lines);
    for (const s of r.sets) sets.set(s, familySets.get(s)!);
    dispatch.egress.push(r.dispatch.egress);
    dispatch.ingress.push(r.dispatch.ingress);
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
export function desiredBeforeRules(
  actual: PolicyActual,
  veths: ReadonlyMap<string, string>,
  vxlanDevice = 'weft.vxlan',
): PolicyDesired {
  const layout = desiredPolicy(null, veths, vxlanDevice);
  const held =
    [POLICY_CHAIN, FROM_POD, TO_POD].every((c) => actual.chains.has(c)) &&
    sameList(actual.chains.get(POLICY_CHAIN), layout.chains.get(POLICY_CHAIN)!);
  return held ? { chains: new Map(actual.chains), sets: new Map(actual.sets) } : layout;
}

/** A pod's rules that changed, and what they were; the same pod (namespace, name) on the same addresses. */
export interface PodChange {
  before: PodRules;
  after: PodRules;
}

/**
 * The pods whose rules object changed from `before` to `after`, when nothing else did: the same pods in the same
 * order (as the agent's rules keep them) on the same addresses. Null otherwise (pods came or went, or moved), or when
 * more than `max` changed: then the whole node is rendered.
 */
export function podChanges(before: readonly PodRules[], after: readonly PodRules[], max: number): PodChange[] | null {
  if (before.length !== after.length) return null;
  const out: PodChange[] = [];
  for (let i = 0; i < after.length; i++) {
    const b = before[i]!,
      a = after[i]!;
    if (a === b) continue;
    if (a.namespace !== b.namespace || a.name !== b.name || !sameList(a.addresses, b.addresses) || out.length === max)
      return null;
    out.push({ before: b, after: a });
  }
  return out;
}

/**
 * Weft's chains, their rules and the FORWARD jumps, from `iptables-save -t filter` (`ip6tables-save` for family 6);
 * Weft's sets of the family from `ipset save`.
 */
export function readPolicyActual(filterSave: string, ipsetSave: string, family: PolicyFamily = 4): PolicyActual {
  const owned = ownedSet(family);
  const chains = new Map<string, string[]>();
  let jumps = 0;
  /** FORWARD rules that are not Weft's jump, so far; those above the last jump are what matters. */
  let others = 0;
  let rulesAboveJump = 0;
  for (const raw of filterSave.split('\n')) {
    const l = raw.trim();
    const decl = /^:(\S+) /.exec(l);
    if (decl && OWNED_CHAIN.test(decl[1]!)) chains.set(decl[1]!, []);
    const rule = /^-A (\S+) /.exec(l);
    if (rule && OWNED_CHAIN.test(rule[1]!)) chains.get(rule[1]!)?.push(l);
    if (rule && rule[1] === 'FORWARD') {
      // Weft's jump exactly as it writes it (one without its comment could not be deleted by this spec).
      if (l === FORWARD_JUMP) {
        jumps++;
        rulesAboveJump = others;
      } else others++;
    }
  }
  const sets = new Map<string, string[]>();
  for (const raw of ipsetSave.split('\n')) {
    const [verb, name, value] = raw.trim().split(/\s+/);
    if (!name || !owned.test(name)) continue;
    if (verb === 'create') sets.set(name, sets.get(name) ?? []);
    if (verb === 'add' && value) sets.set(name, [...(sets.get(name) ?? []), member(value)]);
  }
  for (const [k, v] of sets) sets.set(k, v.sort());
  return { chains, jumps, rulesAboveJump, sets };
}

export interface PolicyPlan {
  /** `ipset restore` input that creates or refills the sets the rules will use; null: nothing to do. */
  setsBefore: string | null;
  /** `iptables-restore --noflush` input: changed chains flushed and refilled, stale ones deleted, the jump ensured. */
  filter: string | null;
  /**
   * `iptables-restore --noflush` input applied after `filter`, which already put the desired rules in force: the
   * anchors' old rules deleted, stale chains flushed and deleted. Null: nothing to do.
   */
  filterAfter: string | null;
  /** `ipset restore` input that destroys Weft's sets no rule uses any more (after `filterAfter` is applied). */
  setsAfter: string | null;
  /** Chains rewritten or deleted, and sets created, refilled or destroyed, for logs and metrics. */
  changed: string[];
}

const sameList = (a: readonly string[] | undefined, b: readonly string[]) =>
  a === b || (!!a && a.length === b.length && a.every((x, i) => x === b[i]));

/**
 * A long chain that differs from what the kernel holds in a few neighbouring rules (the dispatch chain when one pod
 * changes) is edited in place instead of rewritten: the rules before and after the difference are kept, the ones in
 * between deleted by number (from the last) and the new ones inserted at their positions, so the result prints exactly
 * as rendered. Null when rewriting the chain is less work.
 */
function editChain(chain: string, have: readonly string[], want: readonly string[]): string[] | null {
  let head = 0;
  while (head < have.length && head < want.length && have[head] === want[head]) head++;
  let tail = 0;
  while (
    tail < have.length - head &&
    tail < want.length - head &&
    have[have.length - 1 - tail] === want[want.length - 1 - tail]
  )
    tail++;
  const del = have.length - head - tail;
  const ins = want.length - head - tail;
  if ((del + ins) * 4 >= want.length) return null;
  const out: string[] = [];
  for (let n = head + del; n > head; n--) out.push(`-D ${chain} ${n}`);
  want
    .slice(head, head + ins)
    .forEach((rule, k) => out.push(`-I ${chain} ${head + 1 + k} ${rule.slice(`-A ${chain} `.length)}`));
  return out;
}

const DEFAULT_MAXELEM = 65536;

/**
 * The filter table as entries of a kernel table (drivers/filter.ts): each of Weft's chains by name, its rules as
 * iptables-save prints them; and Weft's jump from FORWARD under `JUMP_KEY`: FORWARD's rules down to Weft's last jump
 * (another program's rule as `OTHER_RULE`), so the one desired value is `[FORWARD_JUMP]`, first and once.
 */
export const JUMP_KEY = 'FORWARD';
const OTHER_RULE = '-A FORWARD (a rule of another program)';
export const WANTED_JUMP: readonly string[] = [FORWARD_JUMP];

/** Weft's chains and its FORWARD jump, as filter-table entries (see JUMP_KEY). */
export function filterEntries(actual: PolicyActual): Map<string, string[]> {
  const out = new Map(actual.chains);
  if (actual.jumps > 0)
    out.set(JUMP_KEY, [
      ...Array<string>(actual.rulesAboveJump ?? 0).fill(OTHER_RULE),
      ...Array<string>(actual.jumps).fill(FORWARD_JUMP),
    ]);
  return out;
}

/** Whether the kernel's rules of a chain (or the jump entry) are the desired ones; an anchor's compare as a set. */
export function sameChain(chain: string, have: readonly string[], want: readonly string[]): boolean {
  return sameList(have, want) || (ANCHOR.test(chain) && sameAnchor(have, want));
}

/** The same, from the rules alone (every rule names its chain): the filter table's comparison. */
export function sameRules(have: readonly string[], want: readonly string[]): boolean {
  if (sameList(have, want)) return true;
  const chain = /^-A (\S+) /.exec(want[0] ?? have[0] ?? '')?.[1];
  return chain !== undefined && ANCHOR.test(chain) && sameAnchor(have, want);
}

/** What a chain's rules need first: the chains they jump or go to, and the sets they match. */
export function chainReferences(chain: string, rules: readonly string[]): { chains: string[]; sets: string[] } {
  if (chain === JUMP_KEY) return { chains: rules.includes(FORWARD_JUMP) ? [POLICY_CHAIN] : [], sets: [] };
  // Asked of every chain of a pass (thousands from scratch): characters compared in place, no string made but the
  // names found.
  const chains = new Set<string>();
  const sets = new Set<string>();
  for (const r of rules) {
    // The target is the rule's last word, after ` -g ` or ` -j `.
    const at = r.lastIndexOf(' ');
    const flag = r.charCodeAt(at - 1);
    if (
      (flag === G || flag === J) &&
      r.charCodeAt(at - 2) === DASH &&
      r.charCodeAt(at - 3) === SPACE &&
      r.startsWith('WEFT-', at + 1)
    ) {
      const target = r.slice(at + 1);
      if (OWNED_CHAIN.test(target)) chains.add(target);
    }
    for (let i = r.indexOf(MATCH_SET); i >= 0; i = r.indexOf(MATCH_SET, i + 1)) {
      const from = i + MATCH_SET.length;
      sets.add(r.slice(from, r.indexOf(' ', from)));
    }
  }
  return { chains: [...chains], sets: [...sets] };
}
const MATCH_SET = '--match-set ';
const [G, J, DASH, SPACE] = ['g', 'j', '-', ' '].map((c) => c.charCodeAt(0)) as [number, number, number, number];

/**
 * A dispatch chain without the pods whose anchor is not in the kernel (`missing`), which then meet the chain's final
 * drop (fail closed); null for any other chain, where leaving a rule out could let through what it would stop.
 */
export function dispatchWithout(
  chain: string,
  rules: readonly string[],
  missing: ReadonlySet<string>,
): string[] | null {
  if (chain !== FROM_POD && chain !== TO_POD) return null;
  return rules.filter((r) => {
    const target = / -g (\S+)$/.exec(r)?.[1];
    return target === undefined || !missing.has(target);
  });
}

/** A chain's rules minus `want`, counted as a multiset (a rule held twice and wanted once: one copy). */
function extraRules(have: readonly string[], want: readonly string[]): string[] {
  const unmatched = [...want];
  return have.filter((r) => {
    const i = unmatched.indexOf(r);
    if (i < 0) return true;
    unmatched.splice(i, 1);
    return false;
  });
}

/**
 * Whether what the kernel holds of a chain becomes the desired rules by deletions alone: an anchor whose new rules
 * are in force (chainWrites) and whose old ones are still there. Those deletions go in the removal transaction.
 */
export function finishedByRemoval(chain: string, want: readonly string[], have: readonly string[]): boolean {
  return ANCHOR.test(chain) && extraRules(want, have).length === 0 && have.length > want.length;
}

export interface SetWrite {
  name: string;
  members: readonly string[];
  /** The members the kernel holds under the name; undefined: no such set. */
  held?: readonly string[];
}

/**
 * `ipset restore -exist` input that creates or refills sets. A set the kernel holds is filled under a temporary name
 * and swapped in, so rules that use it never see it half-filled. Each set's lines stand alone and are idempotent, so
 * the input may be split anywhere between sets and retried.
 */
export function setWrites(items: readonly SetWrite[], family: PolicyFamily): string | null {
  const out: string[] = [];
  for (const { name, members, held } of items) {
    const target = held ? `${name}t` : name;
    // A set's content never changes under its name (a new content is a new set), so its size is known at creation:
    // a selector matching more than ipset's default 65,536 members (every pod of a large cluster) still fits.
    const maxelem = members.length > DEFAULT_MAXELEM ? ` maxelem ${members.length}` : '';
    out.push(
      `create ${target} hash:net family ${family === 4 ? 'inet' : 'inet6'}${maxelem}`,
      `flush ${target}`,
      ...members.map((m) => `add ${target} ${m}`),
    );
    if (held) out.push(`swap ${target} ${name}`, `destroy ${target}`);
  }
  return out.length > 0 ? `${out.join('\n')}\n` : null;
}

/** `ipset restore -exist` input that destroys sets (no rule may use them any more). */
export const setDestroys = (names: readonly string[]): string | null =>
  names.length > 0
    ? `${[...names]
        .sort()
        .map((s) => `destroy ${s}`)
        .join('\n')}\n`
    : null;

export interface ChainWrite {
  chain: string;
  rules: readonly string[];
  /** The rules the kernel holds in the chain; undefined: no such chain. */
  held?: readonly string[];
}

/**
 * The `iptables-restore --noflush` transaction that puts desired chains in force (and Weft's jump, under JUMP_KEY).
 * iptables-nft reads the whole table before a transaction that flushes or deletes, not before one that only
 * creates, appends or inserts into a short chain, so removals are kept out of it where they can be:
 *  - a new or rewritten chain is declared (`:chain`, which flushes it) and filled; declarations come first, so every
 *    rule finds the chains it goes to;
 *  - a long chain that differs in a few neighbouring rules (the dispatch chains when a pod comes or goes) is edited
 *    in place by rule number (`editChain`);
 *  - an anchor gets its new rules inserted first (from then on the old ones of the direction are never reached) and,
 *    for a direction without entries any more, a `-j RETURN` first; its old rules and that RETURN stay until the
 *    removal transaction (`chainRemovals`). `held` returns what each chain holds after the transaction;
 *  - the jump: extra or buried jumps deleted and one inserted first, in the same transaction (never none in force).
 */
export function chainWrites(items: readonly ChainWrite[]): { restore: string | null; held: Map<string, string[]> } {
  const declare: string[] = [];
  const fill: string[] = [];
  const edits: string[] = [];
  const jump: string[] = [];
  const held = new Map<string, string[]>();
  for (const { chain, rules, held: have } of items) {
    if (chain === JUMP_KEY) {
      const jumps = have?.filter((r) => r === FORWARD_JUMP).length ?? 0;
      const buried = jumps > 0 && have![0] !== FORWARD_JUMP;
      for (let i = buried ? 0 : 1; i < jumps; i++) jump.push(FORWARD_JUMP.replace(/^-A /, '-D '));
      if (jumps === 0 || buried) jump.push(FORWARD_JUMP.replace(/^-A FORWARD /, '-I FORWARD 1 '));
      held.set(chain, [FORWARD_JUMP]);
      continue;
    }
    if (have && ANCHOR.test(chain)) {
      const spec = (rule: string) => rule.slice(`-A ${chain} `.length);
      const added = rules.filter((r) => !have.includes(r));
      const wanted = new Set(rules.map(anchorMatch));
      const returns: string[] = [];
      for (const match of new Set(extraRules(have, rules).map(anchorMatch))) {
        const ret = `-A ${chain} ${match} -j RETURN`;
        if (match !== null && !wanted.has(match) && !have.includes(ret)) returns.push(ret);
      }
      for (const r of [...added, ...returns]) edits.push(`-I ${chain} 1 ${spec(r)}`);
      held.set(chain, [...have, ...returns, ...added]);
      continue;
    }
    const edit = have ? editChain(chain, have, rules) : null;
    if (edit) edits.push(...edit);
    else {
      declare.push(`:${chain} - [0:0]`);
      fill.push(...rules);
    }
    held.set(chain, rules as string[]);
  }
  const lines = [...declare, ...fill, ...edits, ...jump];
  return { restore: lines.length > 0 ? `*filter\n${lines.join('\n')}\nCOMMIT\n` : null, held };
}

/**
 * The removal transaction: anchors' rules beyond the desired ones deleted (`finish`: their old rules and RETURNs,
 * see finishedByRemoval), then Weft's jumps when unwanted, then stale chains flushed and deleted (no rule goes to
 * them any more by then).
 */
export function chainRemovals(finish: readonly ChainWrite[], stale: readonly ChainWrite[]): string | null {
  const out: string[] = [];
  for (const { chain, rules, held } of finish) {
    const extra = extraRules(held ?? [], rules);
    const isReturn = (r: string) => r.endsWith(' -j RETURN');
    for (const r of [...extra.filter((x) => !isReturn(x)), ...extra.filter(isReturn)])
      out.push(`-D ${chain} ${r.slice(`-A ${chain} `.length)}`);
  }
  const chains = stale
    .map((s) => s.chain)
    .filter((c) => c !== JUMP_KEY)
    .sort();
  for (const s of stale)
    if (s.chain === JUMP_KEY)
      for (const r of s.held ?? []) if (r === FORWARD_JUMP) out.push(FORWARD_JUMP.replace(/^-A /, '-D '));
  for (const c of chains) out.push(`-F ${c}`);
  for (const c of chains) out.push(`-X ${c}`);
  return out.length > 0 ? `*filter\n${out.join('\n')}\nCOMMIT\n` : null;
}

/**
 * The whole node's plan against what the kernel holds, as one pass of the drivers would apply it (drivers/registry.ts:
 * sets written, chains written, chains finished and removed, sets destroyed). Pure, for tests and diagnostics.
 */
export function planPolicy(desired: PolicyDesired, actual: PolicyActual, family: PolicyFamily = 4): PolicyPlan {
  const changed: string[] = [];
  const sets: SetWrite[] = [];
  for (const [name, members] of desired.sets) {
    const held = actual.sets.get(name);
    if (sameList(held, members)) continue;
    changed.push(`set ${name}`);
    sets.push({ name, members, held });
  }
  const kernel = filterEntries(actual);
  const want = new Map(desired.chains);
  want.set(JUMP_KEY, [...WANTED_JUMP]);
  const writes: ChainWrite[] = [];
  for (const [chain, rules] of want) {
    const held = kernel.get(chain);
    if (held && sameChain(chain, held, rules)) continue;
    if (chain !== JUMP_KEY) changed.push(`chain ${chain}`);
    writes.push({ chain, rules, held });
  }
  const written = chainWrites(writes);
  const finish = writes
    .map((w) => ({ ...w, held: written.held.get(w.chain)! }))
    .filter((w) => finishedByRemoval(w.chain, w.rules, w.held));
  const stale = [...actual.chains.keys()]
    .filter((c) => !desired.chains.has(c))
    .sort()
    .map((chain) => ({ chain, rules: [] }));
  for (const { chain } of stale) changed.push(`chain ${chain} (deleted)`);
  const buried = actual.jumps > 0 && (actual.rulesAboveJump ?? 0) > 0;
  if (actual.jumps === 0 || buried) changed.push(buried ? 'jump (moved back first in FORWARD)' : 'jump');
  const unused = [...actual.sets.keys()].filter((s) => !desired.sets.has(s)).sort();
  for (const s of unused) changed.push(`set ${s} (destroyed)`);
  return {
    setsBefore: setWrites(sets, family),
    filter: written.restore,
    filterAfter: chainRemovals(finish, stale),
    setsAfter: setDestroys(unused),
    changed,
  };
}
