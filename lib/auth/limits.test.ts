import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DomainError } from '../errors.js';
import type { Identity } from './identity.js';
import { createCallLimiter, RateLimitedError, type IdentityLimits } from './limits.js';

const LIMITS: IdentityLimits = {
  node: { streams: 2, ratePerSecond: 10, burst: 3 },
  controller: { streams: 5, ratePerSecond: 100, burst: 100 },
  token: { streams: 1, ratePerSecond: 1, burst: 1 },
  admin: { streams: 0, ratePerSecond: 0, burst: 1 },
};
const n1 = { kind: 'node', name: 'n1' } as const;
const n2 = { kind: 'node', name: 'n2' } as const;

function fakeClock() {
  let t = 1000;
  return { now: () => t, advance: (ms: number) => void (t += ms) };
}

test('a node gets its burst at once, then calls at its rate; the refusal says who, the limit, the setting and when to retry', () => {
  const clock = fakeClock();
  const limiter = createCallLimiter(LIMITS, clock.now);
  for (let i = 0; i < 3; i++) limiter.admitCall(n1);
  const err = assert.throws(
    () => limiter.admitCall(n1),
    (e: unknown) => {
      assert.ok(e instanceof RateLimitedError);
      assert.equal(e.code, 'auth.rate_limited');
      assert.equal(e.kind, 'exhausted');
      assert.equal(e.retryAfterMs, 100);
      assert.match(
        e.message,
        /node:n1 .*10 calls\/s \(burst 3\).*WEFT_LIMIT_NODE_RATE, WEFT_LIMIT_NODE_BURST.*retry in 100 ms/,
      );
      return true;
    },
  );
  void err;
  // Another node has its own bucket.
  limiter.admitCall(n2);
  clock.advance(60);
  assert.throws(
    () => limiter.admitCall(n1),
    (e: unknown) => e instanceof RateLimitedError && e.retryAfterMs === 40,
  );
  clock.advance(40);
  limiter.admitCall(n1);
  assert.throws(() => limiter.admitCall(n1), RateLimitedError);
  // A long quiet spell refills to the burst, not beyond.
  clock.advance(3_600_000);
  for (let i = 0; i < 3; i++) limiter.admitCall(n1);
  assert.throws(() => limiter.admitCall(n1), RateLimitedError);
});

test('rate 0 is no limit (admin by default), and an unidentified caller is never limited', () => {
  const limiter = createCallLimiter(LIMITS, fakeClock().now);
  for (let i = 0; i < 10_000; i++) {
    limiter.admitCall({ kind: 'admin', name: 'ops' });
    limiter.admitCall({ kind: 'none' });
  }
});

test('streams: the one past the limit is refused naming identity, limit and setting; ending one frees its slot once', () => {
  const limiter = createCallLimiter(LIMITS, fakeClock().now);
  const a = limiter.openStream(n1);
  const b = limiter.openStream(n1);
  assert.throws(
    () => limiter.openStream(n1),
    (e: unknown) => {
      assert.ok(e instanceof DomainError);
      assert.equal(e.code, 'auth.too_many_streams');
      assert.equal(e.kind, 'exhausted');
      assert.match(e.message, /node:n1 already has 2 open streams.*WEFT_LIMIT_NODE_STREAMS=2/);
      return true;
    },
  );
  // Others are unaffected.
  limiter.openStream(n2);
  limiter.openStream({ kind: 'controller', name: 'east' });
  a();
  a(); // a stream ending twice (cancelled, then closed) frees one slot
  assert.equal(limiter.openStreams(n1), 1);
  limiter.openStream(n1);
  assert.throws(() => limiter.openStream(n1), DomainError);
  b();
  assert.equal(limiter.openStreams(n1), 1);
  // Tokens are counted by name; admin's 0 is no limit.
  const t: Identity = { kind: 'token', name: 'ci', scopes: ['read'] };
  limiter.openStream(t);
  assert.throws(() => limiter.openStream(t), /token:ci already has 1 open streams.*WEFT_LIMIT_TOKEN_STREAMS=1/);
  limiter.openStream({ kind: 'token', name: 'other', scopes: [] });
  for (let i = 0; i < 1000; i++) limiter.openStream({ kind: 'admin', name: 'ops' });
});
