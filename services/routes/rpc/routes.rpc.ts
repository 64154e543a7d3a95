import type { Handlers } from '../../../lib/grpc/server.js';
import { RoutesServiceService, type Node as PbNode } from '../../../gen/weft/routes/v1/routes.js';
import { validateRegistration, type NodeRecord } from '../domain/route-table.js';
import type { NodesRepository } from '../store/nodes.repository.js';
import type { RouteView } from '../route-view.js';
import { DomainError } from '../../../lib/errors.js';

const toPbNode = (n: NodeRecord): PbNode => ({ name: n.name, underlayAddress: n.underlayAddress, vtepMac: n.vtepMac, registerTime: n.registeredAt });

export function createRoutesHandlers({ nodes, view }: { nodes: NodesRepository; view: RouteView }): Handlers<typeof RoutesServiceService> {
  return {
    async registerNode(req) {
      return { node: toPbNode(await nodes.register(validateRegistration(req))) };
    },
    async deregisterNode(req) {
      if (!req.name) throw new DomainError('routes.invalid_node', 'invalid_argument', 'node name is empty');
      return { deregistered: await nodes.deregister(req.name) };
    },
    async listNodes() {
      return { nodes: (await nodes.list()).map(toPbNode) };
    },
    async *watchRoutes(_req, { signal }) {
      yield* view.subscribe(signal);
    },
  };
}
