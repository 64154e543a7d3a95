/**
 * Retry delays for every reconnect and retry loop: exponential growth with decorrelated jitter, a cap, and a reset on
 * success. Each delay is drawn uniformly from [base, 3 × previous delay], then capped, so it grows about as fast as
 * doubling while two clients that failed at the same moment (every agent, when the control plane restarts) soon retry
 * at different moments instead of in step. Never below `baseMs`, never above `capMs`. (AWS Architecture Blog,
 * "Exponential Backoff And Jitter".)
 */
export interface Backoff {
  /** The delay before the next retry, in milliseconds; each call is one more failure. */
  next(): number;
  /** After a success: the next failure starts again from the base delay. */
  reset(): void;
}

export interface BackoffOptions {
  baseMs: number;
  capMs: number;
  /** A number in [0, 1); Math.random unless a test fixes it. */
  random?: () => number;
}

export function createBackoff(opts: BackoffOptions): Backoff {
  const base = Math.max(0, opts.baseMs);
  const cap = Math.max(base, opts.capMs);
  const random = opts.random ?? Math.random;
  let previous = base;
  return {
    next() {
      previous = Math.min(cap, base + random() * (3 * previous - base));
      return Math.round(previous);
    },
    reset() {
      previous = base;
    },
  };
}

/**
 * The wait between two tries of a retry loop: resolves after `ms`, or at once when `signal` aborts (it never rejects,
 * so a loop checks its signal after the wait and ends). No timer or listener is left behind either way. `unref`: the
 * wait does not keep the process alive.
 */
export function sleep(ms: number, signal?: AbortSignal, opts: { unref?: boolean } = {}): Promise<void> {
  return new Promise<void>((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    if (opts.unref) timer.unref();
    signal?.addEventListener('abort', done, { once: true });
  });
}
