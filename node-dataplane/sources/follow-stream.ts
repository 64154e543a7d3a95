import type { Logger } from '../../lib/logger.js';

/**
 * Keeps one server stream open until `signal` aborts: `open` is called for each connection (so it can pass the last
 * revision applied), every message goes to `onMessage`, and a broken stream is reopened after a backoff that starts
 * at 200 ms, doubles up to 5 s, and resets once a message arrives. The watch sources share it; what a message means
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
    let backoff = 200;
    while (!deps.signal.aborted) {
      try {
        for await (const m of deps.open(deps.signal)) {
          backoff = 200;
          deps.onMessage(m);
        }
      } catch (err) {
        if (deps.signal.aborted) return;
        deps.logger.warn(deps.brokenMessage, { err: (err as Error).message, backoffMs: backoff });
      }
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 5000);
    }
  })();
}
