import { DomainError } from '../errors.js';
import { describeIdentity, type Identity } from './identity.js';

/**
 * Limits per identity (lib/auth/DESIGN.md, "Limits"): how many server streams one identity may hold open, and how
 * fast it may call (a token bucket). Counted per identity (kind and name), so one noisy node, controller or token
 * never slows another. `none` is never limited: the only calls it may make authenticate themselves (bootstrap).
 * Pure apart from the clock it is given.
 */
export type LimitedKind = 'node' | 'admin' | 'controller' | 'token';
export const LIMITED_KINDS: readonly LimitedKind[] = ['node', 'controller', 'token', 'admin'];

export interface KindLimits {
  /** Open server streams at once; 0: no limit. */
  streams: number;
  /** Calls per second, refilled continuously; 0: no limit. */
  ratePerSecond: number;
  /** Calls that may be made at once after a quiet spell (the bucket's size); at least 1 when ratePerSecond > 0. */
  burst: number;
}
export type IdentityLimits = Record<LimitedKind, KindLimits>;

/** The setting that holds a limit: WEFT_LIMIT_NODE_STREAMS, WEFT_LIMIT_TOKEN_RATE, … (cli/control-plane.config.ts). */
export const limitSetting = (kind: LimitedKind, what: 'streams' | 'rate' | 'burst'): string =>
  `WEFT_LIMIT_${kind.toUpperCase()}_${what.toUpperCase()}`;

/** A call refused for its caller's rate: RESOURCE_EXHAUSTED with `retry-after-ms` in its trailing metadata. */
export class RateLimitedError extends DomainError {
  constructor(
    readonly retryAfterMs: number,
    message: string,
  ) {
    super('auth.rate_limited', 'exhausted', message);
  }
}

export interface CallLimiter {
  /** Counts a call against its caller's rate; throws RateLimitedError when the caller's bucket is empty. */
  admitCall(identity: Identity): void;
  /**
   * Takes a stream slot of the caller; throws DomainError `auth.too_many_streams` (exhausted) when it holds all of
   * them. Returns the release, to call however the stream ends (idempotent: calling it twice frees one slot).
   */
  openStream(identity: Identity): () => void;
  /** Streams the identity holds open now (for tests and logs). */
  openStreams(identity: Identity): number;
}

const keyOf = (id: Identity & { name: string }) => `${id.kind}:${id.name}`;

/** A limiter over `limits`; `now` in milliseconds (monotonic: performance.now by default, a fake clock in tests). */
export function createCallLimiter(limits: IdentityLimits, now: () => number = () => performance.now()): CallLimiter {
  const buckets = new Map<string, { tokens: number; at: number }>();
  const streams = new Map<string, number>();
  let sweepAt = now();

  /** Drops buckets that have refilled (an idle caller costs no memory); at most once a minute. */
  function sweep(t: number) {
    if (t - sweepAt < 60_000) return;
    sweepAt = t;
    for (const [key, b] of buckets) {
      const l = limits[key.slice(0, key.indexOf(':')) as LimitedKind];
      if (b.tokens + ((t - b.at) / 1000) * l.ratePerSecond >= l.burst) buckets.delete(key);
    }
  }

  return {
    admitCall(identity) {
      if (identity.kind === 'none') return;
      const l = limits[identity.kind];
      if (l.ratePerSecond <= 0) return;
      const t = now();
      sweep(t);
      const key = keyOf(identity);
      const b = buckets.get(key) ?? { tokens: l.burst, at: t };
      b.tokens = Math.min(l.burst, b.tokens + ((t - b.at) / 1000) * l.ratePerSecond);
      b.at = t;
      buckets.set(key, b);
      if (b.tokens >= 1) {
        b.tokens -= 1;
        return;
      }
      const retryAfterMs = Math.max(1, Math.ceil(((1 - b.tokens) / l.ratePerSecond) * 1000));
      throw new RateLimitedError(
        retryAfterMs,
        `${describeIdentity(identity)} calls faster than the ${l.ratePerSecond} calls/s (burst ${l.burst}) a ${identity.kind} may make ` +
          `(${limitSetting(identity.kind, 'rate')}, ${limitSetting(identity.kind, 'burst')}); retry in ${retryAfterMs} ms`,
      );
    },
    openStream(identity) {
      if (identity.kind === 'none') return () => {};
      const l = limits[identity.kind];
      const key = keyOf(identity);
      const open = streams.get(key) ?? 0;
      if (l.streams > 0 && open >= l.streams) {
        throw new DomainError(
          'auth.too_many_streams',
          'exhausted',
          `${describeIdentity(identity)} already has ${open} open streams, the most a ${identity.kind} may hold (${limitSetting(identity.kind, 'streams')}=${l.streams}); end one first, or raise the setting`,
        );
      }
      streams.set(key, open + 1);
      let released = false;
      return () => {
        if (released) return;
        released = true;
        const n = (streams.get(key) ?? 1) - 1;
        if (n <= 0) streams.delete(key);
        else streams.set(key, n);
      };
    },
    openStreams(identity) {
      return identity.kind === 'none' ? 0 : (streams.get(keyOf(identity)) ?? 0);
    },
  };
}
