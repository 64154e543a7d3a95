import type { KernelAccess } from '../kernel-table/dataplane.js';
import {
  createRenderCache,
  desiredBeforeRules,
  desiredPolicy,
  JUMP_KEY,
  podChanges,
  POLICY_LAYOUT,
  WANTED_JUMP,
  type NodeRules,
  type PodRules,
} from '../domain/network-policy.js';
import { createFilterDriver, filterKind, filterPlacement } from './filter.js';
import { createIpsetDriver, ipsetKind, ipsetPlacement } from './ipsets.js';
import type { DriverModule } from './driver-module.js';

/**
 * Network policy of one family: its manager (the node's rules and the local pods' veths → the desired entries of the
 * ipset and filter tables, by `domain/network-policy.ts`) and its two drivers. Before the first rule set, a fresh
 * node drops every local pod both ways; a restarted agent keeps the chains and sets it finds exactly as they are
 * (nothing rewritten, no connection cut) until its first rule set: those desired entries are taken from the tables'
 * caches right after they are read back (`onRead`).
 *
 * When the rules differ from the last ones only in a few pods' rules (the same pods on the same addresses and veths:
 * a label or policy change, the common case), only those pods are rendered, before and after, and their entries
 * replaced in the tables; the dispatch chains do not change. A set those pods no longer name stays while the node's
 * rules still hold it (another pod names it). Otherwise the whole node is rendered (through the render cache).
 */
export interface PolicyFamilyDrivers {
  family: 4 | 6;
  ipsets: ReturnType<typeof createIpsetDriver>;
  filter: ReturnType<typeof createFilterDriver>;
  /** Sets both tables' desired entries (`rules` null: none held yet). */
  compute(rules: NodeRules | null, veths: ReadonlyMap<string, string>): void;
  /** Whether Weft's chain, its jump and the dispatch chains (with their fail-closed drop) are in the kernel. */
  inForce(): boolean;
}

/** Whether every set both hold has the same members in both (a set's name means its content; this checks it). */
const sameSets = (a: NodeRules['sets'], b: NodeRules['sets']) =>
  a === b ||
  [...a].every(([name, cidrs]) => {
    const other = b.get(name);
    return !other || other === cidrs || (other.length === cidrs.length && other.every((c, i) => c === cidrs[i]));
  });

/** More changed pods than this in one pass: the whole node is rendered. */
const MAX_POD_CHANGES = 64;

