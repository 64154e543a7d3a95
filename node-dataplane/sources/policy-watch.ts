import type { PromiseClient } from '../../lib/grpc/client.js';
import type { Logger } from '../../lib/logger.js';
import type { PolicyServiceService, WatchNodePolicyResponse } from '../../gen/weft/policy/v1/policy.js';
import type { NodeRules, PodRules, PolicyEntry } from '../domain/network-policy.js';
import { checkAddressSet, checkPod } from '../domain/stream-validation.js';
import { followStream } from './follow-stream.js';
import { createPolicyChunkJoiner } from './chunks.js';

/**
 * Follows WatchNodePolicy. The first message of a stream is the node's complete rule set and replaces the one held;
 * later ones are deltas (pods added or changed, pods removed, sets added and removed) applied to it; bookmarks only
 * advance the revision. A pod whose rules did not change keeps its object (`PodRules`), which is what lets the agent
 * render only the pods that changed. The handler only updates the snapshot and marks dirty; it never touches the
 * kernel. Until the first message `rules()` is null, and the reconciler drops every local pod's traffic (fail
 * closed); a broken stream keeps the rules last held (the kernel keeps enforcing them) while it reconnects. A large
 * message (sets of 150,000 addresses) arrives in chunks, which are joined first: the rules held change only once a
 * whole message is in.
 */
export interface PolicySource {
  rules(): NodeRules | null;
}

const sameEntry = (a: PolicyEntry, b: PolicyEntry) =>
  a.tier === b.tier &&
  a.action === b.action &&
  a.peerSet === b.peerSet &&
  a.protocol === b.protocol &&
  a.source === b.source &&
  (a.ports === b.ports || (!!a.ports && !!b.ports && a.ports.from === b.ports.from && a.ports.to === b.ports.to));
const samePod = (a: PodRules, b: PodRules) =>
  a.namespace === b.namespace &&
  a.name === b.name &&
  a.addresses.length === b.addresses.length &&
  a.addresses.every((x, i) => x === b.addresses[i]) &&
  a.ingress.length === b.ingress.length &&
  a.ingress.every((e, i) => sameEntry(e, b.ingress[i]!)) &&
  a.egress.length === b.egress.length &&
  a.egress.every((e, i) => sameEntry(e, b.egress[i]!));
const idOf = (p: { namespace: string; name: string }) => `${p.namespace}/${p.name}`;

/**
 * The rules held after a (non-bookmark) message: a complete set replaces them, a delta is applied to them. Every
 * field is checked first (`domain/stream-validation.ts`): a set or pod with a bad field is refused (`refuse` says
 * which and why), and so is a pod naming a refused set; a refused pod's rules are not held (its traffic meets the
 * fail-closed drop, also when the rules held before had it), the rest of the message is applied.
 */
export function applyPolicyMessage(
  held: NodeRules | null,
  m: WatchNodePolicyResponse,
  refuse: (what: string, why: string) => void = () => {},
): NodeRules {
  const delta = m.delta && held !== null;
  const before = new Map((held?.pods ?? []).map((p) => [idOf(p), p]));
  // Sets first: a refused set is not held (a set held from before under the same name, which means the same content, stays).
  const sets = new Map(delta ? held!.sets : []);
  if (delta) for (const name of m.removedSets) sets.delete(name);
  for (const s of m.sets) {
    const c = checkAddressSet(s);
    if (c.refused !== undefined) refuse(`set ${JSON.stringify(s.name)}`, c.refused);
    else sets.set(c.value.name, c.value.cidrs);
  }
  const pods = new Map(delta ? before : []);
  if (delta) for (const id of m.removedPods) pods.delete(id);
  for (const p of m.pods) {
    // A pod naming a set that is not held (refused) is refused too: leaving its entry out would change its meaning.
    const c = checkPod(p, (name) => sets.has(name));
    if (c.refused !== undefined) {
      pods.delete(idOf(p));
      refuse(`pod ${JSON.stringify(idOf(p))}`, c.refused);
      continue;
    }
    // An unchanged pod keeps the object held (so its rendering is reused).
    const old = before.get(idOf(c.value));
    pods.set(idOf(c.value), old && samePod(old, c.value) ? old : c.value);
  }
  return { revision: m.revision, pods: [...pods.values()], sets };
}

export function followNodePolicy(deps: {
  client: PromiseClient<typeof PolicyServiceService>;
  node: string;
  logger: Logger;
  signal: AbortSignal;
  onChange: (rules: NodeRules) => void;
  /** The full-jitter spread of a reconnect after the control plane went away (follow-stream.ts); 0 by default. */
  spreadMs?: () => number;
}): PolicySource {
  let held = null as NodeRules | null;
  const chunks = createPolicyChunkJoiner();
  followStream({
    open: (signal) => {
      chunks.reset();
      return deps.client.watchNodePolicy(
        { node: deps.node, sinceRevision: held?.revision ?? 0, acceptDeltas: true, acceptChunks: true },
        { signal, waitForReady: true },
      );
    },
    spreadMs: deps.spreadMs,
    onMessage: (chunk) => {
      const m = chunks.push(chunk);
      if (!m) return;
      if (m.bookmark) {
        if (held) held = { ...held, revision: m.revision };
        return;
      }
      held = applyPolicyMessage(held, m, (what, why) =>
        deps.logger.error('refused a policy stream entry (the rest is applied; a refused pod is dropped both ways)', {
          entry: what,
          reason: why,
          revision: m.revision,
        }),
      );
      deps.onChange(held);
    },
    brokenMessage: 'policy watch broke; reconnecting (the rules held stay in force)',
    logger: deps.logger,
    signal: deps.signal,
  });
  return { rules: () => held };
}
