import { status } from '@grpc/grpc-js';
import { createBackoff } from '../lib/backoff.js';
import type { PromiseClient } from '../lib/grpc/client.js';
import type { Logger } from '../lib/logger.js';
import type { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';

/**
 * Keeps the node's registration alive: RenewLease every third of the lease the control plane granted. A failed
 * renewal is retried within a second (jittered, lib/backoff.ts), so a lease survives one lost renewal and a short control-plane outage. A node
 * whose lease ran out comes back with its next renewal. NOT_FOUND means an operator deregistered the node: the agent
 * respects that and stops renewing (it registers again only when restarted).
 */
export function keepNodeLease(deps: {
  routes: PromiseClient<typeof RoutesServiceService>;
  registration: { name: string };
  leaseMs: number;
  logger: Logger;
  signal: AbortSignal;
}): void {
  let leaseMs = deps.leaseMs > 0 ? deps.leaseMs : 20_000;
  const { routes, logger, signal } = deps;
  void (async () => {
    let delay = leaseMs / 3;
    const retry = createBackoff({ baseMs: Math.min(1000, leaseMs / 6) / 2, capMs: Math.min(1000, leaseMs / 6) });
    while (!signal.aborted) {
      await new Promise<void>((r) => {
        const t = setTimeout(done, delay);
        function done() {
          clearTimeout(t);
          signal.removeEventListener('abort', done);
          r();
        }
        signal.addEventListener('abort', done, { once: true });
      });
      if (signal.aborted) return;
      try {
        leaseMs = (await routes.renewLease({ name: deps.registration.name }, { timeoutMs: 5000 })).leaseMillis || leaseMs;
        delay = leaseMs / 3;
        retry.reset();
      } catch (err) {
        if ((err as { code?: number }).code === status.NOT_FOUND) {
          logger.error('this node was deregistered; it stays out of the route table until the agent restarts and registers again');
          return;
        }
        logger.warn('cannot renew the node lease; retrying', { err: (err as Error).message });
        delay = retry.next();
      }
    }
  })();
}
