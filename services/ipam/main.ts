import type { Server } from '@grpc/grpc-js';
import type { DatabaseHandle } from '../../lib/db/database.js';
import type { Notifier } from '../../lib/db/notifier.js';
import { addService, callObserverOf } from '../../lib/grpc/server.js';
import type { CredentialRevocations, Identity } from '../../lib/auth/identity.js';
import type { CallLimiter } from '../../lib/auth/limits.js';
import type { Logger } from '../../lib/logger.js';
import * as ipamMessages from '../../gen/weft/ipam/v1/ipam.js';
import { IpamServiceService } from '../../gen/weft/ipam/v1/ipam.js';
import { createJsonGateway } from '../../lib/http/json-gateway.js';
import { createClient } from '../../lib/grpc/client.js';
import type { TransportSecurity } from '../../lib/grpc/credentials.js';
import { RoutesServiceService } from '../../gen/weft/routes/v1/routes.js';
import { startIpamSweeper } from './sweeper.js';
import { createPrefixesRepository } from './store/prefixes.repository.js';
import { createIpamHandlers } from './rpc/ipam.rpc.js';
import { createPostgresIpamStore } from './store/postgres.store.js';
import { createIpamUseCases } from './use-cases/ipam.use-cases.js';
import { FAST_IN_FLIGHT } from './store/fast-allocate.js';

/** Wires the IPAM service onto a server (its migrations are applied before, as the owner): store, use cases, handlers. */
export interface IpamHousekeeping {
  sweepSeconds: number;
  blockGraceSeconds: number;
  nodeGoneGraceSeconds: number;
  /** How long a fenced allocation attempt is remembered. */
  attemptRetentionSeconds: number;
  /** Where the routes service answers (to learn which nodes exist). */
  routesAddress: string;
  /** How to reach it (the control plane's own certificate). */
  routesSecurity?: TransportSecurity;
}

export async function mountIpamService(
  server: Server,
  deps: {
    database: DatabaseHandle;
    notifier: Notifier;
    logger: Logger;
    housekeeping: IpamHousekeeping;
    /** Checks the HTTP gateway's bearer tokens (services/auth); absent: every HTTP call is refused. */
    tokens?: (secret: string) => Promise<Identity>;
    /** Live allocations a node identity may hold (WEFT_LIMIT_NODE_ALLOCATIONS); absent or 0: no limit. */
    limits?: { nodeAllocations: number };
    /** The gRPC server's limits per identity, applied to the HTTP gateway's calls too (one budget per identity). */
    callLimiter?: CallLimiter;
    /** Revoked tokens: the HTTP gateway ends a stream whose token is revoked. */
    revocations?: CredentialRevocations;
  },
) {
  const logger = deps.logger.child({ service: 'ipam' });
  // The group-commit statements (at most FAST_IN_FLIGHT at once, plus one-by-one retries) on their own sessions.
  const { store, reports } = createPostgresIpamStore(deps.database.db, deps.database.preparedPool(FAST_IN_FLIGHT + 1));
  const repo = createIpamUseCases(store, reports, {
    onBackgroundError: (what, err) => logger.warn(`${what} failed`, { error: (err as Error).message }),
  });
  const handlers = createIpamHandlers({
    repo,
    prefixes: createPrefixesRepository(deps.database.db),
    notifier: deps.notifier,
    maxNodeAllocations: deps.limits?.nodeAllocations ?? 0,
  });
  // Who may release a handle: the node (or a token's pools) holding it.
  const lookups = { holderOfHandle: (handle: string) => repo.holderOfHandle(handle) };
  addService(server, IpamServiceService, handlers, logger, { lookups });
  // The same handlers over HTTP with JSON, authorized the same way (bearer tokens), audited by the same observer.
  const http = createJsonGateway(IpamServiceService, handlers, ipamMessages, logger, {
    access: {
      tokens: deps.tokens,
      lookups,
      observe: callObserverOf(server),
      limits: deps.callLimiter,
      revocations: deps.revocations,
    },
  });
  const routes = createClient(RoutesServiceService, deps.housekeeping.routesAddress, {
    security: deps.housekeeping.routesSecurity,
  });
  // One replica sweeps (elected; its writes on its lock's session): services/ipam/sweeper.ts.
  const sweeper = startIpamSweeper({
    session: deps.database.session,
    routes,
    ...deps.housekeeping,
    logger: logger.child({ task: 'sweeper' }),
  });
  return {
    repo,
    http,
    sweeper,
    async stop() {
      await sweeper.stop();
      routes.close();
    },
  };
}
