import type { PromiseClient } from '../../lib/grpc/client.js';
import type { Logger } from '../../lib/logger.js';
import type { PolicyServiceService, PolicyEntry as PbEntry } from '../../gen/weft/policy/v1/policy.js';
import type { NodeRules, PolicyEntry } from '../domain/network-policy.js';
import { followStream } from './follow-stream.js';

/**
 * Follows WatchNodePolicy. Each message is the node's complete rule set and replaces the one held; bookmarks only
 * advance the revision. The handler only swaps the snapshot and marks dirty; it never touches the kernel. Until the
 * first message `rules()` is null, and the reconciler drops every local pod's traffic (fail closed); a broken stream
 * keeps the rules last held (the kernel keeps enforcing them) while it reconnects.
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

export function followNodePolicy(deps: {
  client: PromiseClient<typeof PolicyServiceService>;
  node: string;
  logger: Logger;
  signal: AbortSignal;
  onChange: (rules: NodeRules) => void;
}): PolicySource {
  let held = null as NodeRules | null;
  followStream({
    open: (signal) => deps.client.watchNodePolicy({ node: deps.node, sinceRevision: held?.revision ?? 0 }, { signal }),
    onMessage: (m) => {
      if (m.bookmark) {
        if (held) held = { ...held, revision: m.revision };
        return;
      }
      held = {
        revision: m.revision,
        pods: m.pods.map((p) => ({ namespace: p.namespace, name: p.name, addresses: p.addresses, ingress: p.ingress.map(toEntry), egress: p.egress.map(toEntry) })),
        sets: new Map(m.sets.map((s) => [s.name, s.cidrs])),
      };
      deps.onChange(held);
    },
    brokenMessage: 'policy watch broke; reconnecting (the rules held stay in force)',
    logger: deps.logger,
    signal: deps.signal,
  });
  return { rules: () => held };
}
