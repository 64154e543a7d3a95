import type pg from 'pg';
import { startLeaderLoop } from '../../lib/db/leadership.js';
import type { Logger } from '../../lib/logger.js';
import { createRouteLogRepository } from './store/route-log.repository.js';

/**
 * One replica sweeps: the leader of `routes-lease-sweeper` (lib/db/leadership.ts), on its lock's own session, so a
 * replica that lost leadership cannot commit a sweep. A sweep first gives live leases a full lease when the control
 * plane was down (resumeLeases), withdraws nodes whose lease ran out (a delete change), logs whatever else differs
 * from the logged table, and compacts the log.
 */
export function startLeaseSweeper(deps: {
  session: pg.ClientConfig;
  leaseMs: number;
  logger: Logger;
  intervalMs: number;
  keep: number;
  maxAgeSeconds: number;
}) {
  const { logger } = deps;
  return startLeaderLoop({
    role: 'routes-lease-sweeper',
    session: deps.session,
    logger,
    intervalMs: deps.intervalMs,
    async step(term) {
      const log = createRouteLogRepository(term.db, { leaseMs: deps.leaseMs });
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
    },
  });
}
