import { createHash } from 'node:crypto';
import { matches } from '../../../lib/labels.js';
import { bitsOf, formatAddress, type Cidr, type Family } from '../../../lib/net/ip.js';
import type { Pod, World } from './evaluate.js';
import {
  PROTOCOLS,
  type AdminPeer,
  type AdminPolicy,
  type AdminRule,
  type NetworkPolicy,
  type Peer,
  type Protocol,
  type Rule,
  type Selector,
} from './model.js';

/**
 * Per-node compilation, purely: from the world (namespaces, pods, policies), the rules of one node's pods, per
 * direction, as an ordered list of entries that a dataplane can apply without knowing any Kubernetes semantics. It
 * gives the same verdict as `explain` (evaluate.ts) for every connection; `compile.test.ts` checks that
 * exhaustively on small worlds.
 *
 * Reading a direction's entries: the first entry whose peer set, protocol and ports match decides: `allow` and `deny`
 * are final; `pass` skips the rest of the admin tier (to the first entry of another tier). No entry matching means
 * allowed. A NetworkPolicy that selects the pod ends its tier with a `deny` of everything (default deny), so the
 * baseline entries are only present when no NetworkPolicy selects the pod.
 *
 * Peers are address sets (CIDRs, exact: `except` blocks are cut out, overlaps merged) named by a hash of their
 * content, so that a set that did not change keeps its name; a named port becomes numbers: on the pod itself for
 * ingress, on each destination pod for egress (one entry per resolved number, with the pods that resolve to it).
 */
export type EntryAction = 'allow' | 'deny' | 'pass';
export type EntryTier = 'admin' | 'networkpolicy' | 'baseline';

export interface PolicyEntry {
  tier: EntryTier;
  action: EntryAction;
  /** Name of the peer address set; null: any address, the outside included. */
  peerSet: string | null;
  /** null: every protocol and port. */
  protocol: Protocol | null;
  /** Inclusive; null: every port of the protocol. */
  ports: { from: number; to: number } | null;
  /** What the entry comes from: "NetworkPolicy/x/web ingress[0]", "AdminNetworkPolicy/a rule-name", "NetworkPolicy/x/web default deny". */
  source: string;
}

export interface CompiledPod {
  namespace: string;
  name: string;
  addresses: string[];
  ingress: PolicyEntry[];
  egress: PolicyEntry[];
}

export interface NodePolicy {
  pods: CompiledPod[];
  /** Set name → CIDRs ("10.244.1.7/32"), sorted; only sets that some entry names. */
  sets: Map<string, string[]>;
}

export interface PlacedPod extends Pod {
  node: string;
}

/**
 * What a compiler keeps between compilations of one node, so that a change recompiles only the pods it concerns.
 * A pod's entries are reused when what they depend on is unchanged: the pod itself (labels, addresses, named ports),
 * its namespace's labels, the policies that select it (by object identity: policy objects must not be mutated, and an
 * unchanged policy must be passed as the same object), the content of every peer set their rules name (worked out
 * again at every compilation, one set per distinct selector), and, for egress rules with named ports, every pod's
 * labels, addresses and named ports. `compile.test.ts` checks it against compiling from scratch.
 */
export interface CompileCache {
  ids: WeakMap<object, number>;
  nextId: number;
  /** A NetworkPolicy rule's peers as text (rules with the same text share one peer set). */
  ruleText: WeakMap<object, string>;
  /** Per namespace: its NetworkPolicies (by name) as last seen, and which of them select each label set. */
  selection: Map<
    string,
    { nps: readonly NetworkPolicy[]; byLabels: Map<string, readonly NetworkPolicy[]>; index?: SelectorIndex }
  >;
  /** Set contents by range key, this compilation's and the previous one's. */
  cidrs: Map<string, string[]>;
  previousCidrs: Map<string, string[]>;
  /** Per local pod ("namespace/name"): the key of what its entries depend on, the compiled pod, its sets. */
  pods: Map<string, CachedPod>;
  /**
   * Per selector text: its member pods and its set at the previous compilation (the same members' addresses: the same
   * set), and whether a pod is a member (`matches`, for the quiet path below).
   */
  specSets: Map<string, SpecSet>;
  /**
   * The previous compilation's input: the pods (in order), the namespaces' labels as text and the policies. When the
   * next one differs only in a few pod objects (same names, same places) that join or leave no set and keep their
   * addresses (a "quiet" change: a pod's labels that move it between the policies that select it, say), every other
   * pod's entries are reused without working out what they depend on again.
   */
  last?: {
    pods: readonly PlacedPod[];
    local: PlacedPod[];
    namespaces: string;
    admins: readonly AdminPolicy[];
    baseline: AdminPolicy | null;
  };
  /** The NetworkPolicies as last seen, grouped by namespace and sorted by name. */
  byNamespace?: { nps: readonly NetworkPolicy[]; grouped: Map<string, NetworkPolicy[]> };
  /** A pod object's labels as text. */
  labelsText: WeakMap<PlacedPod, string>;
  /** A pod object's own fields as text (pod objects, too, must not be mutated). */
  podText: WeakMap<PlacedPod, string>;
  /** With a shared view: the peer selectors (rule texts) of every set the node's rules name. */
  texts?: Set<string>;
}
/**
 * A namespace's NetworkPolicies indexed by what their podSelector needs: a policy whose selector has an `In`
 * requirement is listed under each (key, value) it admits, and only a pod with one of those labels can be selected by
 * it; the others are always tried. Indices into the namespace's policies (sorted by name).
 */
type SelectorIndex = { byLabel: Map<string, number[]>; always: number[] };
function indexSelectors(nps: readonly NetworkPolicy[]): SelectorIndex {
  const index: SelectorIndex = { byLabel: new Map(), always: [] };
  nps.forEach((np, i) => {
    const req = np.podSelector.requirements.find((r) => r.op === 'in');
    if (!req || req.op !== 'in') return void index.always.push(i);
    for (const v of new Set(req.values)) {
      const k = `${req.key}\0${v}`;
      const list = index.byLabel.get(k);
      if (list) list.push(i);
      else index.byLabel.set(k, [i]);
    }
  });
  return index;
}

/** `src`: the pod object it was compiled from; `everyPod`: its entries depend on every pod (egress named ports). */
type CachedPod = { key: string; pod: CompiledPod; sets: [string, string[]][]; src: PlacedPod; everyPod: boolean };
type SpecSet = { members: PlacedPod[]; name: string | null; cidrs: string[]; matches: (p: PlacedPod) => boolean };

export const createCompileCache = (): CompileCache => ({
  ids: new WeakMap(),
  nextId: 1,
  ruleText: new WeakMap(),
  selection: new Map(),
  cidrs: new Map(),
  previousCidrs: new Map(),
  pods: new Map(),
  podText: new WeakMap(),
  specSets: new Map(),
  labelsText: new WeakMap(),
});

