import type { PromiseClient } from '../../lib/grpc/client.js';
import type { Logger } from '../../lib/logger.js';
import type { RoutesServiceService } from '../../gen/weft/routes/v1/routes.js';
import type { IpamRepository } from './store/ipam.repository.js';

/**
 * IPAM's housekeeping, every `sweepSeconds`:
 *  - empty blocks go back to their pools after `blockGraceSeconds` unused (see releaseEmptyBlocks);
 *  - a node that holds blocks but has been missing from the routes service (asked over gRPC, never its tables) for
 *    `nodeGoneGraceSeconds` of successful checks has its allocations released; its blocks then empty and return.
 * A failed check of the routes service changes nothing: "missing" needs an answer that lists the nodes.
 */
export interface SweeperOptions {
  repo: IpamRepository;
  routes: PromiseClient<typeof RoutesServiceService>;
  sweepSeconds: number;
  blockGraceSeconds: number;
  nodeGoneGraceSeconds: number;
  logger: Logger;
  now?: () => number;
}

export function startIpamSweeper(o: SweeperOptions): { sweep(): Promise<void>; stop(): void } {
  const now = o.now ?? Date.now;
  const missingSince = new Map<string, number>();
  let running = false;

  async function sweep(): Promise<void> {
    if (running) return;
    running = true;
    try {
      const released = await o.repo.releaseEmptyBlocks(o.blockGraceSeconds);
      if (released.length > 0) o.logger.info('empty blocks returned to their pools', { blocks: released.map((b) => `${b.cidr} (${b.node})`) });
      let registered: Set<string>;
      try {
        // Every page: a node missing from the list is taken for gone, so the list must be complete.
        registered = new Set();
        let pageToken = '';
        do {
          const page = await o.routes.listNodes({ pageSize: 1000, pageToken }, { timeoutMs: 10_000 });
          for (const n of page.nodes) registered.add(n.name);
          pageToken = page.nextPageToken;
        } while (pageToken);
      } catch (err) {
        o.logger.warn('cannot list nodes from the routes service; gone nodes are not swept this time', { err: (err as Error).message });
        return;
      }
      const holding = await o.repo.nodesHoldingAddresses();
      for (const n of [...missingSince.keys()]) if (registered.has(n) || !holding.includes(n)) missingSince.delete(n);
      for (const node of holding) {
        if (registered.has(node)) continue;
        const since = missingSince.get(node) ?? now();
        missingSince.set(node, since);
        if (now() - since < o.nodeGoneGraceSeconds * 1000) continue;
        const gone = await o.repo.garbageCollect(node, []);
        missingSince.delete(node);
        o.logger.info('node gone: its allocations are released', { node, released: gone.length });
      }
    } catch (err) {
      o.logger.error('IPAM sweep failed; next time', { err });
    } finally {
      running = false;
    }
  }

  const timer = setInterval(() => void sweep(), o.sweepSeconds * 1000);
  timer.unref();
  return { sweep, stop: () => clearInterval(timer) };
}
