import { forEachBounded } from '../../lib/bounded-concurrency.js';
import { planGarbageCollection } from '../domain/garbage-collection.js';
import type { NodeAllocation } from './ports.js';
import type { Shared } from './use-case-deps.js';

/** A GC the RPC adapter has checked (rpc.ts): every valid attachment has a container id and an interface name. */
export interface GarbageCollectParams {
  network: string;
  validAttachments: readonly { containerId: string; ifname: string }[];
}

export interface GarbageCollectResult {
  released: { handle: string; address: string }[];
  removedInterfaces: string[];
  /** What could not be done, each saying why; the rest was done. */
  failures: string[];
}

/** How many interface removals, and then how many releases, run at once. */
const GC_CONCURRENCY = 8;

/**
 * GarbageCollect: list IPAM's allocations of this node and the node's veths at once, plan what belongs to no valid
 * or running attachment (domain/garbage-collection.ts), remove those interfaces, then release those handles; a
 * failed step is a failure in the answer, not an error. Then the policy pass (when an interface went) and the
 * reports of the containers that lost an attachment.
 */
export function createGarbageCollect({
  deps,
  running,
  nodeAllocations,
  policyPassAfterRemoval,
  reportContainers,
}: Shared) {
  return async function garbageCollect(req: GarbageCollectParams): Promise<GarbageCollectResult> {
    const valid = req.validAttachments;
    const failures: string[] = [];
    let vethsListed = true;
    let allocationsListed = true;
    const [allocations, hostLinks] = await Promise.all([
      nodeAllocations().catch((err: Error): NodeAllocation[] => {
        allocationsListed = false;
        failures.push(
          `listing node ${deps.node}'s allocations failed, so no address was released (nor any interface that does not record its network): ${err.message}`,
        );
        return [];
      }),
      deps.records.hostLinks().catch((err: Error) => {
        vethsListed = false;
        failures.push(
          `listing the node's veth devices failed, so no interface was removed or address released: ${err.message}`,
        );
        return [];
      }),
    ]);
    // Without the veths, which network an attachment belongs to is unknown: nothing is released.
    const plan = planGarbageCollection({
      network: req.network,
      hostIfnameOf: (handle) => {
        const slash = handle.indexOf('/');
        return deps.pods.hostIfname(handle.slice(0, slash), handle.slice(slash + 1));
      },
      validHandles: new Set(valid.map((a) => `${a.containerId}/${a.ifname}`)),
      validHostIfnames: new Set(valid.map((a) => deps.pods.hostIfname(a.containerId, a.ifname))),
      inFlightHandles: new Set(running.attaching.keys()),
      inFlightHostIfnames: new Set(running.attaching.values()),
      allocations: vethsListed
        ? allocations.map((a) => ({ handle: a.handle, containerId: a.containerId, address: a.address }))
        : [],
      allocationsKnown: allocationsListed,
      hostLinks,
    });
    const removedInterfaces: string[] = [];
    await forEachBounded(plan.removeLinks, GC_CONCURRENCY, async (name) => {
      if ([...running.attaching.values()].includes(name)) return;
      try {
        await deps.pods.deleteLink(name);
        deps.attachments?.detached(name);
        removedInterfaces.push(name);
      } catch (err) {
        failures.push(`removing interface ${name} failed: ${(err as Error).message}`);
      }
    });
    const released: { handle: string; address: string }[] = [];
    // A dual-stack handle has two rows; one release (by handle) frees both.
    const releasing = new Set<string>();
    await forEachBounded(plan.release, GC_CONCURRENCY, async (a) => {
      if (running.attaching.has(a.handle) || releasing.has(a.handle)) return;
      releasing.add(a.handle);
      try {
        const r = await deps.ipam.release(a.handle);
        deps.attachments?.detached(deps.pods.hostIfname(a.containerId, a.handle.slice(a.containerId.length + 1)));
        if (r.released) released.push({ handle: a.handle, address: r.address });
      } catch (err) {
        const e = err as { details?: string; message?: string };
        failures.push(`releasing ${a.address} (handle ${a.handle}) failed: ${e.details || e.message}`);
      }
    });
    if (removedInterfaces.length > 0) await policyPassAfterRemoval('garbage collection');
    // Each container that lost an attachment is reported with what it still holds (detached when nothing).
    if (releasing.size > 0)
      void reportContainers([
        ...new Set(plan.release.filter((a) => releasing.has(a.handle)).map((a) => a.containerId)),
      ]);
    deps.logger.info('garbage collected', {
      network: req.network,
      valid: valid.length,
      released: released.length,
      removedInterfaces: removedInterfaces.length,
      failures,
    });
    return { released, removedInterfaces: removedInterfaces.sort(), failures };
  };
}