/**
 * One view (world and pods) as every node of a replica compiles it: what does not depend on the node is worked out
 * once here and shared by all of them (`compileNodePolicy`'s `shared`): the pods grouped by node, the NetworkPolicies
 * grouped by namespace, each distinct peer selector's members and set (by the rule's text), and the entries of each
 * distinct pod profile (namespace, labels, named ports: the entries depend on nothing else of the pod, only on the
 * view). `createViewContext` carries the peer sets of the previous view that neither the changed pods nor the changed
 * namespaces' labels move, and says which pods a changed policy or namespace concerns (`ViewChange.subjects`).
 * Objects of the view (pods, policies, namespaces' labels) must not be mutated.
 */
export interface ViewContext {
  world: World;
  pods: readonly PlacedPod[];
  /** Namespaces' labels as text (a change there changes what selectors select). */
  namespacesText: string;
  byNode: Map<string, PlacedPod[]>;
  /** Pods by namespace, once something needs them (`podsByNamespace`). */
  byNamespace?: Map<string, PlacedPod[]>;
  npsByNs: Map<string, NetworkPolicy[]>;
  /** Peer specs by rule text, this view's. */
  specs: Map<string, PeerSpec>;
  /** A spec's set: its name (null: empty) and CIDRs; kept with the spec object. */
  names: WeakMap<PeerSpec, { name: string | null; cidrs: string[] }>;
  /** A rule's peers as text (kept across views: rule objects are immutable). */
  ruleText: WeakMap<object, string>;
  textOfSpec: WeakMap<PeerSpec, string>;
  /** Entries by pod profile, this view's and the previous one's (an unchanged profile keeps its entry arrays). */
  profiles: Map<string, Profile>;
  previousProfiles?: Map<string, Profile>;
  /** Which NetworkPolicies select a label set, per namespace (as CompileCache.selection). */
  selection: CompileCache['selection'];
  cidrs: Map<string, string[]>;
}

/**
 * The entries of every pod of one profile (namespace, labels, named ports) in one view, the sets they name, and what
 * they depend on beyond the pod: the peer selectors (rule texts) of the sets, and whether every pod (egress named ports).
 */
export interface Profile {
  ingress: PolicyEntry[];
  egress: PolicyEntry[];
  sets: [string, string[]][];
  texts: Set<string>;
  everyPod: boolean;
}

/** What changed from one view to the next, as `createViewContext` found it. */
export interface ViewChange {
  /** The first view: every node's rules are new. */
  all: boolean;
  /** False: namespaces or policies changed. */
  sameWorld: boolean;
  /** Pod objects added or gone (a changed pod is both: its old object gone, its new one added). */
  pods: PlacedPod[];
  added: PlacedPod[];
  removed: PlacedPod[];
  /** Peer selectors (rule texts) whose members or addresses may have changed. */
  texts: Set<string>;
  /**
   * Pods of the view whose entries a changed policy or namespace may change: the subjects (old and new) of the
   * policies added, changed or gone, and of the admin policies whose subject a namespace's new labels move.
   */
  subjects: PlacedPod[];
}

const byName = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
const podOrder = (a: PlacedPod, b: PlacedPod) => byName(a.namespace, b.namespace) || byName(a.name, b.name);

/**
 * Pod objects added and gone from one list to the next. Both are in name order as the service reads them, so they
 * are walked side by side; out of order, an unchanged pod may be reported as gone and added again, never missed.
 */
export function podChanges(
  before: readonly PlacedPod[],
  after: readonly PlacedPod[],
): { added: PlacedPod[]; removed: PlacedPod[] } {
  const added: PlacedPod[] = [];
  const removed: PlacedPod[] = [];
  let i = 0,
    j = 0;
  while (i < before.length || j < after.length) {
    const x = before[i],
      y = after[j];
    if (x === y) {
      i++;
      j++;
    } else if (!y) removed.push(before[i++]!);
    else if (!x) added.push(after[j++]!);
    else {
      const c = podOrder(x, y);
      if (c <= 0) removed.push(before[i++]!);
      if (c >= 0) added.push(after[j++]!);
    }
  }
  return { added, removed };
}

const groupByNode = (pods: readonly PlacedPod[]) => {
  const byNode = new Map<string, PlacedPod[]>();
  for (const p of pods) {
    const list = byNode.get(p.node);
    if (list) list.push(p);
    else byNode.set(p.node, [p]);
  }
  for (const list of byNode.values())
    if (list.some((p, i) => i > 0 && podOrder(list[i - 1]!, p) > 0)) list.sort(podOrder);
  return byNode;
};

