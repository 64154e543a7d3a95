import { run } from '../../lib/exec.js';
import { readNatSave, type NatActual } from '../domain/masquerade.js';

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
