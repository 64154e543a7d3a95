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

export function createNatDriver(): NatDriver {
  return {
    read: async () => readNatSave(await run('iptables-save', ['-t', 'nat'])),
    apply: async (input) => {
      await run('iptables-restore', ['--noflush'], { input });
    },
  };
}
