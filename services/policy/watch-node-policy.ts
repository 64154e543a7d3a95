import type { Notifier } from '../../lib/db/notifier.js';
import { compileNodePolicy, createCompileCache, diffNodePolicy, type NodePolicy, type NodePolicyDelta } from './domain/compile.js';
import { POLICY_CHANNEL, type PolicyRepository } from './store/policy.repository.js';
import { createWorldCache } from './world.js';

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
 * policy_changes and at least every pollMs; a bookmark on an idle stream every bookmarkMs. Each wake-up reads one
 * consistent snapshot and compiles it, reusing (through the stream's world and compile caches) the entries of every
 * pod that the changes do not concern; a message is sent only when the compiled rules differ from the last ones sent
 * (a change elsewhere in the cluster that does not concern the node sends nothing but bookmarks). The first message
 * is complete; later ones are deltas (changed pods and new sets, removed pods and sets) when the watcher accepts
 * them, complete otherwise. Since messages are judged by content, not by revision, a change whose revision committed
 * out of order is never skipped, and `sinceRevision` needs no log: every stream starts with the complete set.
 */
export async function* watchNodePolicy(deps: { repo: PolicyRepository; notifier: Notifier; options: NodePolicyWatchOptions }, node: string, signal: AbortSignal, opts: { acceptDeltas?: boolean } = {}): AsyncGenerator<NodePolicyMessage> {
  const { repo, notifier, options } = deps;
  const worlds = createWorldCache();
  const cache = createCompileCache();
  let last: NodePolicy | null = null;
  let lastSent = Date.now();
  let revision = 0;
  while (!signal.aborted) {
    // Subscribe to the wake-up before reading, so that a change committed during the read is not slept through.
    const woken = notifier.wait(POLICY_CHANNEL, Math.max(1, Math.min(options.pollMs, lastSent + options.bookmarkMs - Date.now())), signal);
    const s = await repo.snapshot();
    revision = Math.max(revision, s.revision);
    const policy = compileNodePolicy(worlds.world(s), worlds.placedPods(s), node, cache);
    if (signal.aborted) return;
    const delta = last ? diffNodePolicy(last, policy) : null;
    if (!last || delta) {
      const first = !last;
      last = policy;
      lastSent = Date.now();
      yield opts.acceptDeltas && !first ? { revision, bookmark: false, policy: null, delta } : { revision, bookmark: false, policy, delta: null };
    } else if (Date.now() - lastSent >= options.bookmarkMs) {
      lastSent = Date.now();
      yield { revision, bookmark: true, policy: null, delta: null };
    }
    await woken;
  }
}