export function createViewContext(
  world: World,
  pods: readonly PlacedPod[],
  previous?: ViewContext,
): { context: ViewContext; change: ViewChange } {
  const namespacesText = JSON.stringify([...world.namespaces]);
  const sameList = <T>(a: readonly T[], b: readonly T[]) => a.length === b.length && a.every((x, i) => x === b[i]);
  const sameNamespaces = !!previous && previous.namespacesText === namespacesText;
  const sameNps = !!previous && sameList(previous.world.networkPolicies, world.networkPolicies);
  const sameAdmins =
    !!previous &&
    sameList(previous.world.adminPolicies, world.adminPolicies) &&
    previous.world.baseline === world.baseline;
  const sameWorld = sameNamespaces && sameNps && sameAdmins;
  // NetworkPolicies added, changed or gone (a changed one is both, as pods are).
  const changedNps = previous && !sameNps ? objectsChanged(previous.world.networkPolicies, world.networkPolicies) : [];
  let npsByNs: Map<string, NetworkPolicy[]>;
  if (previous && sameNps) npsByNs = previous.npsByNs;
  else {
    npsByNs = new Map();
    for (const np of world.networkPolicies) {
      const list = npsByNs.get(np.namespace);
      if (list) list.push(np);
      else npsByNs.set(np.namespace, [np]);
    }
    // A namespace whose policies are the same objects keeps its list (and what `selection` knows of it).
    const touched = new Set(changedNps.map((np) => np.namespace));
    for (const [ns, list] of npsByNs) {
      const before = previous && !touched.has(ns) ? previous.npsByNs.get(ns) : undefined;
      if (before) npsByNs.set(ns, before);
      else list.sort((a, b) => a.name.localeCompare(b.name));
    }
  }
  const { added, removed } = previous ? podChanges(previous.pods, pods) : { added: [...pods], removed: [] };
  let byNode: Map<string, PlacedPod[]>;
  if (!previous || added.length + removed.length > pods.length / 8) byNode = groupByNode(pods);
  else {
    // A few pods changed: only their nodes' lists are made again.
    byNode = new Map(previous.byNode);
    const gone = new Set(removed);
    const touched = new Set([...added, ...removed].map((p) => p.node));
    for (const node of touched) {
      const list = (byNode.get(node) ?? []).filter((p) => !gone.has(p));
      for (const p of added) if (p.node === node) list.push(p);
      list.sort(podOrder);
      if (list.length > 0) byNode.set(node, list);
      else byNode.delete(node);
    }
  }
  const context: ViewContext = {
    world,
    pods,
    namespacesText,
    byNode,
    npsByNs,
    specs: new Map(),
    names: previous?.names ?? new WeakMap(),
    ruleText: previous?.ruleText ?? new WeakMap(),
    textOfSpec: previous?.textOfSpec ?? new WeakMap(),
    profiles: new Map(),
    previousProfiles: previous?.profiles,
    selection: previous?.selection ?? new Map(),
    cidrs: new Map(),
  };
  if (previous?.byNamespace && added.length + removed.length <= pods.length / 8) {
    // Carried, with the lists of the changed pods' namespaces made again.
    const byNs = new Map(previous.byNamespace);
    const gone = new Set(removed);
    for (const ns of new Set([...added, ...removed].map((p) => p.namespace))) {
      const list = (byNs.get(ns) ?? []).filter((p) => !gone.has(p));
      for (const p of added) if (p.namespace === ns) list.push(p);
      if (list.length > 0) byNs.set(ns, list);
      else byNs.delete(ns);
    }
    context.byNamespace = byNs;
  }
  const change: ViewChange = {
    all: !previous,
    sameWorld,
    pods: [...added, ...removed],
    added,
    removed,
    texts: new Set(),
    subjects: [],
  };
  if (!previous) return { context, change };
  if (sameWorld && change.pods.length === 0) {
    context.specs = previous.specs;
    context.profiles = previous.profiles;
    context.previousProfiles = previous.previousProfiles;
    return { context, change };
  }
  const oldLabels = labelsIn(previous.world);
  const newLabels = labelsIn(world);
  const podsByNs = () => podsByNamespace(context);
  const podsOf = (ns: string) => podsByNs().get(ns) ?? [];
  /** Namespaces whose labels changed (one not known has none). */
  const changedNs: string[] = [];
  if (!sameNamespaces)
    for (const ns of new Set([...previous.world.namespaces.keys(), ...world.namespaces.keys()])) {
      const a = oldLabels(ns),
        b = newLabels(ns);
      if (a !== b && JSON.stringify(a) !== JSON.stringify(b)) changedNs.push(ns);
    }
  /** Whether a namespace selector tells one of the changed namespaces' old labels from its new ones. */
  const moves = (s: Selector, ns: string) => selects(s, oldLabels(ns)) !== selects(s, newLabels(ns));

  // The pods whose entries a changed policy or namespace may change, beyond the changed pods themselves: those a
  // NetworkPolicy added or gone selects (its namespace's pods, by their own labels), those an admin policy (or the
  // baseline) added or gone has as subject (the old object with the old namespaces' labels, the new one with the new),
  // and, in a namespace whose labels changed, those an unchanged admin policy has as subject before or after when its
  // subject's namespace selector tells the labels apart. (A NetworkPolicy selects by pod labels alone.)
  const subjects = new Set<PlacedPod>();
  for (const np of changedNps)
    for (const p of podsOf(np.namespace)) if (selects(np.podSelector, p.labels)) subjects.add(p);
  const adminsOf = (w: World) => (w.baseline ? [...w.adminPolicies, w.baseline] : w.adminPolicies);
  const oldAdmins = new Set(adminsOf(previous.world));
  const newAdmins = new Set(adminsOf(world));
  const addSubjects = (a: AdminPolicy, labelsOf: LabelsOf) => {
    const ns = adminNsSelector(a.subject);
    for (const [name, list] of podsByNs()) {
      if (ns && !selects(ns, labelsOf(name))) continue;
      for (const p of list) if (adminPeerMatches(a.subject, p, labelsOf)) subjects.add(p);
    }
  };
  if (!sameAdmins) {
    for (const a of oldAdmins) if (!newAdmins.has(a)) addSubjects(a, oldLabels);
    for (const a of newAdmins) if (!oldAdmins.has(a)) addSubjects(a, newLabels);
  }
  for (const ns of changedNs)
    for (const a of newAdmins) {
      const s = adminNsSelector(a.subject);
      if (!oldAdmins.has(a) || !s || !moves(s, ns)) continue;
      for (const p of podsOf(ns))
        if (adminPeerMatches(a.subject, p, oldLabels) || adminPeerMatches(a.subject, p, newLabels)) subjects.add(p);
    }
  change.subjects = [...subjects];

  // Peer specs. One whose text no policy names any more is dropped (a node that named it hosts a subject of the policy
  // that did, so it is compiled again). One that no changed pod matches (before or after) and none of whose
  // namespace selectors tells a changed namespace's labels apart has the same members, the same objects: it is kept.
  // The others get their members again: the changed pods out, then in if they match, and the pods of each namespace
  // whose change a selector tells apart, in or out. (A spec's members are exactly the view's pods `match` admits.)
  const live = sameNps && sameAdmins ? null : liveTexts(world, context.ruleText);
  for (const [text, spec] of previous.specs) {
    if (live && !live.has(text)) continue;
    if (spec.any) {
      context.specs.set(text, spec);
      continue;
    }
    const nsMoved = changedNs.filter((ns) => spec.nsSelectors.some((s) => moves(s, ns)));
    const podsMoved = removed.some((p) => spec.pods.has(p)) || added.some((p) => spec.match(p, newLabels));
    if (!podsMoved && nsMoved.length === 0) {
      context.specs.set(text, spec);
      continue;
    }
    const members = new Set(spec.pods);
    for (const p of removed) members.delete(p);
    for (const p of added) if (spec.match(p, newLabels)) members.add(p);
    for (const ns of nsMoved)
      for (const p of podsOf(ns)) {
        if (spec.match(p, newLabels)) members.add(p);
        else members.delete(p);
      }
    if (!podsMoved && members.size === spec.pods.size && [...members].every((p) => spec.pods.has(p))) {
      context.specs.set(text, spec);
      continue;
    }
    change.texts.add(text);
    const next: PeerSpec = { ...spec, pods: members };
    context.specs.set(text, next);
    context.textOfSpec.set(next, text);
  }
  return { context, change };
}

/** The objects of one list not in the other, either way (by identity). */
function objectsChanged<T>(before: readonly T[], after: readonly T[]): T[] {
  const a = new Set(before),
    b = new Set(after);
  return [...before.filter((x) => !b.has(x)), ...after.filter((x) => !a.has(x))];
}

/** The view's pods by namespace, worked out once per view (or carried from the previous one). */
function podsByNamespace(context: ViewContext): Map<string, PlacedPod[]> {
  if (context.byNamespace) return context.byNamespace;
  const byNs = new Map<string, PlacedPod[]>();
  for (const p of context.pods) {
    const list = byNs.get(p.namespace);
    if (list) list.push(p);
    else byNs.set(p.namespace, [p]);
  }
  return (context.byNamespace = byNs);
}

/** The texts of every rule's peers and every admin subject of the world (see `rulePeers`), remembered per rule. */
function liveTexts(w: World, ruleText: WeakMap<object, string>): Set<string> {
  const live = new Set<string>();
  const add = (rule: object, make: () => string) => {
    let text = ruleText.get(rule);
    if (text === undefined) ruleText.set(rule, (text = make()));
    live.add(text);
  };
  for (const np of w.networkPolicies)
    for (const r of [...np.ingress, ...np.egress]) if (r.peers && r.peers.length > 0) add(r, () => npRuleText(np, r));
  for (const a of w.baseline ? [...w.adminPolicies, w.baseline] : w.adminPolicies) {
    add(a.subject, () => subjectText(a));
    for (const r of [...a.ingress, ...a.egress]) add(r, () => adminRuleText(r));
  }
  return live;
}

