import type { Handlers } from '../../../lib/grpc/server.js';
import type { Notifier } from '../../../lib/db/notifier.js';
import { RoutesServiceService, type Node as PbNode } from '../../../gen/weft/routes/v1/routes.js';
import { validateDepartedQuery, validateRegistration, type NodeRecord } from '../domain/route-table.js';
import type { NodesRepository } from '../store/nodes.repository.js';
import type { RouteLogRepository } from '../store/route-log.repository.js';
import { shareLogReads, watchRoutes } from '../watch-routes.js';
import { DomainError } from '../../../lib/errors.js';

const toPbNode = (n: NodeRecord): PbNode => ({ name: n.name, underlayAddress: n.underlayAddress, vtepMac: n.vtepMac, registerTime: n.registeredAt, leaseExpireTime: n.leaseExpiresAt });

export function createRoutesHandlers(deps: {
  nodes: NodesRepository;
  log: RouteLogRepository;
  notifier: Notifier;
  options: { leaseMs: number; pollMs: number; bookmarkMs: number };
}): Handlers<typeof RoutesServiceService> {
  const { nodes, options } = deps;
  /** One query per wake-up for all of this replica's streams at the same revision, not one per stream. */
  const log = shareLogReads(deps.log, deps.notifier);
  const nodeName = (name: string) => {
    if (!name) throw new DomainError('routes.invalid_node', 'invalid_argument', 'node name is empty');
    return name;
  };
  return {
    async registerNode(req) {
      return { node: toPbNode(await nodes.register(validateRegistration(req), options.leaseMs)), leaseMillis: options.leaseMs };
    },
    async renewLease(req) {
      const n = await nodes.renew(nodeName(req.name), options.leaseMs);
      if (!n) throw new DomainError('routes.node_not_found', 'not_found', `node ${JSON.stringify(req.name)} is not registered: call RegisterNode`);
      return { leaseMillis: options.leaseMs };
    },
    async deregisterNode(req) {
      return { deregistered: await nodes.deregister(nodeName(req.name)) };
    },
    async listNodes() {
      return { nodes: (await nodes.list()).map(toPbNode) };
    },
    async listDepartedNodes(req) {
      const departed = await nodes.listDeparted(validateDepartedQuery(req.names));
      return { nodes: departed.map((d) => ({ name: d.name, departTime: d.departedAt })) };
    },
    async *watchRoutes(req, { signal }) {
      yield* watchRoutes({ log, notifier: deps.notifier, options }, req.sinceRevision, signal);
    },
  };
}
