import { createBackoff, sleep } from '../../lib/backoff.js';
import pg from 'pg';
import type { PromiseClient } from '../../lib/grpc/client.js';
import type { Logger } from '../../lib/logger.js';
import type { IpamServiceService, WatchBlockAffinitiesResponse } from '../../gen/weft/ipam/v1/ipam.js';
import { FOLLOWER_LOCK_QUERY, type RouteLogRepository } from './store/route-log.repository.js';

/**
 * Turns IPAM's block affinities (WatchBlockAffinities over gRPC, never IPAM's tables) into route-log changes. Every
 * replica runs one; only the one whose session holds the follower advisory lock follows, the others retry the lock
 * every `retryMs`. The lock lives on a dedicated connection: when the follower dies or loses that connection,
 * PostgreSQL releases the lock and another replica takes over (starting from IPAM's snapshot, which it compares
 * with the logged state, so nothing is logged twice). Each write checks that this session still holds the lock.
 * IPAM's snapshot comes in chunks (every cluster's blocks); the follower applies it only once it holds all of it.
 */
export function startAffinityFollower(deps: {
  databaseUrl: string;
  session?: pg.ClientConfig;
  ipam: PromiseClient<typeof IpamServiceService>;
  log: RouteLogRepository;
  logger: Logger;
  retryMs?: number;
}) {
  const { ipam, log, logger } = deps;
  const retryMs = deps.retryMs ?? 1000;
  const stopper = new AbortController();
  let following = false;

  async function followWhileHolding(client: pg.Client, pid: number): Promise<void> {
    const lost = new AbortController();
    const onStop = () => lost.abort();
    stopper.signal.addEventListener('abort', onStop, { once: true });
    client.once('error', () => lost.abort());
    client.once('end', () => lost.abort());
    // IPAM restarted or unreachable: every routes replica's follower retries at its own jittered moments.
    const rewatch = createBackoff({ baseMs: 500, capMs: 5000 });
    try {
      while (!lost.signal.aborted) {
        try {
          // A large snapshot comes in chunks: only the joined whole is applied (a part would withdraw blocks).
          let pending: WatchBlockAffinitiesResponse | null = null;
          for await (const chunk of ipam.watchBlockAffinities({ acceptChunks: true }, { signal: lost.signal })) {
            if (pending) {
              for (const u of chunk.upserts) pending.upserts.push(u);
              for (const d of chunk.deletes) pending.deletes.push(d);
            } else
              pending = chunk.more ? { ...chunk, upserts: [...chunk.upserts], deletes: [...chunk.deletes] } : chunk;
            if (chunk.more) continue;
            const msg = pending;
            pending = null;
            if (!(await log.applyAffinities(pid, msg))) {
              logger.warn('no longer the affinity follower');
              return;
            }
            rewatch.reset();
          }
        } catch (err) {
          if (lost.signal.aborted) return;
          logger.warn('IPAM affinity watch broke; reconnecting', { err: (err as Error).message });
        }
        await sleep(rewatch.next(), stopper.signal);
      }
    } finally {
      stopper.signal.removeEventListener('abort', onStop);
    }
  }

  void (async () => {
    while (!stopper.signal.aborted) {
      // The lock's session has the handle's timeouts and TCP keepalive (DatabaseHandle.session) when given.
      const client = new pg.Client(deps.session ?? { connectionString: deps.databaseUrl });
      client.on('error', () => {});
      try {
        await client.connect();
        while (!stopper.signal.aborted) {
          const res = await client.query(FOLLOWER_LOCK_QUERY);
          const row = res.rows[0] as { got: boolean; pid: number };
          if (row.got) {
            following = true;
            logger.info('following IPAM block affinities');
            await followWhileHolding(client, row.pid);
            following = false;
            break;
          }
          await sleep(retryMs, stopper.signal);
        }
      } catch (err) {
        if (!stopper.signal.aborted)
          logger.warn('affinity follower lost its database session', { err: (err as Error).message });
      } finally {
        following = false;
        await client.end().catch(() => {});
      }
      await sleep(retryMs, stopper.signal);
    }
  })();

  return {
    isFollowing: () => following,
    stop: () => stopper.abort(),
  };
}
