import type { KernelAccess } from '../kernel-table/dataplane.js';
import {
  createRenderCache,
  desiredBeforeRules,
  desiredPolicy,
  JUMP_KEY,
  POLICY_LAYOUT,
  WANTED_JUMP,
  type NodeRules,
} from '../domain/network-policy.js';
import { createFilterDriver, filterKind } from './filter.js';
import { createIpsetDriver, ipsetKind } from './ipsets.js';

/**
 * Network policy of one family: its manager (the node's rules and the local pods' veths → the desired entries of the
 * ipset and filter tables, by `domain/network-policy.ts`) and its two drivers. Before the first rule set, a fresh
 * node drops every local pod both ways; a restarted agent keeps the chains and sets it finds exactly as they are
 * (nothing rewritten, no connection cut) until its first rule set: those desired entries are taken from the tables'
 * caches right after they are read back (`onRead`).
 */
export interface PolicyFamilyDrivers {
  family: 4 | 6;
  ipsets: ReturnType<typeof createIpsetDriver>;
  filter: ReturnType<typeof createFilterDriver>;
  /** Sets both tables' desired entries (`rules` null: none held yet). */
  compute(rules: NodeRules | null, veths: ReadonlyMap<string, string>): void;
  /** Whether Weft's dispatch chains, their fail-closed drop and the FORWARD jump are in the kernel as desired. */
  inForce(): boolean;
}

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
      last = { rules, veths };
      if (!rules) return beforeRules(veths);
      const d = desiredPolicy(rules, veths, opts.vxlanDevice, cache, family);
      d.chains.set(JUMP_KEY, [...WANTED_JUMP]);
      ipsets.table.replaceDesired(d.sets);
      filter.table.replaceDesired(d.chains);
    },
    inForce() {
      const t = filter.table;
      return [...POLICY_LAYOUT, JUMP_KEY].every((k) => t.cache.has(k) && !t.pendingUpdates.has(k));
    },
  };
}

export const policyKinds = (family: 4 | 6) => [ipsetKind(family), filterKind(family)];

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
