import type { Notifier } from '../../lib/db/notifier.js';
import { createClusterCompiler } from './domain/cluster-compile.js';
import { diffNodePolicy, type NodePolicy, type NodePolicyDelta, type PlacedPod } from './domain/compile.js';
import type { World } from './domain/evaluate.js';
import { POLICY_CHANNEL, type PolicyRepository, type Snapshot } from './store/policy.repository.js';
import { createWorldCache } from './world.js';

/** One snapshot as every stream compiles it: read once, parsed once, shared (streams only read it). */
export interface PolicyView {
  /** Which read it is: a later read began later (and sees every change an earlier one saw). */
  seq: number;
  revision: number;
  world: World;
  pods: PlacedPod[];
}

export interface PolicyViews {
  /**
   * A view no older than the caller's wake-up: joins the read in flight or reuses the last one when it began at the
   * same notifier generation (no NOTIFY has arrived since), and, for a reuse, began less than `maxAgeMs` ago.
   */
  current(): Promise<PolicyView>;
}

/**
 * One replica's snapshot reads, shared by all its WatchNodePolicy streams. Without it each stream read the whole
 * policy schema on every NOTIFY and every poll (5,000 streams: 5,000 full reads per change). Why joining loses
 * nothing: a stream subscribes to the wake-up before it asks for a view; a change committed after the shared read
 * began sends its NOTIFY after its commit, which bumps the generation and wakes the stream again, and the next view
 * is a new read. Only a change whose NOTIFY never came (the writer died between commit and NOTIFY) waits for a read
 * that begins after it, within `maxAgeMs` plus a poll.
 */
export function sharePolicyViews(
  repo: Pick<PolicyRepository, 'snapshot'>,
  notifier: Pick<Notifier, 'generation'>,
  maxAgeMs: number,
): PolicyViews {
  const worlds = createWorldCache();
  let last: { generation: number; startedAt: number; view: Promise<PolicyView> } | null = null;
  let reads = 0;
  const viewOf = (seq: number, s: Snapshot): PolicyView => ({
    seq,
    revision: s.revision,
    world: worlds.world(s),
    pods: worlds.placedPods(s),
  });
  return {
    current() {
      const generation = notifier.generation(POLICY_CHANNEL);
      const now = Date.now();
      if (last && last.generation === generation && now - last.startedAt < maxAgeMs) return last.view;
      const seq = ++reads;
      const read = { generation, startedAt: now, view: repo.snapshot().then((s) => viewOf(seq, s)) };
      // A failed read is not shared beyond the callers that joined it: the next one reads again.
      read.view.catch(() => {
        if (last === read) last = null;
      });
      last = read;
      return read.view;
    },
  };
}

export interface NodePolicyWatchOptions {
  /** Re-read at least this often even without a NOTIFY. */
  pollMs: number;
  /** Send a bookmark after this long without a message. */
  bookmarkMs: number;
}

export interface NodePolicyMessage {
  revision: number;
  bookmark: boolean;
  /** The complete compiled rules of the node's pods; null in a bookmark and in a delta. */
  policy: NodePolicy | null;
  /** What changed since the previous message of the stream (only for a watcher that accepts deltas). */
  delta: NodePolicyDelta | null;
}

/**
 * One replica's WatchNodePolicy streams, fed from one place. A single loop per replica follows the policy tables
 * (woken by NOTIFY policy_changes, and at least every pollMs), takes the shared view and moves the replica's
 * `ClusterCompiler` to it: the view is compiled once for every watched node, and only the nodes a change concerns
 * are compiled again. A node whose rules changed gets a new version (with the delta from the one before); its
 * streams wake, and the others sleep on (a bookmark every bookmarkMs). All streams of a node share its compiled
 * rules; a stream holds only a reference to what it sent last, and one that is slow to read (back-pressure) skips
 * to the newest version with one delta, so memory per stream stays bounded whatever the rate of change. A new stream
 * (a reconnect after a restart, say) joins the shared read in flight and compiles its node once from it.
 *
 * The first message of a stream is complete; later ones are deltas (changed pods and new sets, removed pods and sets)
 * when the watcher accepts them, complete otherwise. Messages are judged by content, not by revision, so a change
 * whose revision committed out of order is never skipped, and `sinceRevision` needs no log: every stream starts with
 * the complete set.
 */
