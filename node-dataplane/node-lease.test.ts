import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRenewalRetry } from './node-lease.js';

test('a failed renewal is tried again at once, then less often, but always three times before the lease runs out', () => {
  let clock = 0;
  // The upper end of each jittered wait (random() → 1), and the lower (→ 0): half of it.
  for (const [r, share] of [
    [() => 0.999999, 1],
    [() => 0, 0.5],
  ] as const) {
    const retry = createRenewalRetry(() => clock, r);
    retry.renewed(60_000);
    clock += 20_000; // a renewal due at a third of the lease fails: 40 s left
    const waits: number[] = [];
    for (let i = 0; i < 6; i++) waits.push(Math.round(retry.nextDelay()));
    assert.deepEqual(
      waits,
      [500, 1000, 2000, 4000, 8000, 13_333].map((w) => Math.round(w * share)),
      'doubling from half a second, up to a third of the 40 s left',
    );
    clock += 38_000; // 2 s left: three tries still fit
    assert.ok(retry.nextDelay() <= 667);
    clock += 10_000; // the lease ran out: tries every half second at most
    assert.ok(retry.nextDelay() <= 500);
    retry.renewed(60_000); // taken: the next failure starts over
    assert.equal(Math.round(retry.nextDelay()), Math.round(500 * share));
    clock = 0;
  }
});
