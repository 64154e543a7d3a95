import { createBackoff, sleep } from '../../lib/backoff.js';
import type pg from 'pg';
import { startLeadership, type LeaderTerm } from '../../lib/db/leadership.js';
import type { PromiseClient } from '../../lib/grpc/client.js';
import type { Logger } from '../../lib/logger.js';
import type { IpamServiceService, WatchBlockAffinitiesResponse } from '../../gen/weft/ipam/v1/ipam.js';
import { createAffinityBatch } from './domain/affinity-batch.js';
import { createRouteLogRepository } from './store/route-log.repository.js';

/**
 * Turns IPAM's block affinities (WatchBlockAffinities over gRPC, never IPAM's tables) into route-log changes. Every
 * replica runs one; only the leader of `routes-affinity-follower` (lib/db/leadership.ts: a session advisory lock,
 * tried every `retryMs`) follows, and it writes on the lock's own session. When the follower dies or loses that
 * session, PostgreSQL releases the lock and another replica takes over (starting from IPAM's snapshot, which it
 * compares with the logged state, so nothing is logged twice). Each write also checks, in its transaction, that its
 * session holds the lock (a second fence, should the lock ever be released under a live session).
 * IPAM's snapshot comes in chunks (every cluster's blocks); the follower applies it only once it holds all of it.
 * Messages that arrive while a write runs are merged (domain/affinity-batch.ts) and written together in the next one.
 */
export function startAffinityFollower(deps: {
  session: pg.ClientConfig;
  leaseMs: number;
  ipam: PromiseClient<typeof IpamServiceService>;
  logger: Logger;
  retryMs?: number;
}) {
  const { ipam, logger } = deps;

  async function follow(term: LeaderTerm): Promise<void> {
    const log = createRouteLogRepository(term.db, { leaseMs: deps.leaseMs });
    // IPAM restarted or unreachable: every routes replica's follower retries at its own jittered moments.
    const rewatch = createBackoff({ baseMs: 500, capMs: 5000 });
    while (!term.signal.aborted) {
      const watch = new AbortController();
      const stop = () => watch.abort();
      term.signal.addEventListener('abort', stop, { once: true });
      // What arrived while the last write ran, merged: a backlog (every node's first block claim) is one write.
      const batch = createAffinityBatch();
      let arrived: (() => void) | null = null;
      let ended = false;
      let resigned = false;
      const writer = (async () => {
        for (;;) {
          if (term.signal.aborted) return;
          if (batch.empty) {
            if (ended) return;
            await new Promise<void>((resolve) => (arrived = resolve));
            continue;
          }
          const msg = batch.take();
          let applied: boolean;
          try {
            applied = await log.applyAffinities(term.pid, msg);
          } catch (err) {
            // The session may be what failed: a new term (a new session, IPAM's snapshot again) is the safe way on.
            resigned = true;
            term.resign(`cannot record block affinities: ${(err as Error).message}`);
            watch.abort();
            return;
          }
          if (!applied) {
            resigned = true;
            term.resign('no longer holds the affinity follower lock');
            watch.abort();
            return;
          }
          rewatch.reset();
        }
      })();
      try {
        // A large snapshot comes in chunks: only the joined whole is applied (a part would withdraw blocks).
        let pending: WatchBlockAffinitiesResponse | null = null;
        for await (const chunk of ipam.watchBlockAffinities({ acceptChunks: true }, { signal: watch.signal })) {
          if (pending) {
            for (const u of chunk.upserts) pending.upserts.push(u);
            for (const d of chunk.deletes) pending.deletes.push(d);
          } else pending = chunk.more ? { ...chunk, upserts: [...chunk.upserts], deletes: [...chunk.deletes] } : chunk;
          if (chunk.more) continue;
          batch.add(pending);
          pending = null;
          (arrived as (() => void) | null)?.();
        }
      } catch (err) {
        if (!term.signal.aborted && !resigned)
          logger.warn('IPAM affinity watch broke; reconnecting', { err: (err as Error).message });
      } finally {
        // What was received is still IPAM's word in order: written before watching again (which starts from a
        // snapshot), unless the term ended.
        ended = true;
        (arrived as (() => void) | null)?.();
        await writer;
        term.signal.removeEventListener('abort', stop);
      }
      if (term.signal.aborted || resigned) return;
      await sleep(rewatch.next(), term.signal);
    }
  }

  const leadership = startLeadership({
    role: 'routes-affinity-follower',
    session: deps.session,
    logger,
    retryMs: deps.retryMs,
    async lead(term) {
      logger.info('following IPAM block affinities');
      await follow(term);
    },
  });
  return {
    isFollowing: () => leadership.isLeader(),
    stop: () => leadership.stop(),
  };
}