export interface PolicyFanout {
  watch(node: string, signal: AbortSignal, opts?: { acceptDeltas?: boolean }): AsyncGenerator<NodePolicyMessage>;
}

interface Feed {
  streams: number;
  policy: NodePolicy;
  /** Bumped when the rules change; `delta` goes from version - 1 to this one. */
  version: number;
  delta: NodePolicyDelta | null;
  /** The revision of the view the rules were last changed at. */
  revision: number;
  wake: Set<() => void>;
}

export function createPolicyFanout(deps: {
  views: PolicyViews;
  notifier: Notifier;
  options: NodePolicyWatchOptions;
  /** A failed read in the loop (the streams keep their rules and the loop tries again). */
  onError?: (err: unknown) => void;
}): PolicyFanout {
  const { views, notifier, options } = deps;
  const compiler = createClusterCompiler();
  const feeds = new Map<string, Feed>();
  let current: PolicyView | null = null;
  let looping: AbortController | null = null;

  const bump = (feed: Feed, policy: NodePolicy, revision: number) => {
    if (policy === feed.policy) return;
    const delta = diffNodePolicy(feed.policy, policy);
    feed.policy = policy;
    if (!delta) return;
    feed.version++;
    feed.delta = delta;
    feed.revision = revision;
    for (const w of [...feed.wake]) w();
  };
  /** Moves to `view` unless a later read was taken already. Synchronous: no stream sees a half-done move. */
  const advance = (view: PolicyView) => {
    if (current && view.seq <= current.seq) return;
    current = view;
    for (const node of compiler.advance(view.world, view.pods)) {
      const feed = feeds.get(node);
      if (feed) bump(feed, compiler.compile(node), view.revision);
    }
  };
  const loop = async (signal: AbortSignal) => {
    while (!signal.aborted) {
      // Subscribe to the wake-up before reading, so that a change committed during the read is not slept through.
      const woken = notifier.wait(POLICY_CHANNEL, options.pollMs, signal);
      try {
        advance(await views.current());
      } catch (err) {
        deps.onError?.(err);
      }
      await woken;
    }
  };
  const open = async (node: string): Promise<Feed> => {
    // A new stream compiles from a view no older than its arrival.
    advance(await views.current());
    let feed = feeds.get(node);
    if (!feed) {
      feed = {
        streams: 0,
        policy: compiler.compile(node),
        version: 0,
        delta: null,
        revision: current!.revision,
        wake: new Set(),
      };
      feeds.set(node, feed);
    }
    feed.streams++;
    if (!looping) {
      looping = new AbortController();
      void loop(looping.signal);
    }
    return feed;
  };
  const close = (node: string, feed: Feed) => {
    if (--feed.streams > 0) return;
    feeds.delete(node);
    compiler.forget(node);
    if (feeds.size === 0) {
      looping?.abort();
      looping = null;
    }
  };
  /** Resolves when the feed changes, after `ms`, or when `signal` aborts. */
  const changed = (feed: Feed, ms: number, signal: AbortSignal) =>
    new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        feed.wake.delete(done);
        signal.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, Math.max(1, ms));
      signal.addEventListener('abort', done, { once: true });
      feed.wake.add(done);
    });

  return {
    async *watch(node, signal, opts = {}) {
      const feed = await open(node);
      try {
        let sent = feed.policy;
        let version = feed.version;
        let lastSent = Date.now();
        yield { revision: current!.revision, bookmark: false, policy: sent, delta: null };
        while (!signal.aborted) {
          if (feed.version === version) await changed(feed, lastSent + options.bookmarkMs - Date.now(), signal);
          if (signal.aborted) return;
          if (feed.version !== version) {
            // One version behind: the feed's delta; further behind (a slow reader): one delta to the newest.
            const delta = feed.version === version + 1 ? feed.delta : diffNodePolicy(sent, feed.policy);
            sent = feed.policy;
            version = feed.version;
            if (!delta) continue;
            lastSent = Date.now();
            yield opts.acceptDeltas
              ? { revision: feed.revision, bookmark: false, policy: null, delta }
              : { revision: feed.revision, bookmark: false, policy: sent, delta: null };
          } else if (Date.now() - lastSent >= options.bookmarkMs) {
            lastSent = Date.now();
            yield { revision: Math.max(feed.revision, current!.revision), bookmark: true, policy: null, delta: null };
          }
        }
      } finally {
        close(node, feed);
      }
    },
  };
}
