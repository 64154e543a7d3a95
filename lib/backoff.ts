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

