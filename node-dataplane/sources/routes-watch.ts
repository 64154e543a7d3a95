import type { PromiseClient } from '../../lib/grpc/client.js';
import type { Logger } from '../../lib/logger.js';
import type { RoutesServiceService } from '../../gen/weft/routes/v1/routes.js';
import type { RemoteNode } from '../domain/desired.js';
import { checkRemoteNode } from '../domain/stream-validation.js';
import { followStream, reconnectSpreadMs } from './follow-stream.js';
import { createRoutesChunkJoiner } from './chunks.js';

/**
 * Follows WatchRoutes. The handler only updates the snapshot and marks it dirty; it never touches the kernel. Each
 * node's entry is checked first (name, IPv4 underlay address, VTEP MAC, block CIDRs); a bad one is refused and logged.
 * `synced` becomes true at the first complete snapshot (reset) and stays true across reconnects. A reconnect
 * passes the last applied revision: the server sends the missed changes, which apply on top of the snapshot held,
 * or (when that revision is no longer in its log) a fresh snapshot, which replaces it. Bookmarks only advance the
 * revision. A large message (a snapshot of thousands of nodes) arrives in chunks, which are joined first: the
 * snapshot held changes only once a whole message is in. The agent accepts coalesced messages: when it is behind by
 * several revisions (a join of many nodes, a resume) one message carries them all, each changed node once, as of the
 * message's revision; applying it (upserts, then deletes: a node is in only one of them) gives that revision's table.
 */
export interface RoutesSnapshot {
  nodes: Map<string, RemoteNode>;
  revision: number;
  synced: boolean;
}

export function followRoutes(deps: {
  client: PromiseClient<typeof RoutesServiceService>;
  node: string;
  logger: Logger;
  signal: AbortSignal;
  onChange: (snap: RoutesSnapshot) => void;
}): RoutesSnapshot {
  const snap: RoutesSnapshot = { nodes: new Map(), revision: 0, synced: false };
  const chunks = createRoutesChunkJoiner();
  followStream({
    open: (signal) => {
      chunks.reset();
      return deps.client.watchRoutes(
        { node: deps.node, sinceRevision: snap.synced ? snap.revision : 0, acceptChunks: true, acceptCoalesced: true },
        { signal, waitForReady: true },
      );
    },
    // After the control plane went away: spread over the cluster's size (it knows it: the nodes in its table).
    spreadMs: () => reconnectSpreadMs(snap.nodes.size),
    onMessage: (chunk) => {
      const ch = chunks.push(chunk);
      if (!ch) return;
      if (ch.bookmark) {
        if (snap.synced) snap.revision = ch.revision;
        return;
      }
      if (!ch.reset && !snap.synced) return; // nothing applies before the first snapshot
      if (ch.reset) snap.nodes = new Map();
      for (const u of ch.upserts) {
        // A node whose entry has a bad field is refused whole (no entry for it is held): see domain/stream-validation.ts.
        const c = checkRemoteNode({
          node: u.node,
          underlayAddress: u.underlayAddress,
          vtepMac: u.vtepMac,
          blockCidrs: u.blockCidrs,
        });
        if (c.refused !== undefined) {
          snap.nodes.delete(u.node);
          deps.logger.error("refused a route stream entry (the rest is applied; no route to the node's blocks)", {
            node: u.node,
            reason: c.refused,
            revision: ch.revision,
          });
        } else snap.nodes.set(c.value.node, c.value);
      }
      for (const d of ch.deletes) snap.nodes.delete(d);
      snap.revision = ch.revision;
      if (ch.reset) snap.synced = true;
      deps.onChange(snap);
    },
    brokenMessage: 'route watch broke; reconnecting',
    logger: deps.logger,
    signal: deps.signal,
  });
  return snap;
}