type Address = { family: Family; value: bigint };
/** Inclusive address ranges of one family. */
type Range = { family: Family; start: bigint; end: bigint };
/** A namespace's labels (those of a namespace not known: none). */
type LabelsOf = (namespace: string) => Record<string, string>;
const NO_LABELS: Record<string, string> = Object.freeze({}) as Record<string, string>;
const labelsIn =
  (w: World): LabelsOf =>
  (ns) =>
    w.namespaces.get(ns) ?? NO_LABELS;
/**
 * `match`: whether a pod is one of `pods` (by its own labels and its namespace's, as `labelsOf` gives them), for any
 * pod. `nsSelectors`: the namespace selectors its peers use; the members can change with a namespace's labels only
 * if one of them tells the old labels from the new.
 */
type PeerSpec =
  | { any: true }
  | {
      any: false;
      ranges: Range[];
      pods: Set<PlacedPod>;
      match: (p: PlacedPod, labelsOf: LabelsOf) => boolean;
      nsSelectors: Selector[];
    };
const matchesNoPod = () => false;
/** Whether a NetworkPolicy peer (of a policy in `policyNs`) selects the pod; an ipBlock selects none by labels. */
const npPeerMatches = (peer: Peer, policyNs: string, p: PlacedPod, labelsOf: LabelsOf) =>
  !peer.ipBlock &&
  (peer.namespaceSelector ? selects(peer.namespaceSelector, labelsOf(p.namespace)) : p.namespace === policyNs) &&
  (!peer.podSelector || selects(peer.podSelector, p.labels));
/** Whether an admin peer (or subject) selects the pod; `networks` select none by labels. */
const adminPeerMatches = (peer: AdminPeer, p: PlacedPod, labelsOf: LabelsOf) =>
  peer.namespaces
    ? selects(peer.namespaces, labelsOf(p.namespace))
    : !!peer.pods &&
      selects(peer.pods.namespaceSelector, labelsOf(p.namespace)) &&
      selects(peer.pods.podSelector, p.labels);
/** The namespace selector of an admin peer (or subject), if it has one. */
const adminNsSelector = (peer: AdminPeer): Selector | undefined => peer.namespaces ?? peer.pods?.namespaceSelector;
/** Rule peers (and admin subjects) as text: rules with the same text make the same peer set. */
const jsonText = (v: unknown) => JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x));
const npRuleText = (np: NetworkPolicy, r: Rule) => jsonText([np.namespace, r.peers]);
const adminRuleText = (r: AdminRule) => jsonText(['admin', r.peers]);
const subjectText = (a: AdminPolicy) => jsonText(['subject', a.subject]);
type PortSpec =
  | { kind: 'any' }
  | { kind: 'range'; protocol: Protocol; from: number | null; to: number | null }
  | { kind: 'named'; name: string; protocol: Protocol | null };

const selects = (s: Selector, labels: Record<string, string>) => matches(s.requirements, labels);
const rangeOf = (c: Cidr): Range => {
  const size = 1n << BigInt(bitsOf(c.family) - c.prefixLength);
  return { family: c.family, start: c.base, end: c.base + size - 1n };
};
const inRanges = (ranges: Range[], a: Address) =>
  ranges.some((r) => r.family === a.family && a.value >= r.start && a.value <= r.end);

/** `a` minus every range in `cut`. */
function subtract(a: Range, cut: Range[]): Range[] {
  let out = [a];
  for (const c of cut) {
    out = out.flatMap((r) => {
      if (r.family !== c.family || c.end < r.start || c.start > r.end) return [r];
      const rest: Range[] = [];
      if (c.start > r.start) rest.push({ family: r.family, start: r.start, end: c.start - 1n });
      if (c.end < r.end) rest.push({ family: r.family, start: c.end + 1n, end: r.end });
      return rest;
    });
  }
  return out;
}

/**
 * Ranges merged and split into the fewest CIDRs, sorted by family and address. No CIDR is wider than /1: the agent
 * renders sets as ipset `hash:net`, which refuses a /0, so "every address" (`ipBlock: 0.0.0.0/0`) is its two halves.
 */
export function rangesToCidrs(ranges: Range[]): string[] {
  const sorted = [...ranges].sort(
    (a, b) => a.family - b.family || (a.start < b.start ? -1 : a.start > b.start ? 1 : 0),
  );
  const merged: Range[] = [];
  for (const r of sorted) {
    const last = merged[merged.length - 1];
    if (last && last.family === r.family && r.start <= last.end + 1n) last.end = r.end > last.end ? r.end : last.end;
    else merged.push({ ...r });
  }
  const out: string[] = [];
  for (const r of merged) {
    const bits = bitsOf(r.family);
    let start = r.start;
    while (start <= r.end) {
      let size = 0;
      while (
        size < bits - 1 &&
        (start & ((1n << BigInt(size + 1)) - 1n)) === 0n &&
        start + (1n << BigInt(size + 1)) - 1n <= r.end
      )
        size++;
      out.push(`${formatAddress(r.family, start)}/${bits - size}`);
      start += 1n << BigInt(size);
    }
  }
  return out;
}

/** The stable name of an address set: Weft's prefix and a hash of its sorted content (at most 31 characters, ipset's limit). */
export function setName(cidrs: string[]): string {
  return `weft-${createHash('sha256').update(cidrs.join(',')).digest('hex').slice(0, 16)}`;
}

/** A pod object's labels as text, its profile and its addresses as text (pod objects are never mutated). */
const sharedLabelsText = new WeakMap<PlacedPod, string>();
const profileKeys = new WeakMap<PlacedPod, string>();
const profileKey = (p: PlacedPod) => {
  let key = profileKeys.get(p);
  if (key === undefined) profileKeys.set(p, (key = JSON.stringify([p.namespace, p.labels, p.ports])));
  return key;
};
const addressTexts = new WeakMap<PlacedPod, string[]>();
const addressesOf = (p: PlacedPod) => {
  let out = addressTexts.get(p);
  if (out === undefined) addressTexts.set(p, (out = p.addresses.map((a) => formatAddress(a.family, a.value))));
  return out;
};
const sameEntry = (a: PolicyEntry, b: PolicyEntry) =>
  a === b ||
  (a.tier === b.tier &&
    a.action === b.action &&
    a.peerSet === b.peerSet &&
    a.protocol === b.protocol &&
    a.source === b.source &&
    (a.ports === b.ports || (!!a.ports && !!b.ports && a.ports.from === b.ports.from && a.ports.to === b.ports.to)));
const sameEntries = (a: readonly PolicyEntry[], b: readonly PolicyEntry[]) =>
  a === b || (a.length === b.length && a.every((e, i) => sameEntry(e, b[i]!)));
const sameCompiledPod = (a: CompiledPod, b: CompiledPod) =>
  a === b ||
  (a.namespace === b.namespace &&
    a.name === b.name &&
    a.addresses.length === b.addresses.length &&
    a.addresses.every((x, i) => x === b.addresses[i]) &&
    sameEntries(a.ingress, b.ingress) &&
    sameEntries(a.egress, b.egress));

