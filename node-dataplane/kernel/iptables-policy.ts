import { run as runHere } from '../../lib/exec.js';
import { readPolicyActual, type PolicyActual, type PolicyFamily, type PolicyPlan } from '../domain/network-policy.js';

/**
 * Network policy's kernel side, in this process's network namespace (the node's): reads Weft's filter chains
 * (`iptables-save -t filter`), Weft's ipsets (`ipset save`) and the local pods' host veths (the pods' host routes,
 * Weft's protocol through a pod veth), and applies a plan: sets first, then the new rules, then old rules and stale chains, then unused sets destroyed.
 * `family` 6 does the same with ip6tables, the pods' IPv6 host routes and Weft's inet6 sets.
 */
export interface PolicyDriver {
  read(): Promise<PolicyActual>;
  /** Local pod address → its host-side veth. */
  podVeths(): Promise<Map<string, string>>;
  /** Applies the plan; `inForce` is called once the desired rules are in force (before the old ones are removed). */
  apply(plan: PolicyPlan, opts?: { inForce?: () => void }): Promise<void>;
}

const POD_VETH = /^weft[0-9a-f]{11}$/;

export function createPolicyDriver(opts: {
  routeProtocol: number;
  /** How commands run (default: here; bench/policy runs them in a namespace). */ run?: typeof runHere;
  family?: PolicyFamily;
}): PolicyDriver {
  const run = opts.run ?? runHere;
  const family = opts.family ?? 4;
  const iptables = family === 4 ? 'iptables' : 'ip6tables';
  const ip = (args: string[]) => run('ip', args);
  return {
    read: async () => {
      const [filter, sets] = await Promise.all([run(`${iptables}-save`, ['-t', 'filter']), run('ipset', ['save'])]);
      return readPolicyActual(filter, sets, family);
    },
    podVeths: async () => {
      const routes = JSON.parse(
        (await ip([`-${family}`, '-j', 'route', 'show', 'proto', String(opts.routeProtocol)])) || '[]',
      ) as { dst: string; dev?: string }[];
      const out = new Map<string, string>();
      for (const r of routes) if (r.dev && POD_VETH.test(r.dev) && !r.dst.includes('/')) out.set(r.dst, r.dev);
      return out;
    },
    apply: async (plan, opts) => {
      if (plan.setsBefore) await run('ipset', ['restore', '-exist'], { input: plan.setsBefore });
      if (plan.filter) await run(`${iptables}-restore`, ['--noflush'], { input: plan.filter });
      opts?.inForce?.();
      if (plan.filterAfter) await run(`${iptables}-restore`, ['--noflush'], { input: plan.filterAfter });
      if (plan.setsAfter) await run('ipset', ['restore', '-exist'], { input: plan.setsAfter });
    },
  };
}
