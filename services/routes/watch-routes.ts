import type { Notifier } from '../../lib/db/notifier.js';
import { changeMessage, type RoutesChange } from './domain/route-table.js';
import { CHANGES_CHANNEL, type LogRead, type RouteLogRepository } from './store/route-log.repository.js';

/** What a stream reads the log through: `read(since)` as the repository's, perhaps shared (shareLogReads). */
export type LogReader = Pick<RouteLogRepository, 'read'>;

/**
 * One replica's reads of the log, shared by its streams: the streams that a NOTIFY wakes are all at the same revision
 * (the one before the change), and without sharing each would run the same query (2,000 streams: 2,000 queries per
 * change through a small pool, over a second for the last one). A read joins one in flight only when both have the
 * same `since` and began at the same notifier generation. That loses nothing: a stream subscribes to the wake-up
 * before it reads; a change that the joined read cannot see committed after that read began, so its NOTIFY had not
 * arrived when the joined read began, nor (same generation) when this stream read, which is after it subscribed:
 * the NOTIFY wakes this stream again and it reads the change then. Results are shared objects: streams only read them.
 */
export function shareLogReads(log: LogReader, notifier: Pick<Notifier, 'generation'>): LogReader {
  const inFlight = new Map<string, Promise<LogRead>>();
  return {
    read(since: number, limit = 500) {
      const key = `${since}/${limit}/${notifier.generation(CHANGES_CHANNEL)}`;
      let p = inFlight.get(key);
      if (!p) {
        p = log.read(since, limit).finally(() => inFlight.delete(key));
        inFlight.set(key, p);
      }
      return p;
    },
  };
}

export interface WatchOptions {
  /** Re-read the log at least this often even without a NOTIFY. */
  pollMs: number;
  /** Send a bookmark after this long without a message. */
  bookmarkMs: number;
}

/**
 * One WatchRoutes stream, served from the revision log (any replica can serve any watcher): a snapshot when
 * `sinceRevision` is 0 or no longer in the log, else the changes after it; then each new change in revision order,
 * woken by NOTIFY routes_changes and at least every pollMs; a bookmark on an idle stream every bookmarkMs.
 * Revisions commit in order (see store/route-log.repository.ts), so reading `revision > last` never skips one.
 * Until the affinity follower has recorded IPAM's snapshot once, the stream sends nothing (a table without blocks
 * would make agents withdraw routes).
 */
export async function* watchRoutes(
  deps: { log: LogReader; notifier: Notifier; options: WatchOptions },
  sinceRevision: number,
  signal: AbortSignal,
): AsyncGenerator<RoutesChange> {
  const { log, notifier, options } = deps;
  let last = sinceRevision;
  let lastSent = Date.now();
  let ready = false;
  while (!signal.aborted) {
    // Subscribe to the wake-up before reading, so that a change committed during the read is not slept through.
    const woken = notifier.wait(
      CHANGES_CHANNEL,
      Math.max(1, Math.min(options.pollMs, lastSent + options.bookmarkMs - Date.now())),
      signal,
    );
    let drained = false;
    while (!drained && !signal.aborted) {
      const read = await log.read(last);
      if (read.kind === 'not_ready') {
        lastSent = Date.now(); // no bookmark is owed yet: wait a poll period (or a NOTIFY) and read again
        break;
      }
      ready = true;
      if (read.kind === 'snapshot') {
        last = read.revision;
        lastSent = Date.now();
        yield { revision: read.revision, reset: true, upserts: read.table, deletes: [], bookmark: false };
        continue;
      }
      for (const c of read.changes) {
        last = c.revision;
        lastSent = Date.now();
        yield changeMessage(c);
      }
      drained = read.changes.length < 500;
    }
    if (signal.aborted) return;
    if (Date.now() - lastSent >= options.bookmarkMs && ready) {
      lastSent = Date.now();
      yield { revision: last, reset: false, upserts: [], deletes: [], bookmark: true };
    }
    await woken;
  }
}
