import type { Notifier } from '../../lib/db/notifier.js';
import type { PromiseClient } from '../../lib/grpc/client.js';
import type { Logger } from '../../lib/logger.js';
import type { IpamServiceService } from '../../gen/weft/ipam/v1/ipam.js';
import { buildRouteTable, diffRouteTables, type NodeRecord, type NodeRoutes, type RoutesChange } from './domain/route-table.js';
import { NODES_CHANNEL, type NodesRepository } from './store/nodes.repository.js';

/**
 * This replica's view of the route table, built from two sources: the nodes table (woken by NOTIFY, re-read on a
 * timer) and IPAM's block affinities (a gRPC watch on the IPAM service). Each change to the merged table raises
 * the revision and is published to every WatchRoutes stream.
 */
export interface RouteView {
  /** The current table and its revision, then every later change, until signal aborts. */
  subscribe(signal: AbortSignal): AsyncIterable<RoutesChange>;
  /** Resolves once both sources have delivered a complete snapshot. */
  ready: Promise<void>;
  stop(): void;
}

export function createRouteView(deps: {
  nodes: NodesRepository;
  notifier: Notifier;
  ipam: PromiseClient<typeof IpamServiceService>;
  logger: Logger;
  pollMs?: number;
}): RouteView {
  const { nodes, notifier, ipam, logger } = deps;
  const pollMs = deps.pollMs ?? 2000;
  const stopper = new AbortController();
  let nodeList: NodeRecord[] | null = null;
  let affinities: Map<string, string> | null = null;
  let table = new Map<string, NodeRoutes>();
  let revision = 0;
  const subscribers = new Set<(c: RoutesChange) => void>();
  let markReady!: () => void;
  const ready = new Promise<void>((r) => (markReady = r));

  function recompute(): void {
    if (!nodeList || !affinities) return;
    const next = buildRouteTable(nodeList, affinities);
    const { upserts, deletes } = diffRouteTables(table, next);
    table = next;
    if (upserts.length === 0 && deletes.length === 0 && revision > 0) return;
    revision++;
    markReady();
    const change: RoutesChange = { revision, reset: false, upserts, deletes };
    for (const s of subscribers) s(change);
  }

  async function followNodes(): Promise<void> {
    while (!stopper.signal.aborted) {
      try {
        nodeList = await nodes.list();
        recompute();
      } catch (err) {
        logger.warn('cannot read nodes; retrying', { err: (err as Error).message });
      }
      await notifier.wait(NODES_CHANNEL, pollMs, stopper.signal);
    }
  }

  async function followAffinities(): Promise<void> {
    while (!stopper.signal.aborted) {
      try {
        for await (const ch of ipam.watchBlockAffinities({}, { signal: stopper.signal })) {
          const next = ch.reset ? new Map<string, string>() : new Map(affinities ?? []);
          for (const u of ch.upserts) next.set(u.cidr, u.node);
          for (const d of ch.deletes) next.delete(d);
          affinities = next;
          recompute();
        }
      } catch (err) {
        if (stopper.signal.aborted) return;
        logger.warn('IPAM affinity watch broke; reconnecting', { err: (err as Error).message });
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  void followNodes();
  void followAffinities();

  return {
    ready,
    stop: () => stopper.abort(),
    async *subscribe(signal) {
      await ready;
      const queue: RoutesChange[] = [];
      let wake: (() => void) | null = null;
      const push = (c: RoutesChange) => {
        queue.push(c);
        wake?.();
      };
      subscribers.add(push);
      const onAbort = () => wake?.();
      signal.addEventListener('abort', onAbort);
      try {
        yield { revision, reset: true, upserts: [...table.values()], deletes: [] };
        while (!signal.aborted) {
          if (queue.length === 0) await new Promise<void>((r) => (wake = r));
          wake = null;
          while (queue.length > 0 && !signal.aborted) yield queue.shift()!;
        }
      } finally {
        subscribers.delete(push);
        signal.removeEventListener('abort', onAbort);
      }
    },
  };
}
