import type { Server } from '@grpc/grpc-js';
import { STREAM_READ_WAIT_MS, type DatabaseHandle } from '../../lib/db/database.js';
import type { Notifier } from '../../lib/db/notifier.js';
import { createClient } from '../../lib/grpc/client.js';
import type { TransportSecurity } from '../../lib/grpc/credentials.js';
import { addService } from '../../lib/grpc/server.js';
import type { Logger } from '../../lib/logger.js';
import { IpamServiceService } from '../../gen/weft/ipam/v1/ipam.js';
import { startAffinityFollower } from './affinity-follower.js';
import { startLeaseSweeper } from './lease-sweeper.js';
import { createRoutesHandlers, routesServiceDefinition } from './rpc/routes.rpc.js';
import { createNodesRepository } from './store/nodes.repository.js';
import { createRouteLogRepository } from './store/route-log.repository.js';

/** Sessions for the watch streams' reads of the route log (shared reads: a few serve thousands of streams). */
export const WATCH_READ_SESSIONS = 4;

export interface RoutesServiceOptions {
  /** How long a registration lasts without renewal. */
  leaseMs: number;
  /** Idle WatchRoutes streams get a bookmark this often. */
  bookmarkMs: number;
  /** Watchers re-read the log at least this often without a NOTIFY. */
  pollMs: number;
  /** Busy coalescing watchers read the log at most this often (one message per period while changes keep coming). */
  flushMs: number;
  /** ... once the replica's streams send more than this many messages a second. */
  flushBudget: number;
  /** Compaction keeps at least this many newest changes ... */
  logKeep: number;
  /** ... and every change younger than this. */
  logMaxAgeSeconds: number;
}

/**
 * Wires the routes service (its migrations are applied before, as the owner): node store, revision log, the affinity follower (which watches IPAM over
 * gRPC; one replica at a time, elected), the lease sweeper (one replica at a time, elected), handlers. Stateless otherwise: any
 * replica serves any watcher from the log.
 */
export async function mountRoutesService(
  server: Server,
  deps: {
    database: DatabaseHandle;
    notifier: Notifier;
    logger: Logger;
    ipamAddress: string;
    ipamSecurity?: TransportSecurity;
    options: RoutesServiceOptions;
  },
) {
  const { options } = deps;
  const logger = deps.logger.child({ service: 'routes' });
  const nodes = createNodesRepository(deps.database.db);
  // The watchers' log reads (one per wake-up and revision for all of a replica's streams) on sessions of their own:
  // registrations, renewals and IPAM's writes filling the shared pool (a restart of thousands of agents) never make a
  // stream wait past the connect timeout for its read.
  const log = createRouteLogRepository(deps.database.ownPool(WATCH_READ_SESSIONS, { waitMs: STREAM_READ_WAIT_MS }), {
    leaseMs: options.leaseMs,
  });
  const ipam = createClient(IpamServiceService, deps.ipamAddress, { security: deps.ipamSecurity });
  // What one replica at a time does, each under its own leader lock and writing on that lock's session.
  const follower = startAffinityFollower({
    session: deps.database.session,
    leaseMs: options.leaseMs,
    ipam,
    logger,
  });
  const sweeper = startLeaseSweeper({
    session: deps.database.session,
    leaseMs: options.leaseMs,
    logger,
    intervalMs: Math.max(50, Math.min(1000, Math.floor(options.leaseMs / 4))),
    keep: options.logKeep,
    maxAgeSeconds: options.logMaxAgeSeconds,
  });
  addService(
    server,
    routesServiceDefinition,
    createRoutesHandlers({ nodes, log, notifier: deps.notifier, options }),
    logger,
  );
  return {
    /** Ends the leader terms (their sessions, so their locks: another replica takes over at once). */
    async stop() {
      await Promise.all([sweeper.stop(), follower.stop()]);
      ipam.close();
    },
  };
}