const podIds = new WeakMap<PlacedPod, string>();
/** "namespace/name", once per pod object. */
const idOfPod = (p: PlacedPod) => {
  let id = podIds.get(p);
  if (id === undefined) podIds.set(p, (id = `${p.namespace}/${p.name}`));
  return id;
};
const sameAddresses = (a: Pod, b: Pod) =>
  a === b ||
  (a.addresses.length === b.addresses.length &&
    a.addresses.every((x, i) => x.family === b.addresses[i]!.family && x.value === b.addresses[i]!.value));

/**
 * `shared`: the view's context (`createViewContext`), for a replica that compiles many nodes from one view: then
 * `w` and `pods` must be its world and pods and `cache` is required.
 */
export function compileNodePolicy(
  w: World,
  pods: readonly PlacedPod[],
  node: string,
  cache?: CompileCache,
  shared?: ViewContext,
): NodePolicy {
  const sets = new Map<string, string[]>();
  const nsLabels = (ns: string) => w.namespaces.get(ns) ?? {};
  /** While a profile is compiled (shared view): the peer selectors its sets come from, and whether egress named ports. */
  let collecting: Set<string> | null = null;
  let namedEgress = false;
  const labelsTexts = cache?.labelsText ?? sharedLabelsText;
  const podRanges = (p: Pod): Range[] => p.addresses.map((a) => ({ family: a.family, start: a.value, end: a.value }));

  const labelsOf = labelsIn(w);
  /**
   * The pods `match` admits. With a shared view only the pods of the namespaces a peer can select are tried: those
   * its namespace selector admits, or the policy's own.
   */
  const podsMatching = (
    match: (p: PlacedPod, l: LabelsOf) => boolean,
    nsSelector: Selector | undefined,
    ownNs?: string,
  ): Set<PlacedPod> => {
    if (!shared) return new Set(pods.filter((p) => match(p, labelsOf)));
    const out = new Set<PlacedPod>();
    const byNs = podsByNamespace(shared);
    if (!nsSelector) {
      for (const p of byNs.get(ownNs!) ?? []) if (match(p, labelsOf)) out.add(p);
      return out;
    }
    for (const [ns, list] of byNs)
      if (selects(nsSelector, labelsOf(ns))) for (const p of list) if (match(p, labelsOf)) out.add(p);
    return out;
  };
  const npPeer = (peer: Peer, policyNs: string): PeerSpec => {
    if (peer.ipBlock)
      return {
        any: false,
        ranges: subtract(rangeOf(peer.ipBlock.cidr), peer.ipBlock.except.map(rangeOf)),
        pods: new Set(),
        match: matchesNoPod,
        nsSelectors: [],
      };
    const match = (p: PlacedPod, l: LabelsOf) => npPeerMatches(peer, policyNs, p, l);
    return {
      any: false,
      ranges: [],
      pods: podsMatching(match, peer.namespaceSelector, policyNs),
      match,
      nsSelectors: peer.namespaceSelector ? [peer.namespaceSelector] : [],
    };
  };
  const adminPeer = (peer: AdminPeer): PeerSpec => {
    if (peer.networks)
      return { any: false, ranges: peer.networks.map(rangeOf), pods: new Set(), match: matchesNoPod, nsSelectors: [] };
    const match = (p: PlacedPod, l: LabelsOf) => adminPeerMatches(peer, p, l);
    const ns = adminNsSelector(peer);
    return {
      any: false,
      ranges: [],
      pods: podsMatching(match, ns ?? { requirements: [] }),
      match,
      nsSelectors: ns ? [ns] : [],
    };
  };
  // A rule's peers, and the set they make, are the same for every subject pod: computed once per rule, and rules
  // with the same peers (the same selectors, from the same namespace) share them.
  const peersOfRule = new WeakMap<object, PeerSpec>();
  const peersByText = shared?.specs ?? new Map<string, PeerSpec>();
  const textOfSpec = shared?.textOfSpec ?? new WeakMap<PeerSpec, string>();
  const ruleText = shared?.ruleText ?? cache?.ruleText;
  const specSets = new Map<string, SpecSet>();
  const rulePeers = (rule: object, make: () => PeerSpec, textOf?: () => string): PeerSpec => {
    let spec = peersOfRule.get(rule);
    if (spec) return spec;
    const text = ruleText?.get(rule) ?? textOf?.();
    if (text !== undefined) ruleText?.set(rule, text);
    spec = (text === undefined ? undefined : peersByText.get(text)) ?? make();
    if (text !== undefined) {
      peersByText.set(text, spec);
      textOfSpec.set(spec, text);
    }
    peersOfRule.set(rule, spec);
    return spec;
  };
  const setOfSpec = new WeakMap<PeerSpec, string | null | undefined>();
  const union = (specs: PeerSpec[]): PeerSpec => {
    if (specs.length === 0 || specs.some((s) => s.any)) return { any: true };
    const ranges: Range[] = [];
    const ps = new Set<PlacedPod>();
    const matches: ((p: PlacedPod, l: LabelsOf) => boolean)[] = [];
    const nsSelectors: Selector[] = [];
    for (const s of specs)
      if (!s.any) {
        ranges.push(...s.ranges);
        for (const p of s.pods) ps.add(p);
        matches.push(s.match);
        nsSelectors.push(...s.nsSelectors);
      }
    return { any: false, ranges, pods: ps, match: (p, l) => matches.some((m) => m(p, l)), nsSelectors };
  };
  /** Names a set (registering it), or null for an empty one, which can match nothing. */
  const cidrsOf = shared?.cidrs ?? cache?.cidrs ?? new Map<string, string[]>();
  const nameSet = (ranges: Range[]): string | null => {
    // Rules that select the same pods make the same set: its CIDRs are worked out once (and kept for the next
    // compilation when there is a cache).
    const key = ranges
      .map((r) => `${r.family}:${r.start}-${r.end}`)
      .sort()
      .join(',');
    let cidrs = cidrsOf.get(key) ?? (shared ? undefined : cache?.previousCidrs.get(key));
    if (!cidrs) cidrs = rangesToCidrs(ranges);
    cidrsOf.set(key, cidrs);
    if (cidrs.length === 0) return null;
    const name = setName(cidrs);
    sets.set(name, cidrs);
    return name;
  };

  /** A peer spec's set name; null: any address; undefined: an empty set, which matches nothing. */
  const setOf = (s: PeerSpec): string | null | undefined => {
    if (s.any) return null;
    if (collecting) {
      const text = textOfSpec.get(s);
      if (text !== undefined) collecting.add(text);
    }
    if (setOfSpec.has(s)) return setOfSpec.get(s);
    if (shared) {
      // Worked out once per view for every node (kept while the members are the same objects).
      let set = shared.names.get(s);
      if (set) {
        if (set.name) sets.set(set.name, set.cidrs);
      } else {
        const name = nameSet([...s.ranges, ...[...s.pods].flatMap(podRanges)]);
        shared.names.set(s, (set = { name, cidrs: name ? sets.get(name)! : [] }));
      }
      setOfSpec.set(s, set.name ?? undefined);
      return set.name ?? undefined;
    }
    // A selector whose text is that of the previous compilation, and whose members have the same addresses, names
    // the same set.
    const text = textOfSpec.get(s);
    const members = [...s.pods];
    const before = text === undefined ? undefined : cache?.specSets.get(text);
    let name: string | undefined;
    if (
      before &&
      before.members.length === members.length &&
      before.members.every((m, i) => sameAddresses(m, members[i]!))
    ) {
      name = before.name ?? undefined;
      if (before.name) sets.set(before.name, before.cidrs);
    } else {
      name = nameSet([...s.ranges, ...members.flatMap(podRanges)]) ?? undefined;
    }
    if (text !== undefined && cache)
      specSets.set(text, {
        members,
        name: name ?? null,
        cidrs: name ? sets.get(name)! : [],
        matches: (p) => s.match(p, labelsOf),
      });
    setOfSpec.set(s, name);
    return name;
  };
  /** A pod's own fields (labels, addresses, named ports) as text, once per pod object. */
  const podText = (p: PlacedPod): string => {
    let text = cache?.podText.get(p);
    if (text === undefined) {
      text = JSON.stringify([p.namespace, p.name, p.labels, p.addresses.map((a) => `${a.family}:${a.value}`), p.ports]);
      cache?.podText.set(p, text);
    }
    return text;
  };
  // NetworkPolicies by namespace, by name (the order a pod's selecting policies are read in).
  // (The same policy objects as at the previous compilation: the same grouping.)
  const sameNps =
    !shared &&
    !!cache?.byNamespace &&
    cache.byNamespace.nps.length === w.networkPolicies.length &&
    cache.byNamespace.nps.every((np, i) => np === w.networkPolicies[i]);
  const npsByNs = shared ? shared.npsByNs : sameNps ? cache!.byNamespace!.grouped : new Map<string, NetworkPolicy[]>();
  if (!sameNps && !shared) {
    for (const np of w.networkPolicies) {
      let list = npsByNs.get(np.namespace);
      if (!list) npsByNs.set(np.namespace, (list = []));
      list.push(np);
    }
    for (const list of npsByNs.values()) list.sort((a, b) => a.name.localeCompare(b.name));
    if (cache) cache.byNamespace = { nps: [...w.networkPolicies], grouped: npsByNs };
  }
  /** The NetworkPolicies of the pod's namespace that select it (either direction), by name. */
  const selectingNps = (subject: PlacedPod): readonly NetworkPolicy[] => {
    const nps = npsByNs.get(subject.namespace) ?? [];
    const selection = shared?.selection ?? cache?.selection;
    if (!selection) return nps.filter((np) => selects(np.podSelector, subject.labels));
    let entry = selection.get(subject.namespace);
    if (!entry || entry.nps.length !== nps.length || entry.nps.some((np, i) => np !== nps[i]))
      selection.set(subject.namespace, (entry = { nps, byLabels: new Map() }));
    let key = labelsTexts.get(subject);
    if (key === undefined) labelsTexts.set(subject, (key = JSON.stringify(subject.labels)));
    let selected = entry.byLabels.get(key);
    if (!selected) {
      // Only the policies whose selector can admit one of the pod's labels are tried (in their order, by name).
      const index = (entry.index ??= indexSelectors(nps));
      const candidates = [...index.always];
      for (const k in subject.labels) candidates.push(...(index.byLabel.get(`${k}\0${subject.labels[k]}`) ?? []));
      if (candidates.length > index.always.length) candidates.sort((a, b) => a - b);
      selected = candidates
        .filter((i, j) => candidates[j - 1] !== i)
        .map((i) => nps[i]!)
        .filter((np) => selects(np.podSelector, subject.labels));
      entry.byLabels.set(key, selected);
    }
    return selected;
  };
  const npRulePeers = (np: NetworkPolicy, r: Rule): PeerSpec =>
    !r.peers || r.peers.length === 0
      ? { any: true }
      : rulePeers(
          r,
          () => union(r.peers!.map((p) => npPeer(p, np.namespace))),
          () => npRuleText(np, r),
        );
  const adminRulePeers = (r: AdminRule): PeerSpec =>
    rulePeers(
      r,
      () => union(r.peers.map(adminPeer)),
      () => adminRuleText(r),
    );
  const isSubject = (a: AdminPolicy, subject: PlacedPod) =>
    (
      rulePeers(
        a.subject,
        () => adminPeer(a.subject),
        () => subjectText(a),
      ) as { pods?: Set<PlacedPod> }
    ).pods?.has(subject) ?? false;
  const adminsOf = (subject: PlacedPod) =>
    w.adminPolicies
      .filter((a) => isSubject(a, subject))
      .sort((a, b) => a.priority - b.priority || a.name.localeCompare(b.name));

  const compileDirection = (dir: 'ingress' | 'egress', subject: PlacedPod): PolicyEntry[] => {
    const entries: PolicyEntry[] = [];
    const emit = (tier: EntryTier, action: EntryAction, peer: PeerSpec, portSpecs: PortSpec[], source: string) => {
      for (const spec of portSpecs) {
        if (spec.kind === 'any' || spec.kind === 'range') {
          const peerSet = setOf(peer);
          if (peerSet === undefined) continue; // an empty set matches nothing
          entries.push({
            tier,
            action,
            peerSet,
            source,
            protocol: spec.kind === 'any' ? null : spec.protocol,
            ports: spec.kind === 'range' && spec.from !== null ? { from: spec.from, to: spec.to ?? spec.from } : null,
          });
          continue;
        }
        for (const protocol of spec.protocol ? [spec.protocol] : PROTOCOLS) {
          if (dir === 'ingress') {
            // Resolved on the pod itself, the destination.
            const port = subject.ports.find((p) => p.name === spec.name && p.protocol === protocol)?.port;
            if (port === undefined) continue;
            const peerSet = setOf(peer);
            if (peerSet === undefined) continue;
            entries.push({ tier, action, peerSet, protocol, ports: { from: port, to: port }, source });
            continue;
          }
          // Egress: resolved on each destination pod; the outside has no named ports.
          namedEgress = true;
          const byPort = new Map<number, Range[]>();
          for (const q of pods) {
            const port = q.ports.find((p) => p.name === spec.name && p.protocol === protocol)?.port;
            if (port === undefined) continue;
            const addrs = q.addresses.filter((a) => peer.any || peer.pods.has(q) || inRanges(peer.ranges, a));
            if (addrs.length === 0) continue;
            byPort.set(port, [...(byPort.get(port) ?? []), ...podRanges({ ...q, addresses: addrs })]);
          }
          for (const [port, ranges] of [...byPort].sort((a, b) => a[0] - b[0])) {
            entries.push({ tier, action, peerSet: nameSet(ranges), protocol, ports: { from: port, to: port }, source });
          }
        }
      }
    };
    const adminPorts = (r: AdminRule): PortSpec[] =>
      r.ports === undefined
        ? [{ kind: 'any' }]
        : r.ports.map((p): PortSpec =>
            p.kind === 'named'
              ? { kind: 'named', name: p.name, protocol: null }
              : p.kind === 'number'
                ? { kind: 'range', protocol: p.protocol, from: p.port, to: p.port }
                : { kind: 'range', protocol: p.protocol, from: p.start, to: p.end },
          );
    const npPorts = (r: Rule): PortSpec[] =>
      !r.ports || r.ports.length === 0
        ? [{ kind: 'any' }]
        : r.ports.map((p): PortSpec =>
            typeof p.port === 'string'
              ? { kind: 'named', name: p.port, protocol: p.protocol }
              : {
                  kind: 'range',
                  protocol: p.protocol,
                  from: p.port ?? null,
                  to: p.port === undefined ? null : (p.endPort ?? p.port),
                },
          );

    // 1. Admin tier.
    for (const a of adminsOf(subject)) {
      for (const r of a[dir])
        emit(
          'admin',
          r.action === 'Allow' ? 'allow' : r.action === 'Deny' ? 'deny' : 'pass',
          adminRulePeers(r),
          adminPorts(r),
          `AdminNetworkPolicy/${a.name} ${r.name}`,
        );
    }
    // 2. NetworkPolicy tier, ending in default deny when a policy selects the pod.
    const selecting = selectingNps(subject).filter((np) => (dir === 'ingress' ? np.affectsIngress : np.affectsEgress));
    if (selecting.length > 0) {
      for (const np of selecting) {
        np[dir].forEach((r, i) =>
          emit(
            'networkpolicy',
            'allow',
            npRulePeers(np, r),
            npPorts(r),
            `NetworkPolicy/${np.namespace}/${np.name} ${dir}[${i}]`,
          ),
        );
      }
      entries.push({
        tier: 'networkpolicy',
        action: 'deny',
        peerSet: null,
        protocol: null,
        ports: null,
        source: `NetworkPolicy/${selecting[0]!.namespace}/${selecting[0]!.name} default deny`,
      });
      return entries;
    }
    // 3. Baseline tier.
    if (w.baseline && isSubject(w.baseline, subject)) {
      for (const r of w.baseline[dir])
        emit(
          'baseline',
          r.action === 'Allow' ? 'allow' : 'deny',
          adminRulePeers(r),
          adminPorts(r),
          `BaselineAdminNetworkPolicy/default ${r.name}`,
        );
    }
    return entries;
  };

  /** What a local pod's entries depend on, as text (see CompileCache); the same text means the same entries. */
  let everyPod: string | undefined;
  const nsTexts = new Map<string, string>();
  const nsText = (ns: string) => {
    let text = nsTexts.get(ns);
    if (text === undefined) nsTexts.set(ns, (text = JSON.stringify(nsLabels(ns))));
    return text;
  };
  const idOf = (o: object) => {
    let id = cache!.ids.get(o);
    if (id === undefined) cache!.ids.set(o, (id = cache!.nextId++));
    return id;
  };
  const setKey = (spec: PeerSpec) => (spec.any ? '*' : (setOf(spec) ?? '-'));
  /** Whether the last pod `dependencies` was asked about depends on every pod. */
  let dependsOnEveryPod = false;
  const dependencies = (subject: PlacedPod): string => {
    let key = `${podText(subject)}\n${nsText(subject.namespace)}`;
    let named = false;
    dependsOnEveryPod = false;
    const admins = w.adminPolicies.length > 0 ? adminsOf(subject) : [];
    const nps = selectingNps(subject);
    for (const dir of ['ingress', 'egress'] as const) {
      key += `\n${dir}`;
      for (const a of admins) {
        key += ` a${idOf(a)}`;
        for (const r of a[dir]) {
          key += ` ${setKey(adminRulePeers(r))}`;
          named ||= !!r.ports?.some((p) => p.kind === 'named');
        }
      }
      let selecting = 0;
      for (const np of nps) {
        if (!(dir === 'ingress' ? np.affectsIngress : np.affectsEgress)) continue;
        selecting++;
        key += ` n${idOf(np)}`;
        for (const r of np[dir]) {
          key += ` ${setKey(npRulePeers(np, r))}`;
          named ||= !!r.ports?.some((p) => typeof p.port === 'string');
        }
      }
      if (selecting === 0 && w.baseline && isSubject(w.baseline, subject)) {
        key += ` b${idOf(w.baseline)}`;
        for (const r of w.baseline[dir]) {
          key += ` ${setKey(adminRulePeers(r))}`;
          named ||= !!r.ports?.some((p) => p.kind === 'named');
        }
      }
      // Egress named ports are resolved on every destination pod.
      if (dir === 'egress' && named) {
        dependsOnEveryPod = true;
        everyPod ??= `${JSON.stringify([...w.namespaces])}\n${pods.map(podText).join('\n')}`;
        key += `\n${everyPod}`;
      }
    }
    return key;
  };
  const order = podOrder;
  // The quiet path (see CompileCache.last): the same namespaces and policies, the same pods but for a few objects in
  // their places, and every set with the same members' addresses as before: then an unchanged pod object's entries
  // are the ones it had (what they depend on is the same), unless they depend on every pod.
  const namespacesText = cache && !shared ? JSON.stringify([...w.namespaces]) : '';
  let changedPods: PlacedPod[] | null = null;
  const last = cache?.last;
  if (
    cache &&
    !shared &&
    last &&
    last.namespaces === namespacesText &&
    sameNps &&
    last.baseline === w.baseline &&
    last.pods.length === pods.length &&
    last.admins.length === w.adminPolicies.length &&
    last.admins.every((a, i) => a === w.adminPolicies[i])
  ) {
    changedPods = [];
    for (let i = 0; i < pods.length; i++) {
      const a = last.pods[i]!,
        b = pods[i]!;
      if (a === b) continue;
      if (a.namespace !== b.namespace || a.name !== b.name || a.node !== b.node) {
        changedPods = null;
        break;
      }
      changedPods.push(a, b);
    }
    // A set changes when a changed pod joins or leaves it, or is in it with other addresses.
    if (changedPods && changedPods.length > 0) {
      for (const spec of cache.specSets.values()) {
        for (let i = 0; changedPods && i < changedPods.length; i += 2) {
          const a = changedPods[i]!,
            b = changedPods[i + 1]!;
          const was = spec.matches(a);
          if (was !== spec.matches(b) || (was && !sameAddresses(a, b))) changedPods = null;
        }
        if (!changedPods) break;
      }
    }
  }
  const quiet = changedPods;
  let local: PlacedPod[];
  if (quiet && last) {
    // The same local pods in the same order, a few objects replaced.
    const replaced = new Map<PlacedPod, PlacedPod>();
    for (let i = 0; i < quiet.length; i += 2) replaced.set(quiet[i]!, quiet[i + 1]!);
    local = replaced.size === 0 ? last.local : last.local.map((p) => replaced.get(p) ?? p);
  } else if (shared) {
    local = shared.byNode.get(node) ?? [];
  } else {
    local = pods.filter((p) => p.node === node);
    // (The service reads pods in this order already.)
    if (local.some((p, i) => i > 0 && order(local[i - 1]!, p) > 0)) local.sort(order);
  }
  if (shared && cache) {
    // Each distinct profile is compiled once per view for every node; a pod keeps its compiled object while it is the
    // same pod object with its profile's entries unchanged.
    const profileOf = (p: PlacedPod): Profile => {
      const key = profileKey(p);
      let profile = shared.profiles.get(key);
      if (profile) return profile;
      collecting = new Set();
      namedEgress = false;
      let ingress = compileDirection('ingress', p);
      let egress = compileDirection('egress', p);
      const texts = collecting;
      collecting = null;
      const old = shared.previousProfiles?.get(key);
      if (old && sameEntries(old.ingress, ingress)) ingress = old.ingress;
      if (old && sameEntries(old.egress, egress)) egress = old.egress;
      const names = [...new Set([...ingress, ...egress].map((e) => e.peerSet).filter((n): n is string => n !== null))];
      profile = { ingress, egress, sets: names.map((n) => [n, sets.get(n)!]), texts, everyPod: namedEgress };
      shared.profiles.set(key, profile);
      return profile;
    };
    const kept = new Map<string, CachedPod>();
    const texts = new Set<string>();
    const seen = new Set<Profile>();
    const out = local.map((p): CompiledPod => {
      const profile = profileOf(p);
      if (!seen.has(profile)) {
        seen.add(profile);
        for (const [name, cidrs] of profile.sets) sets.set(name, cidrs);
        for (const t of profile.texts) texts.add(t);
      }
      const id = idOfPod(p);
      const before = cache.pods.get(id);
      const pod =
        before && before.src === p && before.pod.ingress === profile.ingress && before.pod.egress === profile.egress
          ? before.pod
          : {
              namespace: p.namespace,
              name: p.name,
              addresses: addressesOf(p),
              ingress: profile.ingress,
              egress: profile.egress,
            };
      kept.set(id, { key: '', pod, sets: profile.sets, src: p, everyPod: profile.everyPod });
      return pod;
    });
    cache.pods = kept;
    cache.texts = texts;
    cache.last = undefined;
    return { pods: out, sets: new Map([...sets].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) };
  }
  const kept = new Map<string, CachedPod>();
  const keptInOrder: CachedPod[] = [];
  const compiled = local.map((p): CompiledPod => {
    const id = idOfPod(p);
    const before = cache?.pods.get(id);
    if (quiet && before && before.src === p && (!before.everyPod || quiet.length === 0)) {
      for (const [name, cidrs] of before.sets) sets.set(name, cidrs);
      kept.set(id, before);
      keptInOrder.push(before);
      return before.pod;
    }
    const key = cache ? dependencies(p) : '';
    if (cache && before && before.key === key) {
      for (const [name, cidrs] of before.sets) sets.set(name, cidrs);
      const k =
        before.src === p && before.everyPod === dependsOnEveryPod
          ? before
          : { ...before, src: p, everyPod: dependsOnEveryPod };
      kept.set(id, k);
      keptInOrder.push(k);
      return before.pod;
    }
    const pod: CompiledPod = {
      namespace: p.namespace,
      name: p.name,
      addresses: p.addresses.map((a) => formatAddress(a.family, a.value)),
      ingress: compileDirection('ingress', p),
      egress: compileDirection('egress', p),
    };
    if (cache) {
      const names = [
        ...new Set([...pod.ingress, ...pod.egress].map((e) => e.peerSet).filter((n): n is string => n !== null)),
      ];
      const k: CachedPod = { key, pod, sets: names.map((n) => [n, sets.get(n)!]), src: p, everyPod: dependsOnEveryPod };
      kept.set(id, k);
      keptInOrder.push(k);
    }
    return pod;
  });
  if (cache) {
    cache.pods = kept;
    cache.previousCidrs = cidrsOf;
    // On the quiet path only the changed pods' selectors were worked out; the others' are as they were.
    if (quiet) for (const [text, spec] of cache.specSets) if (!specSets.has(text)) specSets.set(text, spec);
    cache.specSets = specSets;
    cache.cidrs = new Map();
    cache.last = {
      pods: [...pods],
      local,
      namespaces: namespacesText,
      admins: [...w.adminPolicies],
      baseline: w.baseline,
    };
  }
  const used = new Set<string | null>();
  if (cache) for (const k of keptInOrder) for (const [name] of k.sets) used.add(name);
  else for (const p of compiled) for (const e of [...p.ingress, ...p.egress]) used.add(e.peerSet);
  return {
    pods: compiled,
    sets: new Map(
      [...sets].filter(([name]) => used.has(name)).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)),
    ),
  };
}

