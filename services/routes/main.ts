import type { Server } from '@grpc/grpc-js';
import { applyMigrations, type DatabaseHandle } from '../../lib/db/database.js';
import type { Notifier } from '../../lib/db/notifier.js';
import { createClient } from '../../lib/grpc/client.js';
import { addService } from '../../lib/grpc/server.js';
import type { Logger } from '../../lib/logger.js';
import { IpamServiceService } from '../../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService } from '../../gen/weft/routes/v1/routes.js';
import { createRouteView } from './route-view.js';
import { createRoutesHandlers } from './rpc/routes.rpc.js';
import { createNodesRepository } from './store/nodes.repository.js';

/** Wires the routes service: migrations, node store, the route view (which watches IPAM over gRPC), handlers. */
export async function mountRoutesService(server: Server, deps: { database: DatabaseHandle; notifier: Notifier; logger: Logger; ipamAddress: string }) {
  await applyMigrations(deps.database, 'routes');
  const logger = deps.logger.child({ service: 'routes' });
  const nodes = createNodesRepository(deps.database.db);
  const ipam = createClient(IpamServiceService, deps.ipamAddress);
  const view = createRouteView({ nodes, notifier: deps.notifier, ipam, logger });
  addService(server, RoutesServiceService, createRoutesHandlers({ nodes, view }), logger);
  return {
    stop() {
      view.stop();
      ipam.close();
    },
  };
}
