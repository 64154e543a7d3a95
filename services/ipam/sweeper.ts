import type pg from 'pg';
import { sleep } from '../../lib/backoff.js';
import { startLeadership } from '../../lib/db/leadership.js';
import type { PromiseClient } from '../../lib/grpc/client.js';
import type { Logger } from '../../lib/logger.js';
import type { RoutesServiceService } from '../../gen/weft/routes/v1/routes.js';
import { createHousekeepingStore, type HousekeepingStoreOnSession } from './store/postgres.store.js';

/**
 * IPAM's housekeeping, every `sweepSeconds`:
 *  - empty blocks go back to their pools after `blockGraceSeconds` unused (see releaseEmptyBlocks);
 *  - a node that departed (the routes service, asked over gRPC with ListDepartedNodes, never its tables, says it was
 *    registered, then deregistered, and has not registered again) more than `nodeGoneGraceSeconds` ago has the
 *    allocations it made before it departed released; its blocks then empty and return. Nothing else is a gone
 *    node: a name never registered (an external system's allocation, e.g. a load balancer's on node "na") and a
 *    registered node (also one whose lease ran out: it may be cut off with its pods running) keep their addresses.
 *  - allocation attempts are forgotten: fenced ones after `attemptRetentionSeconds`, others after ten minutes.
 * And every `statisticsSeconds` (5) it has PostgreSQL analyze the IPAM tables that hold twice the rows their
 * statistics say (ipam.refresh_statistics, migrations/ipam/0016): in a new database the tables fill from nothing
 * faster than autovacuum visits, and until they are analyzed the plans made while they were empty (the group-commit
 * statement's generic plan) read every live row per request.
 * A failed check of the routes service changes nothing: "departed" needs an answer that says so.
 * One replica sweeps: the leader of `ipam-sweeper` (lib/db/leadership.ts), and its writes go through its lock's own
 * session, so a replica that lost leadership cannot commit a sweep. A sweep whose database work fails ends the term.
 */
export interface SweeperOptions {
  /** Session settings for the leader's session (DatabaseHandle.session). */
  session: pg.ClientConfig;
  routes: PromiseClient<typeof RoutesServiceService>;
  sweepSeconds: number;
  blockGraceSeconds: number;
  nodeGoneGraceSeconds: number;
  attemptRetentionSeconds: number;
  /** How often the leader looks for tables that outgrew their statistics (5). */
  statisticsSeconds?: number;
  logger: Logger;
  now?: () => number;
}

/** ListDepartedNodes takes at most this many names at once. */
const NAMES_PER_REQUEST = 10_000;

export function startIpamSweeper(o: SweeperOptions): { stop(): Promise<void>; isLeader(): boolean } {
  const now = o.now ?? Date.now;

  async function sweep(repo: HousekeepingStoreOnSession): Promise<void> {
    const released = await repo.releaseEmptyBlocks(o.blockGraceSeconds);
    if (released.length > 0)
      o.logger.info('empty blocks returned to their pools', { blocks: released.map((b) => `${b.cidr} (${b.node})`) });
    await repo.pruneAttempts(o.attemptRetentionSeconds);
    const holding = await repo.nodesHoldingAddresses();
    const departed: { name: string; departTime?: Date | undefined }[] = [];
    try {
      for (let i = 0; i < holding.length; i += NAMES_PER_REQUEST) {
        departed.push(
          ...(
            await o.routes.listDepartedNodes({ names: holding.slice(i, i + NAMES_PER_REQUEST) }, { timeoutMs: 10_000 })
          ).nodes,
        );
      }
    } catch (err) {
      o.logger.warn('cannot ask the routes service which nodes departed; gone nodes are not swept this time', {
        err: (err as Error).message,
      });
      return;
    }
    for (const d of departed) {
      if (!d.departTime || now() - d.departTime.getTime() < o.nodeGoneGraceSeconds * 1000) continue;
      // Asked again just before the release: a node that registered again since (its agent came back) keeps all.
      const still = (
        await o.routes.listDepartedNodes({ names: [d.name] }, { timeoutMs: 10_000 }).catch(() => ({ nodes: [] }))
      ).nodes[0];
      if (!still?.departTime || still.departTime.getTime() !== d.departTime.getTime()) continue;
      const gone = await repo.releaseNodeAllocationsBefore(d.name, d.departTime);
      if (gone.length > 0)
        o.logger.info('node departed: its allocations are released', {
          node: d.name,
          departed: d.departTime.toISOString(),
          released: gone.length,
        });
    }
  }

  const statisticsMs = (o.statisticsSeconds ?? 5) * 1000;
  const sweepMs = o.sweepSeconds * 1000;
  const leadership = startLeadership({
    role: 'ipam-sweeper',
    session: o.session,
    logger: o.logger,
    retryMs: Math.max(50, Math.min(1000, sweepMs)),
    async lead(term) {
      const repo = createHousekeepingStore(term.db);
      let nextSweep = 0;
      let nextStatistics = 0;
      let statisticsFailed = false;
      while (!term.signal.aborted) {
        // Statistics first: a sweep can take a while, and the tables may be filling meanwhile.
        if (Date.now() >= nextStatistics) {
          nextStatistics = Date.now() + statisticsMs;
          try {
            const analyzed = await repo.refreshStatistics();
            statisticsFailed = false;
            if (analyzed.length > 0) o.logger.debug('planner statistics taken', { tables: analyzed });
          } catch (err) {
            // Not worth a term: the sweep below finds out whether the session still works. Said once per spell.
            if (!statisticsFailed) o.logger.warn('cannot take planner statistics', { err: (err as Error).message });
            statisticsFailed = true;
          }
        }
        if (Date.now() >= nextSweep) {
          nextSweep = Date.now() + sweepMs;
          try {
            await sweep(repo);
          } catch (err) {
            const cause = (err as { cause?: { message?: string } }).cause?.message;
            term.resign(`ipam-sweeper failed: ${(err as Error).message}${cause ? ` (${cause})` : ''}`);
            return;
          }
        }
        await sleep(Math.max(0, Math.min(nextSweep, nextStatistics) - Date.now()), term.signal);
      }
    },
  });
  return { stop: () => leadership.stop(), isLeader: () => leadership.isLeader() };
}