/**
 * A direction's verdict from its entries, as a dataplane applies them: the first match decides; `pass` goes on at
 * the first entry of another tier; nothing matching allows. `sets` holds the CIDRs of each set.
 */
export function entriesAllow(
  entries: readonly PolicyEntry[],
  sets: ReadonlyMap<string, string[]>,
  peer: Address,
  protocol: Protocol,
  port: number,
  inSet: (cidrs: string[], a: Address) => boolean,
): boolean {
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    if (e.peerSet !== null && !inSet(sets.get(e.peerSet) ?? [], peer)) continue;
    if (e.protocol !== null && e.protocol !== protocol) continue;
    if (e.ports && (port < e.ports.from || port > e.ports.to)) continue;
    if (e.action === 'pass') {
      while (i + 1 < entries.length && entries[i + 1]!.tier === 'admin') i++;
      continue;
    }
    return e.action === 'allow';
  }
  return true;
}

export interface NodePolicyDelta {
  /** Pods added or changed. */
  pods: CompiledPod[];
  /** Sets that `before` did not have. */
  sets: Map<string, string[]>;
  /** Pods gone ("namespace/name"). */
  removedPods: string[];
  /** Sets no entry names any more. */
  removedSets: string[];
}

/**
 * What changed from one compilation to the next, or null when nothing did. Pods are compared by identity first (a
 * cached compilation returns the same object for an unchanged pod), then by content; sets by name (a name always
 * means the same CIDRs).
 */
