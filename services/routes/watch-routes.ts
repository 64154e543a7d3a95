import type { Notifier } from '../../lib/db/notifier.js';
import { changeMessage, coalesceChanges, type RoutesChange } from './domain/route-table.js';
import { CHANGES_CHANNEL, type LogRead, type RouteLogRepository } from './store/route-log.repository.js';

/** What a stream reads the log through: `read(since)` as the repository's, perhaps shared (shareLogReads). */
export type LogReader = Pick<RouteLogRepository, 'read'>;

/**
 * One replica's reads of the log, shared by its streams: the streams that a NOTIFY wakes are all at the same revision
 * (the one before the change), and without sharing each would run the same query (2,000 streams: 2,000 queries per
 * change through a small pool, over a second for the last one). A read joins one in flight, or takes one that
 * finished less than `reuseMs` ago, only when both have the same `since` and began at the same notifier generation.
 * That loses nothing: a stream subscribes to the wake-up before it reads; a change that the shared read cannot see
 * committed after that read began, so its NOTIFY had not arrived when the shared read began, nor (same generation)
 * when this stream read, which is after it subscribed: the NOTIFY wakes this stream again and it reads the change
 * then. A finished read is reused only briefly so that a NOTIFY that never came (the only thing the poll is for) is
 * still found within a poll and `reuseMs`. Thousands of agents reconnecting after a restart, all at the revision
 * they held, are served by about one read a second instead of one each. Results are shared objects: streams only read
 * them.
 */
export function shareLogReads(
  log: LogReader,
  notifier: Pick<Notifier, 'generation'>,
  opts: { reuseMs?: number; now?: () => number } = {},
): LogReader {
  const reuseMs = opts.reuseMs ?? READ_REUSE_MS;
  const now = opts.now ?? (() => performance.now());
  const inFlight = new Map<string, Promise<LogRead>>();
  const finished = new Map<string, { at: number; read: Promise<LogRead> }>();
  let finishedGeneration = -1;
  return {
    read(since: number, limit = 500) {
      const generation = notifier.generation(CHANGES_CHANNEL);
      // Reads of an earlier generation are of no use any more: dropped when the first of a new one is asked for.
      if (generation !== finishedGeneration) {
        finished.clear();
        finishedGeneration = generation;
      }
      const key = `${since}/${limit}/${generation}`;
      const done = finished.get(key);
      if (done && now() - done.at < reuseMs) return done.read;
      let p = inFlight.get(key);
      if (!p) {
        const read = log.read(since, limit);
        p = read;
        inFlight.set(key, read);
        read.then(
          () => {
            inFlight.delete(key);
            if (generation !== finishedGeneration) return;
            if (finished.size >= READ_REUSE_MAX) finished.clear();
            finished.set(key, { at: now(), read });
          },
          () => inFlight.delete(key),
        );
      }
      return p;
    },
  };
}

/** How long a replica's finished log read serves streams that ask for the same one (no NOTIFY since it began). */
export const READ_REUSE_MS = 1000;
/** At most this many finished reads are kept for reuse (one per distinct `since` in one generation). */
const READ_REUSE_MAX = 1024;

export interface WatchOptions {
  /** Re-read the log at least this often even without a NOTIFY. */
  pollMs: number;
  /** Send a bookmark after this long without a message. */
  bookmarkMs: number;
}

/**
 * A replica's flush clock for busy coalescing streams. While the replica's streams together are sending more than
 * `budget` messages a second (a join or a restart of many nodes: every change goes to every stream), a stream that
 * sent a change less than `ms` ago reads the log again only at the clock's next tick and takes whatever came
 * meanwhile as one coalesced message. One timer per tick serves every waiting stream, so they read together (one
 * shared read, shareLogReads) and the fan-out of a storm costs streams × ticks, not streams × changes. Below the
 * budget (a small cluster, or a large one between storms) every change goes out at once: a tick is a price paid only
 * when the replica's CPU would otherwise go to writing each change to each stream.
 */