export function createPolicyDrivers(opts: {
  family: 4 | 6;
  ipsets: KernelAccess<string[]>;
  filter: KernelAccess<string[]>;
  vxlanDevice?: string;
  /** Failures do not fail the pass (IPv6 on a node whose pods are IPv4 only). */
  optional?: boolean;
  /** False while the manager's inputs are not known (the pods' veths): the tables neither read nor write. */
  ready?: () => boolean;
}): PolicyFamilyDrivers {
  const { family } = opts;
  const cache = createRenderCache();
  let last: { rules: NodeRules | null; veths: ReadonlyMap<string, string> } | null = null;
  const beforeRules = (veths: ReadonlyMap<string, string>) => {
    ipsets.table.replaceDesired(ipsets.table.cache);
    const chains = new Map(filter.table.cache);
    chains.delete(JUMP_KEY);
    const d = desiredBeforeRules({ chains, jumps: 1, sets: new Map() }, veths, opts.vxlanDevice).chains;
    d.set(JUMP_KEY, [...WANTED_JUMP]);
    filter.table.replaceDesired(d);
  };
  /** A few pods' new rules: only they are rendered, and their entries replaced. */
  const computePods = (
    changes: { before: PodRules; after: PodRules }[],
    setsBefore: NodeRules['sets'],
    rules: NodeRules,
    veths: ReadonlyMap<string, string>,
  ) => {
    const render = (pods: PodRules[], sets: NodeRules['sets']) => {
      const d = desiredPolicy({ revision: 0, pods, sets }, veths, opts.vxlanDevice, cache, family);
      for (const c of POLICY_LAYOUT) d.chains.delete(c);
      return d;
    };
    const was = render(
      changes.map((c) => c.before),
      setsBefore,
    );
    const now = render(
      changes.map((c) => c.after),
      rules.sets,
    );
    for (const chain of was.chains.keys()) if (!now.chains.has(chain)) filter.table.deleteDesired(chain);
    for (const [chain, lines] of now.chains) filter.table.setDesired(chain, lines);
    // The node's sets are named as the policy service names them (`weft-<hash>`), the kernel's IPv6 ones `weft6-…`.
    const held = (name: string) =>
      rules.sets
        .get(family === 4 ? name : name.replace(/^weft6-/, 'weft-'))
        ?.some((c) => c.includes(':') === (family === 6));
    for (const name of was.sets.keys()) if (!now.sets.has(name) && !held(name)) ipsets.table.deleteDesired(name);
    for (const [name, members] of now.sets) ipsets.table.setDesired(name, members);
  };
  const ipsets = {
    ...createIpsetDriver(opts.ipsets, family, { optional: opts.optional }),
    ready: opts.ready,
    onRead: () => {
      if (last && last.rules === null) beforeRules(last.veths);
    },
  };
  const filter = {
    ...createFilterDriver(opts.filter, family, { optional: opts.optional }),
    ready: opts.ready,
    onRead: () => {
      if (last && last.rules === null) beforeRules(last.veths);
    },
  };
  return {
    family,
    ipsets,
    filter,
    compute(rules, veths) {
      const prev = last;
      last = { rules, veths };
      if (!rules) return beforeRules(veths);
      // The same inputs (a pass for routes, say): the same desired entries.
      if (prev?.rules === rules && prev.veths === veths) return;
      const changes =
        prev?.rules && prev.veths === veths && sameSets(prev.rules.sets, rules.sets)
          ? podChanges(prev.rules.pods, rules.pods, MAX_POD_CHANGES)
          : null;
      if (changes) return computePods(changes, prev!.rules!.sets, rules, veths);
      const d = desiredPolicy(rules, veths, opts.vxlanDevice, cache, family);
      d.chains.set(JUMP_KEY, [...WANTED_JUMP]);
      ipsets.table.replaceDesired(d.sets);
      filter.table.replaceDesired(d.chains);
    },
    inForce() {
      return [...POLICY_LAYOUT, JUMP_KEY].every((k) => filter.table.cache.has(k));
    },
  };
}

export const policyKinds = (family: 4 | 6) => [ipsetKind(family), filterKind(family)];

/** Per family, its sets and its chains. Made by reconciler.ts (this manager runs on the rules and the pods' veths). */
export const policyModule: DriverModule = {
  placements: ([4, 6] as const).flatMap((f) => [ipsetPlacement(f), filterPlacement(f)]),
};

/**
 * Who waits for network policy of a family to be in force (a dual-stack attach waits for IPv6's): `notify` after each
 * pass, `whenInForce` resolves at once when it already was, rejects after `timeoutMs`.
 */
export function createInForceWaiters() {
  const inForce = new Set<4 | 6>();
  let waiters: { family: 4 | 6; resolve: () => void }[] = [];
  return {
    notify(family: 4 | 6) {
      if (inForce.has(family)) return;
      inForce.add(family);
      for (const w of waiters.filter((x) => x.family === family)) w.resolve();
      waiters = waiters.filter((x) => x.family !== family);
    },
    whenInForce(family: 4 | 6, timeoutMs: number): Promise<void> {
      if (inForce.has(family)) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const waiter = {
          family,
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
        };
        const timer = setTimeout(() => {
          waiters = waiters.filter((w) => w !== waiter);
          reject(new Error(`IPv${family} policy not programmed within ${timeoutMs} ms`));
        }, timeoutMs);
        waiters.push(waiter);
      });
    },
  };
}
