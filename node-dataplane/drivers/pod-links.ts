import { EntryWaiting, type Driver, type KernelAccess } from '../kernel-table/dataplane.js';
import { createKernelTable } from '../kernel-table/table.js';
import type { Placement } from '../kernel-table/placement.js';
import { desiredPodLinks, type PodLinkEntry } from '../domain/pod-host.js';
import type { PodInputs } from './driver-module.js';

/**
 * The host ends of the node's pod veths (`weft` + 11 hex digits), keyed by name. The runtime's ADD makes a veth
 * (kernel/pod-network.ts); this driver keeps its settings (proxy ARP, the IPv6 gateway) and removes a pod veth that
 * belongs to no attachment (a crashed ADD's, one whose attachment was released). A desired veth that does not
 * exist is not an error: it waits (EntryWaiting) for the runtime's ADD, DEL or GC, and holds its host routes back.
 *
 * Never removed: a veth an ADD is making right now (`attaching`), or one wanted again by the time its removal comes
 * up (the attachments are asked afresh then, not the desired entries the apply began with). Without the attachments
 * (null: IPAM not asked yet, or unreachable since the start) the driver neither reads nor writes: nothing is torn
 * down because the control plane cannot be reached.
 */
export const POD_LINK = 'pod-link';

/** Independent of the other kinds; its host routes depend on it (pod-routes.ts). Made by pod-host.ts. */
export const podLinkPlacement: Placement = { kind: POD_LINK };

export function createPodLinkDriver(access: KernelAccess<PodLinkEntry>, pods: PodInputs): Driver<PodLinkEntry> {
  const table = createKernelTable<PodLinkEntry>(
    (a, b) =>
      a.name === b.name && a.proxyArp === b.proxyArp && a.proxyDelay === b.proxyDelay && a.gateway6 === b.gateway6,
  );
  return {
    kind: POD_LINK,
    table,
    access: {
      read: () => access.read(),
      write: (key, value, held) => access.write(key, value, held),
      async remove(key, held) {
        if (pods.attaching(key)) throw new EntryWaiting(`an ADD is making ${key} right now`);
        if (pods.attachments()?.has(key)) throw new EntryWaiting(`${key} belongs to an attachment again`);
        await access.remove(key, held);
      },
    },
    desired: () => {
      const attachments = pods.attachments();
      return attachments && desiredPodLinks(attachments);
    },
  };
}
