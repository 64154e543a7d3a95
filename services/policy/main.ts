import type { Server } from '@grpc/grpc-js';
import { STREAM_READ_WAIT_MS, type DatabaseHandle } from '../../lib/db/database.js';
import { addService } from '../../lib/grpc/server.js';
import type { Notifier } from '../../lib/db/notifier.js';
import type { Logger } from '../../lib/logger.js';
import { PolicyServiceService } from '../../gen/weft/policy/v1/policy.js';
import { createPolicyHandlers } from './rpc/policy.rpc.js';
import { createPolicyRepository } from './store/policy.repository.js';
import type { NodePolicyWatchOptions } from './watch-node-policy.js';

/** Sessions for the watch streams' shared view reads (one read at a time per replica, and one spare). */
export const VIEW_READ_SESSIONS = 2;

/**
 * Wires the policy service (its migrations are applied before, as the owner: cli/control-plane.ts): store, handlers. Stateless: any replica answers from the database and serves
 * any node's WatchNodePolicy (woken by NOTIFY policy_changes; the notifier must LISTEN on POLICY_CHANNEL).
 */
export async function mountPolicyService(
  server: Server,
  deps: { database: DatabaseHandle; notifier: Notifier; logger: Logger; options: NodePolicyWatchOptions },
) {
  const repo = createPolicyRepository(deps.database.db);
  // The watch streams' one shared view is read on sessions of its own: after a restart thousands of agents' renewals
  // fill the shared pool, and every stream waiting for that one read failed when it waited past the connect timeout.
  const viewsRepo = createPolicyRepository(deps.database.ownPool(VIEW_READ_SESSIONS, { waitMs: STREAM_READ_WAIT_MS }));
  // Who may detach a sandbox: the node it is attached on.
  addService(
    server,
    PolicyServiceService,
    createPolicyHandlers({
      repo,
      viewsRepo,
      notifier: deps.notifier,
      watch: deps.options,
      logger: deps.logger.child({ service: 'policy' }),
    }),
    deps.logger.child({ service: 'policy' }),
    {
      lookups: { nodeOfContainer: (containerId) => repo.nodeOfContainer(containerId) },
    },
  );
  return { repo };
}
