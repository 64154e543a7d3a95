import { createBackoff, sleep } from '../../lib/backoff.js';
import type { PromiseClient } from '../../lib/grpc/client.js';
import type { Logger } from '../../lib/logger.js';
import type { IpamServiceService } from '../../gen/weft/ipam/v1/ipam.js';
import { checkPoolCidr } from '../domain/stream-validation.js';

/**
 * Follows the cluster's pools, IPv4 and IPv6 (what masquerade must not touch) by asking IPAM's ListPools every `intervalMs`,
 * every page of it (a failed call is retried after a second; a list is taken only once all its pages are read). A
 * pool whose CIDR does not parse strictly is refused and logged (domain/stream-validation.ts). Pools change rarely; IPAM has no pool watch yet. Like every source it
 * only records what it learnt and calls `onChange`; it never touches the kernel. `pools()` is null until the first
 * answer, and nothing is masqueraded before it.
 */
export interface PoolsSource {
  pools(): string[] | null;
}

export function followPools(deps: {
  ipam: PromiseClient<typeof IpamServiceService>;
  intervalMs: number;
  logger: Logger;
  signal: AbortSignal;
  onChange: () => void;
}): PoolsSource {
  let current: string[] | null = null;
  /** Pools refused once (logged once each). */
  const refused = new Set<string>();
  const retry = createBackoff({ baseMs: Math.min(1000, deps.intervalMs), capMs: Math.max(deps.intervalMs, 1000) });
  void (async () => {
    while (!deps.signal.aborted) {
      let wait = deps.intervalMs;
      try {
        const cidrs: string[] = [];
        let pageToken = '';
        do {
          const page = await deps.ipam.listPools(
            { pageSize: 1000, pageToken },
            { timeoutMs: 5000, signal: deps.signal },
          );
          for (const p of page.pools) {
            const c = checkPoolCidr(p.cidr);
            if (c.refused === undefined) cidrs.push(c.value);
            else if (!refused.has(p.cidr)) {
              refused.add(p.cidr);
              deps.logger.error('refused a pool from ListPools (left out of the masquerade exceptions)', {
                pool: p.name,
                reason: c.refused,
              });
            }
          }
          pageToken = page.nextPageToken;
        } while (pageToken);
        retry.reset();
        const next = cidrs.sort();
        if (JSON.stringify(next) !== JSON.stringify(current)) {
          current = next;
          deps.logger.info('cluster pools', { pools: next });
          deps.onChange();
        }
      } catch (err) {
        if (deps.signal.aborted) return;
        deps.logger.warn("cannot list the cluster's pools; retrying", { err: (err as Error).message });
        wait = retry.next();
      }
      await sleep(wait, deps.signal, { unref: true });
    }
  })();
  return { pools: () => current };
}
