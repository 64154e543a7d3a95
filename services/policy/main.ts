import type { Server } from '@grpc/grpc-js';
import type { DatabaseHandle } from '../../lib/db/database.js';
import { addService } from '../../lib/grpc/server.js';
import type { Notifier } from '../../lib/db/notifier.js';
import type { Logger } from '../../lib/logger.js';
import { PolicyServiceService } from '../../gen/weft/policy/v1/policy.js';
import { createPolicyHandlers } from './rpc/policy.rpc.js';
import { createPolicyRepository } from './store/policy.repository.js';
import type { NodePolicyWatchOptions } from './watch-node-policy.js';

/**
 * Wires the policy service (its migrations are applied before, as the owner: cli/control-plane.ts): store, handlers. Stateless: any replica answers from the database and serves
 * any node's WatchNodePolicy (woken by NOTIFY policy_changes; the notifier must LISTEN on POLICY_CHANNEL).
 */
export async function mountPolicyService(
  server: Server,
  deps: { database: DatabaseHandle; notifier: Notifier; logger: Logger; options: NodePolicyWatchOptions },
) {
  const repo = createPolicyRepository(deps.database.db);
  // Who may detach a sandbox: the node it is attached on.
  addService(
    server,
    PolicyServiceService,
    createPolicyHandlers({
      repo,
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
