import { DEFAULT_HOST_PATHS, type HostPaths } from '../kernel/host-paths.js';
import { deleteLink } from '../kernel/links.js';
import {
  attachPod,
  containerAttachments,
  detachPod,
  hostIfnameFor,
  hostLinkExists,
  listVeths,
  observeAttachment,
  POD_GATEWAY,
  POD_GATEWAY6,
} from '../kernel/pod-network.js';
import type { AttachmentRecords, PodNetwork } from './ports.js';

/** The endpoint's kernel ports over kernel/pod-network.ts, on the host's sysctls and sysfs at `paths`. */
export function createPodKernel(paths: HostPaths = DEFAULT_HOST_PATHS): {
  pods: PodNetwork;
  records: AttachmentRecords;
} {
  return {
    pods: {
      hostIfname: hostIfnameFor,
      gateway: POD_GATEWAY,
      gateway6: POD_GATEWAY6,
      hostLinkExists: (containerId, ifname) => hostLinkExists(containerId, ifname, paths),
      attach: (opts) => attachPod({ ...opts, paths }),
      detach: (opts) => detachPod({ ...opts, paths }),
      observe: (opts) => observeAttachment({ ...opts, paths }),
      deleteLink: (name) => deleteLink(name),
    },
    records: {
      ofContainer: (containerId) => containerAttachments(containerId, paths),
      hostLinks: () => listVeths(),
    },
  };
}
