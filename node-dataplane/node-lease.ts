import { status } from '@grpc/grpc-js';
import { sleep } from '../lib/backoff.js';
import type { PromiseClient } from '../lib/grpc/client.js';
import type { Logger } from '../lib/logger.js';
import type { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';

/**
 * Keeps the node's registration alive: RenewLease every third of the lease the control plane granted. A failed
 * renewal is retried after half a second, then less and less often while what is left of the lease allows
 * (`createRenewalRetry`), so a lease survives a lost renewal and a short control-plane outage. A renewal waits up to its 5 s deadline for a connection (`waitForReady`): while the control
 * plane restarts, it is taken as soon as the control plane serves, instead of failing every second with the old
 * connection error. A node whose lease ran out comes back with its next renewal. NOT_FOUND means the node is not
 * registered (deregistered while this agent and its pods run, or a control plane that lost it): the agent registers it
 * again at once, with its current registration (underlay address and VTEP MAC), so that it is back in every node's
 * routes and IPAM never takes it for gone and releases its running pods' addresses. To remove a node for good, stop
 * its agent first.
 */
export function keepNodeLease(deps: {
  routes: PromiseClient<typeof RoutesServiceService>;
  /** The node's current registration (main keeps it up to date when the underlay moves). */
  registration: { name: string; underlayAddress: string; vtepMac: string };
  leaseMs: number;
  logger: Logger;
  signal: AbortSignal;
}): void {
  let leaseMs = deps.leaseMs > 0 ? deps.leaseMs : 20_000;
  const { routes, logger, signal } = deps;
  void (async () => {
    let delay = leaseMs / 3;
    const retry = createRenewalRetry();
    retry.renewed(leaseMs);
    while (!signal.aborted) {
      await sleep(delay, signal);
      if (signal.aborted) return;
      try {
        leaseMs =
          (await routes.renewLease({ name: deps.registration.name }, { timeoutMs: 5000, waitForReady: true }))
            .leaseMillis || leaseMs;
        delay = leaseMs / 3;
        retry.renewed(leaseMs);
      } catch (caught) {
        let err = caught;
        if ((err as { code?: number }).code === status.NOT_FOUND) {
          logger.warn('this node is not registered (deregistered while it runs?); registering it again', {
            underlay: deps.registration.underlayAddress,
          });
          try {
            leaseMs =
              (await routes.registerNode(deps.registration, { timeoutMs: 5000, waitForReady: true })).leaseMillis ||
              leaseMs;
            logger.info('registered again', {
              underlay: deps.registration.underlayAddress,
              vtepMac: deps.registration.vtepMac,
              leaseMs,
            });
            delay = leaseMs / 3;
            retry.renewed(leaseMs);
            continue;
          } catch (regErr) {
            err = regErr;
          }
        }
        logger.warn('cannot renew the node lease; retrying', { err: (err as Error).message });
        delay = retry.nextDelay();
      }
    }
  })();
}

/** The longest wait between two tries of a failed renewal. */
const RETRY_CAP_MS = 30_000;

/**
 * When to try a failed renewal again: half a second after the first failure, doubling after each (equal jitter), but
 * never so late that fewer than three tries fit in what is left of the lease, and never sooner than half a second.
 * A lost renewal or a short outage is made good at once; while an overloaded control plane answers late (thousands of
 * agents reconnecting after its restart), each agent's tries thin out instead of adding one renewal per agent every
 * second to the load that makes them late (the control plane keeps leases through its own outages: routes
 * `resumeLeases`).
 */
export function createRenewalRetry(now: () => number = () => performance.now(), random: () => number = Math.random) {
  let failures = 0;
  let expiresAt = -Infinity;
  return {
    /** A renewal or registration was taken: the lease runs `leaseMs` from now. */
    renewed(leaseMs: number) {
      failures = 0;
      expiresAt = now() + leaseMs;
    },
    /** A renewal failed: how long to wait before the next try. */
    nextDelay(): number {
      failures++;
      const doubling = 500 * 2 ** Math.min(failures - 1, 16);
      const d = Math.min(doubling, RETRY_CAP_MS, Math.max(500, (expiresAt - now()) / 3));
      return d / 2 + (random() * d) / 2;
    },
  };
}
