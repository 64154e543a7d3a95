import { EntryWaiting, type Driver, type KernelAccess } from '../kernel-table/dataplane.js';
import { createKernelTable } from '../kernel-table/table.js';
import type { Placement } from '../kernel-table/placement.js';
import { desiredPodRoutes, podHostCidr, type PodRouteEntry } from '../domain/pod-host.js';
import type { PodInputs } from './driver-module.js';
import { POD_LINK } from './pod-links.js';

/**
 * Host routes to the node's pods (`<address>/32 dev <host veth> scope link proto 87`, `/128` for IPv6), keyed by
 * CIDR. A route needs its pod veth in place (its pod-link entry). Like the veths, a route is not removed while an
 * ADD is making its veth or while an attachment wants it again, and nothing is read or written without the
 * attachments.
 */
export const POD_ROUTE = 'pod-route';

/**
 * A route leaves by its pod veth: written after the veth, removed before it; its removals go before its writes. Made
 * by pod-host.ts.
 */
export const podRoutePlacement: Placement = { kind: POD_ROUTE, dependsOn: [POD_LINK], deletes: 'first' };

export function createPodRouteDriver(access: KernelAccess<PodRouteEntry>, pods: PodInputs): Driver<PodRouteEntry> {
  const table = createKernelTable<PodRouteEntry>((a, b) => a.cidr === b.cidr && a.dev === b.dev);
  const wantedAgain = (cidr: string, dev: string) =>
    pods
      .attachments()
      ?.get(dev)
      ?.addresses.some((a) => {
        try {
          return podHostCidr(a) === cidr;
        } catch {
          return false;
        }
      }) === true;
  return {
    kind: POD_ROUTE,
    table,
    access: {
      read: () => access.read(),
      write: (key, value, held) => access.write(key, value, held),
      async remove(key, held) {
        if (pods.attaching(held.dev)) throw new EntryWaiting(`an ADD is making ${held.dev} right now`);
        if (wantedAgain(key, held.dev)) throw new EntryWaiting(`${key} on ${held.dev} belongs to an attachment again`);
        await access.remove(key, held);
      },
    },
    dependsOn: (_key, route) => [`${POD_LINK}/${route.dev}`],
    desired: () => {
      const attachments = pods.attachments();
      return attachments && desiredPodRoutes(attachments);
    },
  };
}