export interface FlushClock {
  readonly ms: number;
  /** Whether the replica's streams sent more than the budget's messages in the last second. */
  congested(): boolean;
  /** Counts messages sent (changes and snapshots, not bookmarks). */
  sent(n?: number): void;
  /** Resolves at the next tick (started now by the first waiter, `ms` from now; later waiters join it). */
  next(): Promise<void>;
}

/** WatchRoutes' default flush period for busy coalescing streams (WEFT_ROUTES_FLUSH_MS). */
export const FLUSH_MS = 250;
/** Messages a second a replica's streams send before busy ones wait for the tick (WEFT_ROUTES_FLUSH_BUDGET). */
export const FLUSH_BUDGET = 2000;

export function createFlushClock(
  ms: number,
  budget = FLUSH_BUDGET,
  now: () => number = () => performance.now(),
): FlushClock {
  let tick: Promise<void> | null = null;
  // Messages in the current second and the one before it: the rate over the last second is the current count plus
  // the part of the previous second's that the last second still covers.
  let windowStart = now();
  let current = 0;
  let previous = 0;
  const roll = () => {
    const t = now();
    const elapsed = t - windowStart;
    if (elapsed < 1000) return elapsed;
    previous = elapsed < 2000 ? current : 0;
    current = 0;
    windowStart = t - (elapsed % 1000);
    return elapsed % 1000;
  };
  return {
    ms,
    congested() {
      const into = roll();
      return current + previous * (1 - into / 1000) > budget;
    },
    sent(n = 1) {
      roll();
      current += n;
    },
    next() {
      tick ??= new Promise<void>((resolve) =>
        setTimeout(() => {
          tick = null;
          resolve();
        }, ms),
      );
      return tick;
    },
  };
}

/** Coalesced messages stay below this many bytes of entries (a sixteenth of the 4 MiB message limit, as chunks). */
export const COALESCE_BYTES = 256 * 1024;

/**
 * The stream messages of one replica, made once for all its streams: the messages of a log read (one per change, or
 * coalesced) are made once per read, which streams at the same revision share (shareLogReads), and a snapshot once
 * per revision. Streams yield the same objects, so whatever is derived from a message object once (the protobuf
 * bytes: rpc/routes.rpc.ts) is derived once per replica. Messages are shared: nobody may change them.
 */
export interface WatchMessages {
  changes(read: Extract<LogRead, { kind: 'changes' }>, coalesce: boolean): readonly RoutesChange[];
  snapshot(read: Extract<LogRead, { kind: 'snapshot' }>): RoutesChange;
  /** The newest snapshot message made, when it was read from the database less than `reuseMs` ago; else null. */
  recentSnapshot(): RoutesChange | null;
}

/** A stream that starts without state gets the replica's newest snapshot if it was read less than this long ago. */
export const SNAPSHOT_REUSE_MS = 1000;

export function createWatchMessages(
  opts: { coalesceBytes?: number; reuseMs?: number; now?: () => number } = {},
): WatchMessages {
  const coalesceBytes = opts.coalesceBytes ?? COALESCE_BYTES;
  const reuseMs = opts.reuseMs ?? SNAPSHOT_REUSE_MS;
  const now = opts.now ?? Date.now;
  const single = new WeakMap<object, RoutesChange[]>();
  const coalesced = new WeakMap<object, RoutesChange[]>();
  // The latest snapshot message, by its revision and a fingerprint of the table read (the count of entries and the
  // sum of the revisions that set them): a database restored to an earlier point reuses revisions with other tables.
  let held: { revision: number; fingerprint: string; message: RoutesChange; readAt: number } | null = null;
  return {
    changes(read, coalesce) {
      const cache = coalesce ? coalesced : single;
      let ms = cache.get(read);
      if (!ms) {
        ms = coalesce ? coalesceChanges(read.changes, coalesceBytes) : read.changes.map(changeMessage);
        cache.set(read, ms);
      }
      return ms;
    },
    snapshot(read) {
      const fingerprint = `${read.table.length}/${read.fingerprint}`;
      if (held?.revision === read.revision && held.fingerprint === fingerprint) {
        held.readAt = now();
        return held.message;
      }
      const message: RoutesChange = {
        revision: read.revision,
        reset: true,
        upserts: read.table,
        deletes: [],
        bookmark: false,
      };
      if (!held || read.revision >= held.revision)
        held = { revision: read.revision, fingerprint, message, readAt: now() };
      return message;
    },
    recentSnapshot() {
      return held && now() - held.readAt < reuseMs ? held.message : null;
    },
  };
}

