import type { Server } from '@grpc/grpc-js';
import { applyMigrations, type DatabaseHandle } from '../../lib/db/database.js';
import { addService } from '../../lib/grpc/server.js';
import type { Logger } from '../../lib/logger.js';
import { PolicyServiceService } from '../../gen/weft/policy/v1/policy.js';
import { createPolicyHandlers } from './rpc/policy.rpc.js';
import { createPolicyRepository } from './store/policy.repository.js';

/** Wires the policy service: migrations, store, handlers. Stateless: any replica answers from the database. */
export async function mountPolicyService(server: Server, deps: { database: DatabaseHandle; logger: Logger }) {
  await applyMigrations(deps.database, 'policy');
  const repo = createPolicyRepository(deps.database.db);
  addService(server, PolicyServiceService, createPolicyHandlers({ repo }), deps.logger.child({ service: 'policy' }));
  return { repo };
}
