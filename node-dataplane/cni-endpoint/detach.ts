import { DomainError } from '../../lib/errors.js';
import { agentErrorFromIpam } from './ipam-errors.js';
import { IpamCallError } from './ports.js';
import { afterAnswer, type Shared } from './use-case-deps.js';

/** A detach the RPC adapter has checked (rpc.ts). */
export interface DetachParams {
  containerId: string;
  ifname: string;
  /** Empty when the runtime no longer knows it. */
  netns: string;
}

/**
 * Detach: wait for an ADD of the same interface still running -> fence the attempts of earlier failed ADDs -> remove
 * the interface and release the handle at once (both treat "already gone" as done) -> wait (bounded) for the policy
 * pass that removes the pod's rules -> answer; the pod report follows the answer.
 */
export function createDetach({ deps, running, policyPassAfterRemoval, reportContainers }: Shared) {
  /**
   * A release IPAM could not take because it cannot be reached: recorded with the handle's unfenced attempts and
   * retried in the background (../pending-releases.ts), so the DEL succeeds. Any other failure, or no record to keep
   * it in, fails the DEL as IPAM's error.
   */
  const deferRelease = async (handle: string, err: unknown): Promise<{ released: boolean; address: string }> => {
    const unreachable =
      (err instanceof DomainError && err.code === 'agent.ipam_unavailable') ||
      (err instanceof IpamCallError && err.kind === 'unavailable');
    if (!deps.pendingReleases || !unreachable) return agentErrorFromIpam(err, '', deps.ipam.target);
    await deps.pendingReleases.add(handle, running.fences.unfenced(handle));
    running.fences.forget(handle);
    deps.logger.warn(
      'IPAM cannot be reached: the pod is detached, its release recorded and retried until IPAM takes it',
      {
        handle,
        err: (err as Error).message,
      },
    );
    return { released: false, address: '' };
  };
  return async function detach(req: DetachParams): Promise<void> {
    const handle = `${req.containerId}/${req.ifname}`;
    // An ADD of this handle still running (the runtime gave up on it and cleans up) finishes first, so that what it
    // made is what this DEL removes. It ends within its own deadlines (IPAM's Allocate: 20 s).
    const adding = running.addsRunning.get(handle);
    if (adding) {
      deps.logger.info('DEL waits for the ADD of the same interface that is still running', { handle });
      await adding;
    }
    // The veth and the address go at once: deleting a veth returns only after the kernel's RCU grace periods
    // (about 20 ms here), longer than IPAM's Release. An Attach given the address meanwhile waits for the deletion
    // (linkDeletions), so an address is never on two veths. The Release is asked first: the deletion's child
    // process is spawned with a fork, which holds the event loop for a moment.
    const t0 = performance.now();
    // Attempts of failed ADDs not yet fenced are fenced first: one of them may still commit after this release.
    const attempts = running.fences.unfenced(handle);
    const fenced =
      attempts.length === 0
        ? Promise.resolve(true)
        : Promise.all(attempts.map((a) => running.fences.fence(handle, a))).then((oks) => oks.every(Boolean));
    const release = fenced
      .then((ok) => {
        if (!ok)
          throw new DomainError(
            'agent.ipam_unavailable',
            'unavailable',
            `cannot fence the allocation attempts of an earlier failed ADD of ${handle} (IPAM unreachable); try DEL again later`,
          );
        return deps.ipam.release(handle);
      })
      .then(
        (r) => {
          deps.onDetachPhase?.('release', performance.now() - t0);
          return r;
        },
        (err) => deferRelease(handle, err),
      );
    deps.attachments?.detached(deps.pods.hostIfname(req.containerId, req.ifname));
    const link = deps.pods
      .detach({ containerId: req.containerId, ifname: req.ifname, nsPath: req.netns })
      .then(() => deps.onDetachPhase?.('link', performance.now() - t0));
    running.linkDeletions.add(link);
    void link.catch(() => {}).finally(() => running.linkDeletions.delete(link));
    let removed = false;
    try {
      const [, r] = await Promise.all([link, release]);
      deps.logger.info('pod detached', { handle, released: r.released, address: r.address });
      // The pod's chain and its jumps go before DEL answers: the pass starts once the veth is gone.
      removed = true;
      const t1 = performance.now();
      if (await policyPassAfterRemoval(handle)) deps.onDetachPhase?.('policy', performance.now() - t1);
      // The container's other interfaces keep it attached, with the addresses they hold.
      const others = deps.records.ofContainer(req.containerId).count;
      afterAnswer(() =>
        others > 0 ? void reportContainers([req.containerId]) : deps.reports?.detached(req.containerId),
      );
    } finally {
      // After a failure the policy pass still follows whatever of the veth is left.
      if (!removed)
        void Promise.allSettled([link, release]).then(() => afterAnswer(() => void deps.policy.podsChanged?.()));
    }
  };
}
