import type { Shared } from './use-case-deps.js';

/** Status: can the agent reach IPAM right now (the plugin's STATUS, and so whether ADD can work). */
export function createStatus({ deps }: Shared) {
  return async function status(): Promise<{ ipamReachable: boolean; detail: string }> {
    try {
      await deps.ipam.ping();
      return { ipamReachable: true, detail: '' };
    } catch (err) {
      const e = err as { details?: string; message?: string };
      return {
        ipamReachable: false,
        detail: `the agent cannot reach IPAM at ${deps.ipam.target}: ${e.details || e.message || String(err)}`,
      };
    }
  };
}
