import { run } from '../../lib/exec.js';
import {
  MASQUERADE_CHAIN,
  masqueradeRestore,
  natChainOf,
  readNatSave,
  type NatActual,
  type NatChain,
} from '../domain/masquerade.js';
import type { KernelAccess } from '../kernel-table/dataplane.js';

/**
 * Reads the `nat` table back with `iptables-save` and writes Weft's chain with `iptables-restore --noflush`, in this
 * process's network namespace (the node's). Only Weft's chain and its jump from POSTROUTING are ever written.
 */
export interface NatDriver {
  read(): Promise<NatActual>;
  apply(restoreInput: string): Promise<void>;
}

/** The driver of one family: iptables for IPv4, ip6tables for IPv6. */
export function createNatDriver(family: 4 | 6 = 4): NatDriver {
  const tool = family === 4 ? 'iptables' : 'ip6tables';
  return {
    read: async () => readNatSave(await run(`${tool}-save`, ['-t', 'nat'])),
    apply: async (input) => {
      await run(`${tool}-restore`, ['--noflush'], { input });
    },
  };
}

/**
 * Weft's nat chain as kernel access for the nat driver (drivers/nat.ts). A write reads the table again first, so the
 * jump is added or extra ones deleted by what the kernel holds at that moment; removing leaves the chain empty with
 * its jump (removing the chain itself on uninstall is not done yet).
 */
export function createNatAccess(nat: NatDriver): KernelAccess<NatChain> {
  const writeRules = async (rules: readonly string[]) => {
    const input = masqueradeRestore(rules, await nat.read(), MASQUERADE_CHAIN);
    if (input !== null) await nat.apply(input);
  };
  return {
    async read() {
      const chain = natChainOf(await nat.read());
      return new Map(chain ? [[MASQUERADE_CHAIN, chain]] : []);
    },
    write: (_key, value) => writeRules(value.rules),
    remove: () => writeRules([]),
  };
}
