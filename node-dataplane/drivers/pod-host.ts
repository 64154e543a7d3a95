import { createPodHostAccess } from '../kernel/pod-host.js';
import type { DriverModule } from './driver-module.js';
import { createPodLinkDriver, podLinkPlacement } from './pod-links.js';
import { createPodRouteDriver, podRoutePlacement } from './pod-routes.js';

/**
 * The host ends of the node's pod veths and the host routes to the pods: two drivers on one kernel access (one
 * rtnetlink socket, kernel/pod-host.ts), each carrying its manager over the node's attachments.
 */
export const podHostModule: DriverModule = {
  placements: [podRoutePlacement, podLinkPlacement],
  create({ routeProtocol, hostPaths, logger, pods }) {
    const access = createPodHostAccess({ routeProtocol, paths: hostPaths, logger });
    return {
      drivers: [createPodLinkDriver(access.links, pods), createPodRouteDriver(access.routes, pods)],
      close: () => access.close(),
    };
  },
};
