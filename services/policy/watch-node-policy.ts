import type { Notifier } from '../../lib/db/notifier.js';
import {
  compileNodePolicy,
  createCompileCache,
  diffNodePolicy,
  type NodePolicy,
  type NodePolicyDelta,
  type PlacedPod,
} from './domain/compile.js';
import type { World } from './domain/evaluate.js';
import { POLICY_CHANNEL, type PolicyRepository, type Snapshot } from './store/policy.repository.js';
import { createWorldCache } from './world.js';

/** One snapshot as every stream compiles it: read once, parsed once, shared (streams only read it). */
export interface PolicyView {
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
  const viewOf = (s: Snapshot): PolicyView => ({
    revision: s.revision,
    world: worlds.world(s),
    pods: worlds.placedPods(s),
  });
  return {
    current() {
      const generation = notifier.generation(POLICY_CHANNEL);
      const now = Date.now();
      if (last && last.generation === generation && now - last.startedAt < maxAgeMs) return last.view;
      const read = { generation, startedAt: now, view: repo.snapshot().then(viewOf) };
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
 * One WatchNodePolicy stream: the node's compiled rules at once, then whenever they change, woken by NOTIFY
 * policy_changes and at least every pollMs; a bookmark on an idle stream every bookmarkMs. Each wake-up takes the
 * replica's shared view (one consistent snapshot, read and parsed once for all streams) and compiles it unless it is
 * the view compiled last, reusing (through the stream's compile cache) the entries of every pod that the changes do
 * not concern; a message is sent only when the compiled rules differ from the last ones sent
 * (a change elsewhere in the cluster that does not concern the node sends nothing but bookmarks). The first message
 * is complete; later ones are deltas (changed pods and new sets, removed pods and sets) when the watcher accepts
 * them, complete otherwise. Since messages are judged by content, not by revision, a change whose revision committed
 * out of order is never skipped, and `sinceRevision` needs no log: every stream starts with the complete set.
 */
export async function* watchNodePolicy(
  deps: { views: PolicyViews; notifier: Notifier; options: NodePolicyWatchOptions },
  node: string,
  signal: AbortSignal,
  opts: { acceptDeltas?: boolean } = {},
): AsyncGenerator<NodePolicyMessage> {
  const { views, notifier, options } = deps;
  const cache = createCompileCache();
  let last: NodePolicy | null = null;
  let compiled: PolicyView | null = null;
  let lastSent = Date.now();
  let revision = 0;
  while (!signal.aborted) {
    // Subscribe to the wake-up before reading, so that a change committed during the read is not slept through.
    const woken = notifier.wait(
      POLICY_CHANNEL,
      Math.max(1, Math.min(options.pollMs, lastSent + options.bookmarkMs - Date.now())),
      signal,
    );
    const view = await views.current();
    revision = Math.max(revision, view.revision);
    // The same view as last time (a poll that reused the shared read): the same rules.
    const policy: NodePolicy = view === compiled && last ? last : compileNodePolicy(view.world, view.pods, node, cache);
    compiled = view;
    if (signal.aborted) return;
    const delta = last ? diffNodePolicy(last, policy) : null;
    if (!last || delta) {
      const first = !last;
      last = policy;
      lastSent = Date.now();
      yield opts.acceptDeltas && !first
        ? { revision, bookmark: false, policy: null, delta }
        : { revision, bookmark: false, policy, delta: null };
    } else if (Date.now() - lastSent >= options.bookmarkMs) {
      lastSent = Date.now();
      yield { revision, bookmark: true, policy: null, delta: null };
    }
    await woken;
  }
}
