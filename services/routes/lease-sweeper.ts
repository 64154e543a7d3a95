import type { Logger } from '../../lib/logger.js';
import type { RouteLogRepository } from './store/route-log.repository.js';

/**
 * Every replica runs a sweeper; a transaction-scoped try-lock lets one sweep at a time (the others skip that round).
 * A sweep first gives live leases a full lease when the control plane was down (resumeLeases), withdraws nodes whose
 * lease ran out (a delete change), logs whatever else differs from the logged table, and compacts the log.
 */
export function startLeaseSweeper(deps: {
  log: RouteLogRepository;
  logger: Logger;
  intervalMs: number;
  keep: number;
  maxAgeSeconds: number;
}) {
  const { log, logger } = deps;
  const timer = setInterval(() => void sweepOnce(), deps.intervalMs);
  let running = false;
  async function sweepOnce(): Promise<void> {
    if (running) return;
    running = true;
    try {
      const r = await log.sweep({ keep: deps.keep, maxAgeSeconds: deps.maxAgeSeconds });
      if (r.resumed > 0)
        logger.warn('the control plane was down for more than half a lease: live leases get a full lease to renew', {
          nodes: r.resumed,
        });
      for (const c of r.changes)
        logger.info(c.routes ? 'node back in the route table' : 'node withdrawn (lease ran out or gone)', {
          node: c.node,
          revision: c.revision,
        });
    } catch (err) {
      logger.warn('lease sweep failed; retrying', { err: (err as Error).message });
    } finally {
      running = false;
    }
  }
  void sweepOnce();
  return { stop: () => clearInterval(timer) };
}
