import type { PromiseClient } from '../../lib/grpc/client.js';
import type { Logger } from '../../lib/logger.js';
import type { PolicyServiceService, PolicyEntry as PbEntry, WatchNodePolicyResponse } from '../../gen/weft/policy/v1/policy.js';
import type { NodeRules, PodRules, PolicyEntry } from '../domain/network-policy.js';
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

const toEntry = (e: PbEntry): PolicyEntry => ({
  tier: e.tier as PolicyEntry['tier'],
  action: e.action as PolicyEntry['action'],
  peerSet: e.peerSet || null,
  protocol: (e.protocol || null) as PolicyEntry['protocol'],
  ports: e.portFrom ? { from: e.portFrom, to: e.portTo || e.portFrom } : null,
  source: e.source,
});

const sameEntry = (a: PolicyEntry, b: PolicyEntry) => a.tier === b.tier && a.action === b.action && a.peerSet === b.peerSet && a.protocol === b.protocol
  && a.source === b.source && (a.ports === b.ports || (!!a.ports && !!b.ports && a.ports.from === b.ports.from && a.ports.to === b.ports.to));
const samePod = (a: PodRules, b: PodRules) => a.namespace === b.namespace && a.name === b.name && a.addresses.length === b.addresses.length && a.addresses.every((x, i) => x === b.addresses[i])
  && a.ingress.length === b.ingress.length && a.ingress.every((e, i) => sameEntry(e, b.ingress[i]!)) && a.egress.length === b.egress.length && a.egress.every((e, i) => sameEntry(e, b.egress[i]!));
const idOf = (p: { namespace: string; name: string }) => `${p.namespace}/${p.name}`;

/** The rules held after a (non-bookmark) message: a complete set replaces them, a delta is applied to them. */
export function applyPolicyMessage(held: NodeRules | null, m: WatchNodePolicyResponse): NodeRules {
  const before = new Map((held?.pods ?? []).map((p) => [idOf(p), p]));
  // An unchanged pod keeps the object held (so its rendering is reused).
  const incoming = m.pods.map((p): PodRules => {
    const pod: PodRules = { namespace: p.namespace, name: p.name, addresses: p.addresses, ingress: p.ingress.map(toEntry), egress: p.egress.map(toEntry) };
    const old = before.get(idOf(pod));
    return old && samePod(old, pod) ? old : pod;
  });
  if (!m.delta || !held) {
    return { revision: m.revision, pods: incoming, sets: new Map(m.sets.map((s) => [s.name, s.cidrs])) };
  }
  const pods = new Map(before);
  for (const id of m.removedPods) pods.delete(id);
  for (const p of incoming) pods.set(idOf(p), p);
  const sets = new Map(held.sets);
  for (const name of m.removedSets) sets.delete(name);
  for (const s of m.sets) sets.set(s.name, s.cidrs);
  return { revision: m.revision, pods: [...pods.values()], sets };
}

export function followNodePolicy(deps: {
  client: PromiseClient<typeof PolicyServiceService>;
  node: string;
  logger: Logger;
  signal: AbortSignal;
  onChange: (rules: NodeRules) => void;
}): PolicySource {
  let held = null as NodeRules | null;
  const chunks = createPolicyChunkJoiner();
  followStream({
    open: (signal) => {
      chunks.reset();
      return deps.client.watchNodePolicy({ node: deps.node, sinceRevision: held?.revision ?? 0, acceptDeltas: true, acceptChunks: true }, { signal });
    },
    onMessage: (chunk) => {
      const m = chunks.push(chunk);
      if (!m) return;
      if (m.bookmark) {
        if (held) held = { ...held, revision: m.revision };
        return;
      }
      held = applyPolicyMessage(held, m);
      deps.onChange(held);
    },
    brokenMessage: 'policy watch broke; reconnecting (the rules held stay in force)',
    logger: deps.logger,
    signal: deps.signal,
  });
  return { rules: () => held };
}
