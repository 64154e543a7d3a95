import type { Server } from '@grpc/grpc-js';
import type { DatabaseHandle } from '../../lib/db/database.js';
import { applyMigrations } from '../../lib/db/database.js';
import type { Notifier } from '../../lib/db/notifier.js';
import { addService } from '../../lib/grpc/server.js';
import type { Logger } from '../../lib/logger.js';
import * as ipamMessages from '../../gen/weft/ipam/v1/ipam.js';
import { IpamServiceService } from '../../gen/weft/ipam/v1/ipam.js';
import { createJsonGateway } from '../../lib/http/json-gateway.js';
import { createIpamHandlers } from './rpc/ipam.rpc.js';
import { createIpamRepository } from './store/ipam.repository.js';

/** Wires the IPAM service onto a server: migrations, repository, handlers. */
export async function mountIpamService(server: Server, deps: { database: DatabaseHandle; notifier: Notifier; logger: Logger }) {
  await applyMigrations(deps.database, 'ipam');
  const repo = createIpamRepository(deps.database.db, deps.database.pool);
  const handlers = createIpamHandlers({ repo, notifier: deps.notifier });
  const logger = deps.logger.child({ service: 'ipam' });
  addService(server, IpamServiceService, handlers, logger);
  // The same handlers over HTTP with JSON.
  const http = createJsonGateway(IpamServiceService, handlers, ipamMessages, logger);
  return { repo, http };
}
