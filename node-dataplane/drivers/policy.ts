import type { Logger } from '../../lib/logger.js';
import type { NodeRules, PolicyPlan } from '../domain/network-policy.js';
import type { PolicyProgrammer } from '../policy-programmer.js';

/**
 * Network policy of one family (the filter chains and the ipsets, written together by `policy-programmer.ts`), with
 * the same contract as a table driver: it writes when its desired input (the node's rules) is not the one last
 * applied, and reads the kernel back (chains, sets and the pods' veths) only when marked for resync: at start, at
 * the periodic resync, after a failure, and when pods come or go (their veths enter the dispatch chains).
 */
export interface NetworkPolicyDriver {
  readonly family: 4 | 6;
  readonly needsResync: boolean;
  markForResync(): void;
  /** Whether `rules` still need applying. */
  pending(rules: NodeRules | null): boolean;
  /** Applies `rules` (null: none held yet, fail closed) if pending; null when nothing was to do. */
  apply(rules: NodeRules | null): Promise<{ plan: PolicyPlan; veths: number; readBack: boolean } | null>;
}

export function createNetworkPolicyDriver(programmer: PolicyProgrammer, family: 4 | 6): NetworkPolicyDriver {
  let needsResync = true;
  /** The rules in force (undefined: none applied yet). */
  let applied: NodeRules | null | undefined;
  const driver: NetworkPolicyDriver = {
    family,
    get needsResync() {
      return needsResync;
    },
    markForResync() {
      needsResync = true;
    },
    pending: (rules) => needsResync || rules !== applied,
    async apply(rules) {
      if (!driver.pending(rules)) return null;
      const readBack = needsResync;
      needsResync = false;
      applied = undefined;
      try {
        const out = await programmer.program(rules, { readBack });
        applied = rules;
        return out;
      } catch (err) {
        needsResync = true;
        throw err;
      }
    },
  };
  return driver;
}

/**
 * Network policy of every family, as the scheduler runs it: the families side by side (separate tables, separately
 * named sets; both finished before the pass goes on, so a failed one is not still writing when the retry starts).
 * IPv4 must succeed; IPv6 must too when pods are dual-stack (`ipv6Required`), otherwise its failure is logged once
 * and it rests until the next resync. Tells who waits when a family has been programmed once.
 */
export interface NetworkPolicy {
  markForResync(): void;
  /** Applies `rules` where pending; whether anything was written, and whether a required family failed. */
  apply(rules: NodeRules | null): Promise<{ changed: boolean; failed: boolean }>;
  whenInForce(family: 4 | 6, timeoutMs: number): Promise<void>;
}

export function createNetworkPolicy(opts: {
  drivers: readonly NetworkPolicyDriver[];
  ipv6Required?: boolean;
  logger: Logger;
  /** Called with the family and what was written (a non-empty plan). */
  onWritten?: (family: 4 | 6) => void;
}): NetworkPolicy {
  const inForce = new Set<4 | 6>();
  let waiters: { family: 4 | 6; resolve: () => void }[] = [];
  let resting6 = false;
  let failure6 = '';
  return {
    markForResync() {
      for (const d of opts.drivers) d.markForResync();
      resting6 = false;
    },
    async apply(rules) {
      const drivers = opts.drivers.filter((d) => !(d.family === 6 && resting6));
      const results = await Promise.allSettled(
        drivers.map(async (d) => {
          const out = await d.apply(rules);
          if (out && !inForce.has(d.family)) {
            inForce.add(d.family);
            for (const w of waiters.filter((x) => x.family === d.family)) w.resolve();
            waiters = waiters.filter((x) => x.family !== d.family);
          }
          if (!out || out.plan.changed.length === 0) return false;
          opts.onWritten?.(d.family);
          opts.logger.info('policy rules written', {
            family: d.family,
            revision: rules?.revision ?? null,
            failClosed: rules === null,
            pods: out.veths,
            readBack: out.readBack,
            changed: out.plan.changed.slice(0, 20),
            count: out.plan.changed.length,
          });
          return true;
        }),
      );
      let changed = false;
      let failed = false;
      results.forEach((r, i) => {
        const family = drivers[i]!.family;
        if (r.status === 'fulfilled') {
          changed ||= r.value;
          if (family === 6) failure6 = '';
          return;
        }
        const err = (r.reason as Error).message;
        if (family === 4 || opts.ipv6Required) {
          failed = true;
          opts.logger.error('cannot program network policy; retrying', { family, err });
          return;
        }
        resting6 = true;
        if (err !== failure6)
          opts.logger.warn('cannot program IPv6 network policy (ip6tables); pods are IPv4 only here', { err });
        failure6 = err;
      });
      return { changed, failed };
    },
    whenInForce(family, timeoutMs) {
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
