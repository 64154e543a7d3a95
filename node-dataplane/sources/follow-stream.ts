import { createBackoff, sleep } from '../../lib/backoff.js';
import type { Logger } from '../../lib/logger.js';

/**
 * Keeps one server stream open until `signal` aborts: `open` is called for each connection (so it can pass the last
 * revision applied), every message goes to `onMessage`, and a broken stream is reopened after a jittered backoff
 * (lib/backoff.ts) from 200 ms up to 5 s, reset once a message arrives. The watch sources share it; what a message means
 * is theirs.
 */
export function followStream<T>(deps: {
  open: (signal: AbortSignal) => AsyncIterable<T>;
  onMessage: (message: T) => void;
  /** Logged (with the error and the backoff) when the stream breaks. */
  brokenMessage: string;
  logger: Logger;
  signal: AbortSignal;
}): void {
  void (async () => {
    const backoff = createBackoff({ baseMs: 200, capMs: 5000 });
    while (!deps.signal.aborted) {
      let broken: unknown = null;
      try {
        for await (const m of deps.open(deps.signal)) {
          backoff.reset();
          deps.onMessage(m);
        }
      } catch (err) {
        if (deps.signal.aborted) return;
        broken = err;
      }
      const delay = backoff.next();
      if (broken) deps.logger.warn(deps.brokenMessage, { err: (broken as Error).message, backoffMs: delay });
      await sleep(delay, deps.signal);
    }
  })();
}
