/**
 * Which of a cluster's pod addresses to release because their pod is gone from the API server. Pure: the controller
 * gives the allocations it listed, what the API server holds, and when it first saw each allocation's pod missing.
 *
 * The container runtime's own CNI DEL normally releases a pod's address; this is the backstop for the cases where it
 * never comes (the node died, the pod was force-deleted, the runtime lost its state). An address is released only when
 * (a) its pod is missing, finished, or is another pod of the same name (another UID), (b) it was allocated more than
 * the grace ago (a pod the informer has not shown yet is not mistaken for a deleted one), and (c) the pod has been seen
 * missing for the grace (its runtime gets that long to DEL first). Released addresses then cool down in IPAM before
 * any other pod can get them.
 */

export interface PodAllocation {
  handle: string;
  node: string;
  podNamespace: string;
  podName: string;
  /** Empty when the runtime passed no K8S_POD_UID. */
  podUid: string;
  allocatedAt: Date;
}

export interface KnownPod {
  uid: string;
  /** False for a finished (Succeeded/Failed) pod. */
  mayHoldAddress: boolean;
}

export interface ReleasePlan {
  /** Handles to release now. */
  release: string[];
  /** Handle → when its pod was first seen missing, for those still waiting out the grace (the next pass's input). */
  missingSince: Map<string, number>;
}

export function planPodReleases(input: {
  allocations: PodAllocation[];
  /** The cluster's nodes: allocations on other nodes belong to another cluster or to no node of Kubernetes. */
  nodes: ReadonlySet<string>;
  pod: (namespace: string, name: string) => KnownPod | undefined;
  /** From the previous pass. */
  missingSince: ReadonlyMap<string, number>;
  /** When the controller saw the pod's delete event ("namespace/name"), if it did: the countdown starts there. */
  deletedAt?: (namespace: string, name: string) => number | undefined;
  now: number;
  graceMs: number;
}): ReleasePlan {
  const release: string[] = [];
  const missingSince = new Map<string, number>();
  for (const a of input.allocations) {
    if (!a.podName || !input.nodes.has(a.node)) continue;
    const p = input.pod(a.podNamespace, a.podName);
    const gone = !p || !p.mayHoldAddress || (a.podUid !== '' && p.uid !== '' && p.uid !== a.podUid);
    if (!gone) continue;
    const since = input.missingSince.get(a.handle) ?? input.deletedAt?.(a.podNamespace, a.podName) ?? input.now;
    if (input.now - a.allocatedAt.getTime() >= input.graceMs && input.now - since >= input.graceMs)
      release.push(a.handle);
    else missingSince.set(a.handle, since);
  }
  return { release, missingSince };
}
