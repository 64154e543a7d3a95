import type { Notifier } from '../../lib/db/notifier.js';
import { compileNodePolicy, type NodePolicy } from './domain/compile.js';
import { POLICY_CHANNEL, type PolicyRepository } from './store/policy.repository.js';
import { placedPods, worldOf } from './world.js';

export interface NodePolicyWatchOptions {
  /** Re-read at least this often even without a NOTIFY. */
  pollMs: number;
  /** Send a bookmark after this long without a message. */
  bookmarkMs: number;
}

export interface NodePolicyMessage {
  revision: number;
  bookmark: boolean;
  /** The complete compiled rules of the node's pods; null in a bookmark. */
  policy: NodePolicy | null;
}

/**
 * One WatchNodePolicy stream: the node's compiled rules at once, then again whenever they change, woken by NOTIFY
 * policy_changes and at least every pollMs; a bookmark on an idle stream every bookmarkMs. Each wake-up reads one
 * consistent snapshot and compiles it whole; a message is sent only when the compiled rules differ from the last
 * ones sent (a change elsewhere in the cluster that does not concern the node sends nothing but bookmarks). Since
 * every message is complete and judged by content, not by revision, a change whose revision committed out of order
 * is never skipped, and `sinceRevision` needs no log: every stream starts with the complete set.
 */
export async function* watchNodePolicy(deps: { repo: PolicyRepository; notifier: Notifier; options: NodePolicyWatchOptions }, node: string, signal: AbortSignal): AsyncGenerator<NodePolicyMessage> {
  const { repo, notifier, options } = deps;
  let lastKey: string | null = null;
  let lastSent = Date.now();
  let revision = 0;
  while (!signal.aborted) {
    // Subscribe to the wake-up before reading, so that a change committed during the read is not slept through.
    const woken = notifier.wait(POLICY_CHANNEL, Math.max(1, Math.min(options.pollMs, lastSent + options.bookmarkMs - Date.now())), signal);
    const s = await repo.snapshot();
    revision = Math.max(revision, s.revision);
    const policy = compileNodePolicy(worldOf(s), placedPods(s), node);
    const key = JSON.stringify([policy.pods, [...policy.sets]]);
    if (signal.aborted) return;
    if (key !== lastKey) {
      lastKey = key;
      lastSent = Date.now();
      yield { revision, bookmark: false, policy };
    } else if (Date.now() - lastSent >= options.bookmarkMs) {
      lastSent = Date.now();
      yield { revision, bookmark: true, policy: null };
    }
    await woken;
  }
}