export function diffNodePolicy(before: NodePolicy, after: NodePolicy): NodePolicyDelta | null {
  const changed = (q: CompiledPod | undefined, p: CompiledPod) => !q || !sameCompiledPod(q, p);
  const pods: CompiledPod[] = [];
  let removedPods: string[] = [];
  // Usually the same pods in the same order (compilations sort them): compared in place, without a map.
  const inPlace =
    before.pods.length === after.pods.length &&
    after.pods.every(
      (p, i) => p === before.pods[i] || (p.namespace === before.pods[i]!.namespace && p.name === before.pods[i]!.name),
    );
  if (inPlace) {
    after.pods.forEach((p, i) => changed(before.pods[i], p) && pods.push(p));
  } else {
    const old = new Map(before.pods.map((p) => [`${p.namespace}/${p.name}`, p]));
    for (const p of after.pods) {
      const id = `${p.namespace}/${p.name}`;
      const q = old.get(id);
      old.delete(id);
      if (changed(q, p)) pods.push(p);
    }
    removedPods = [...old.keys()];
  }
  const sets = new Map([...after.sets].filter(([name]) => !before.sets.has(name)));
  const removedSets = [...before.sets.keys()].filter((name) => !after.sets.has(name));
  if (pods.length === 0 && removedPods.length === 0 && sets.size === 0 && removedSets.length === 0) return null;
  return { pods, sets, removedPods, removedSets };
}
