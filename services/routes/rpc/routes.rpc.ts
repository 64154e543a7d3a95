import type { Handlers } from '../../../lib/grpc/server.js';
import type { Notifier } from '../../../lib/db/notifier.js';
import {
  ListNodesResponse,
  RoutesServiceService,
  type Node as PbNode,
  type NodeRoutes as PbNodeRoutes,
  WatchRoutesResponse,
} from '../../../gen/weft/routes/v1/routes.js';
import { CHUNK_BYTES, chunkBySize, ensureFitsOneMessage, stringFieldBytes } from '../../../lib/grpc/limits.js';
import { decodePageToken, encodePageToken, pageSizeOf } from '../../../lib/paging.js';
import {
  validateDepartedQuery,
  validateRegistration,
  type NodeRecord,
  type RoutesChange,
} from '../domain/route-table.js';
import type { NodesRepository } from '../store/nodes.repository.js';
import type { RouteLogRepository } from '../store/route-log.repository.js';
import {
  createFlushClock,
  createWatchMessages,
  FLUSH_BUDGET,
  FLUSH_MS,
  shareLogReads,
  watchRoutes,
} from '../watch-routes.js';
import { DomainError } from '../../../lib/errors.js';

const toPbNode = (n: NodeRecord): PbNode => ({
  name: n.name,
  underlayAddress: n.underlayAddress,
  vtepMac: n.vtepMac,
  registerTime: n.registeredAt,
  leaseExpireTime: n.leaseExpiresAt,
});

const nodeRoutesBytes = (n: PbNodeRoutes) =>
  stringFieldBytes(n.node) +
  stringFieldBytes(n.underlayAddress) +
  stringFieldBytes(n.vtepMac) +
  n.blockCidrs.reduce((s, b) => s + stringFieldBytes(b), 8);

/**
 * A stream message as it goes to a watcher: whole, or for a watcher that joins chunks (accept_chunks), split into
 * messages of at most CHUNK_BYTES of entries (a snapshot of 5,000 nodes is about 0.5 MB), each but the last marked
 * `more`. Every chunk carries the message's revision and reset.
 */
export function toPbWatchMessages(m: RoutesChange, acceptChunks: boolean): WatchRoutesResponse[] {
  const bytes =
    m.upserts.reduce((s, u) => s + nodeRoutesBytes(u), 0) + m.deletes.reduce((s, d) => s + stringFieldBytes(d), 0);
  if (!acceptChunks || bytes <= CHUNK_BYTES) return [{ ...m, more: false }];
  const upserts = chunkBySize(m.upserts, nodeRoutesBytes);
  const deletes = m.deletes.length ? chunkBySize(m.deletes, stringFieldBytes) : [];
  const parts: WatchRoutesResponse[] = [
    ...upserts.map((u) => ({ ...m, upserts: u, deletes: [], more: true })),
    ...deletes.map((d) => ({ ...m, upserts: [], deletes: d, more: true })),
  ].filter((p, i) => i === 0 || p.upserts.length + p.deletes.length > 0);
  parts[parts.length - 1]!.more = false;
  return parts;
}

/**
 * The protobuf bytes of each WatchRoutes message, encoded once per message object: a replica's streams yield the same
 * objects for the same change or snapshot (watch-routes.ts createWatchMessages and `pbMessagesOf` below), so a change
 * is encoded once for all of them and each stream writes the same bytes. Messages are never changed once yielded.
 */
const encodedMessages = new WeakMap<WatchRoutesResponse, Buffer>();
function encodeWatchMessage(m: WatchRoutesResponse): Buffer {
  let bytes = encodedMessages.get(m);
  if (!bytes) {
    const u8 = WatchRoutesResponse.encode(m).finish();
    bytes = Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
    if (!m.bookmark) encodedMessages.set(m, bytes); // a bookmark is one stream's own
  }
  return bytes;
}

/**
 * The routes service as a server mounts it: the generated definition, with WatchRoutes' messages encoded once per
 * replica (the wire format and every client are unchanged).
 */
export const routesServiceDefinition = {
  ...RoutesServiceService,
  watchRoutes: { ...RoutesServiceService.watchRoutes, responseSerialize: encodeWatchMessage },
} as const;