/**
 * One WatchRoutes stream, served from the revision log (any replica can serve any watcher): a snapshot when
 * `sinceRevision` is 0 or no longer in the log, else the changes after it; then each new change in revision order,
 * woken by NOTIFY routes_changes and at least every pollMs; a bookmark on an idle stream every bookmarkMs.
 * Revisions commit in order (see store/route-log.repository.ts), so reading `revision > last` never skips one.
 * With `coalesce` (the watcher set accept_coalesced), the changes of one read (up to 500) go out as few messages as
 * fit COALESCE_BYTES (domain/route-table.ts coalesceChanges), else one message per revision; and a stream that starts
 * without state may get the replica's snapshot of less than SNAPSHOT_REUSE_MS ago, then what followed it.
 * A coalescing stream given a `flush` clock that sent a change less than `flush.ms` ago, while the clock's replica is
 * over its budget of messages a second, waits for the clock's next
 * tick before it reads again (FlushClock): while changes come faster than that, it gets one message per tick.
 * Until the affinity follower has recorded IPAM's snapshot once, the stream sends nothing (a table without blocks
 * would make agents withdraw routes).
 */
export async function* watchRoutes(
  deps: { log: LogReader; notifier: Notifier; options: WatchOptions; messages?: WatchMessages; flush?: FlushClock },
  sinceRevision: number,
  signal: AbortSignal,
  opts: { coalesce?: boolean } = {},
): AsyncGenerator<RoutesChange> {
  const { log, notifier, options } = deps;
  const messages = deps.messages ?? createWatchMessages();
  const coalesce = opts.coalesce ?? false;
  let last = sinceRevision;
  let lastSent = Date.now();
  /** When this stream last finished sending a change or snapshot (not a bookmark). */
  let lastChange = -Infinity;
  const flush = coalesce && deps.flush && deps.flush.ms > 0 ? deps.flush : null;
  let ready = false;
  // A watcher without state (a joining node) gets the replica's newest snapshot, when it was read less than a second
  // ago, and then what followed it from the log: what a watcher that held that snapshot and resumed from its revision
  // gets. During a join of thousands of nodes that is one read and one encoding of the table a second, not one per node.
  // Only for watchers that accept coalesced messages: they follow the stream; an older one may take its first message
  // for the table as it is now (`weft nodes` status does).
  const recent = last === 0 && coalesce ? messages.recentSnapshot() : null;
  if (recent && !signal.aborted) {
    last = recent.revision;
    ready = true;
    yield recent;
    deps.flush?.sent();
    lastChange = Date.now();
  }
  while (!signal.aborted) {
    // Busy (a change sent within the flush period) while the replica is over its budget: read at the replica's next
    // tick, with every other busy stream.
    // Nothing is lost: the stream has not subscribed yet, and the read below sees everything committed before it.
    if (flush && Date.now() - lastChange < flush.ms && flush.congested()) {
      await flush.next();
      if (signal.aborted) return;
    }
    // Subscribe to the wake-up before reading, so that a change committed during the read is not slept through.
    const woken = notifier.wait(
      CHANGES_CHANNEL,
      Math.max(1, Math.min(options.pollMs, lastSent + options.bookmarkMs - Date.now())),
      signal,
    );
    let drained = false;
    let sent = false;
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
        yield messages.snapshot(read);
        deps.flush?.sent();
        sent = true;
        continue;
      }
      for (const m of messages.changes(read, coalesce)) {
        last = m.revision;
        lastSent = Date.now();
        yield m;
        deps.flush?.sent();
        sent = true;
      }
      drained = read.changes.length < 500;
    }
    if (sent) lastChange = Date.now();
    if (signal.aborted) return;
    if (Date.now() - lastSent >= options.bookmarkMs && ready) {
      lastSent = Date.now();
      yield { revision: last, reset: false, upserts: [], deletes: [], bookmark: true };
    }
    await woken;
  }
}
