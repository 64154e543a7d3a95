import { createBackoff, sleep } from '../../lib/backoff.js';
import type { Logger } from '../../lib/logger.js';

/**
 * How long, at most, an agent waits to reopen a stream that was flowing when it ended (its server went away: a
 * restart, a replica stopped), per node of the cluster it knows of: each agent draws its delay uniformly from zero
 * to this times the cluster's size (full jitter), so that the agents of a cluster come back at about
 * 1 / RECONNECT_SPREAD_PER_NODE_MS a millisecond whatever its size (5,000 nodes: over 5 s), not all in the same
 * few hundred milliseconds. At most RECONNECT_SPREAD_MAX_MS.
 */
export const RECONNECT_SPREAD_PER_NODE_MS = 1;
export const RECONNECT_SPREAD_MAX_MS = 10_000;

/** The full-jitter spread of a cluster of `nodes` nodes (RECONNECT_SPREAD_PER_NODE_MS). */
export const reconnectSpreadMs = (nodes: number): number =>
  Math.min(RECONNECT_SPREAD_MAX_MS, Math.max(0, nodes) * RECONNECT_SPREAD_PER_NODE_MS);

/**
 * Keeps one server stream open until `signal` aborts: `open` is called for each connection (so it can pass the last
 * revision applied), every message goes to `onMessage`. A stream that ends is reopened after a jittered backoff
 * (lib/backoff.ts) from 200 ms up to 5 s, reset once a message arrives; one that was flowing (it delivered a message)
 * waits in addition a delay drawn uniformly from [0, spreadMs()] (full jitter: the agents whose server went away
 * together come back spread out instead of within the same 400 ms). `open` should wait for a connection
 * (`waitForReady`) rather than fail while there is none: then the control plane's absence costs one break, and the
 * channel's reconnect backoff (lib/grpc/client.ts CLIENT_RECONNECT) paces the connection attempts. The watch sources
 * share it; what a message means is theirs.
 */
export function followStream<T>(deps: {
  open: (signal: AbortSignal) => AsyncIterable<T>;
  onMessage: (message: T) => void;
  /** Logged (with the error and the backoff) when the stream breaks. */
  brokenMessage: string;
  logger: Logger;
  signal: AbortSignal;
  /** The full-jitter spread of a reconnect after a flowing stream ended (reconnectSpreadMs of the cluster's size); 0 by default. */
  spreadMs?: () => number;
  /** A number in [0, 1); Math.random unless a test fixes it. */
  random?: () => number;
}): void {
  const random = deps.random ?? Math.random;
  void (async () => {
    const backoff = createBackoff({ baseMs: 200, capMs: 5000, random });
    while (!deps.signal.aborted) {
      let broken: unknown = null;
      let flowing = false;
      try {
        for await (const m of deps.open(deps.signal)) {
          if (!flowing) {
            flowing = true;
            backoff.reset();
          }
          deps.onMessage(m);
        }
      } catch (err) {
        if (deps.signal.aborted) return;
        broken = err;
      }
      const delay = backoff.next() + (flowing ? Math.round(random() * (deps.spreadMs?.() ?? 0)) : 0);
      if (broken) deps.logger.warn(deps.brokenMessage, { err: (broken as Error).message, backoffMs: delay });
      await sleep(delay, deps.signal);
    }
  })();
}