/** A stream message's protobuf messages (whole, or chunked), made once per message object for all streams. */
function createPbMessages() {
  const whole = new WeakMap<RoutesChange, WatchRoutesResponse[]>();
  const chunked = new WeakMap<RoutesChange, WatchRoutesResponse[]>();
  return (m: RoutesChange, acceptChunks: boolean): WatchRoutesResponse[] => {
    if (m.bookmark) return toPbWatchMessages(m, acceptChunks);
    const cache = acceptChunks ? chunked : whole;
    let pb = cache.get(m);
    if (!pb) {
      pb = toPbWatchMessages(m, acceptChunks);
      cache.set(m, pb);
    }
    return pb;
  };
}

export function createRoutesHandlers(deps: {
  nodes: NodesRepository;
  log: RouteLogRepository;
  notifier: Notifier;
  /**
   * flushMs: busy coalescing streams read at most this often while the replica sends more than flushBudget messages a
   * second (watch-routes.ts FlushClock); 0 reads on every wake-up.
   */
  options: { leaseMs: number; pollMs: number; bookmarkMs: number; flushMs?: number; flushBudget?: number };
}): Handlers<typeof RoutesServiceService> {
  const { nodes, options } = deps;
  /** One query per wake-up for all of this replica's streams at the same revision, not one per stream. */
  const log = shareLogReads(deps.log, deps.notifier);
  /** ... and each change and snapshot made into messages (and encoded: encodeWatchMessage) once for all of them. */
  const messages = createWatchMessages();
  const pbMessagesOf = createPbMessages();
  /** ... and, while the replica's streams send more than the budget allows, each busy one sent a message per tick. */
  const flush = createFlushClock(options.flushMs ?? FLUSH_MS, options.flushBudget ?? FLUSH_BUDGET);
  const nodeName = (name: string) => {
    if (!name) throw new DomainError('routes.invalid_node', 'invalid_argument', 'node name is empty');
    return name;
  };
  return {
    async registerNode(req) {
      return {
        node: toPbNode(await nodes.register(validateRegistration(req), options.leaseMs)),
        leaseMillis: options.leaseMs,
      };
    },
    async renewLease(req) {
      const n = await nodes.renew(nodeName(req.name), options.leaseMs);
      if (!n)
        throw new DomainError(
          'routes.node_not_found',
          'not_found',
          `node ${JSON.stringify(req.name)} is not registered: call RegisterNode`,
        );
      return { leaseMillis: options.leaseMs };
    },
    async deregisterNode(req) {
      return { deregistered: await nodes.deregister(nodeName(req.name)) };
    },
    async listNodes(req) {
      const size = pageSizeOf('routes.invalid_page_size', req.pageSize, 5000);
      const after = decodePageToken('routes.invalid_page_token', 'nodes', req.pageToken, 1)?.[0] ?? null;
      if (size === 0) {
        // A caller that does not page (it may predate paging) gets the whole list or an error, never a short list.
        const whole: ListNodesResponse = {
          nodes: (await nodes.list({ after, limit: null })).map(toPbNode),
          nextPageToken: '',
        };
        ensureFitsOneMessage(
          'routes.list_too_large',
          ListNodesResponse.encode(whole).finish().length,
          `the ${whole.nodes.length} nodes`,
        );
        return whole;
      }
      const page = await nodes.list({ after, limit: size + 1 });
      const more = page.length > size;
      const items = page.slice(0, size);
      return {
        nodes: items.map(toPbNode),
        nextPageToken: more ? encodePageToken('nodes', [items[items.length - 1]!.name]) : '',
      };
    },
    async listDepartedNodes(req) {
      const departed = await nodes.listDeparted(validateDepartedQuery(req.names));
      return { nodes: departed.map((d) => ({ name: d.name, departTime: d.departedAt })) };
    },
    async *watchRoutes(req, { signal }) {
      const stream = { log, notifier: deps.notifier, options, messages, flush };
      const coalesce = req.acceptCoalesced;
      for await (const m of watchRoutes(stream, req.sinceRevision, signal, { coalesce }))
        yield* pbMessagesOf(m, req.acceptChunks);
    },
  };
}
