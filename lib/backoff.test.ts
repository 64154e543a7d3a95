import { test } from 'node:test';
import assert from 'node:assert/strict';
import { getEventListeners } from 'node:events';
import { createBackoff, sleep } from './backoff.js';

test('backoff: agents that failed together retry at spread-out moments (jitter), not in step', () => {
  // 1000 agents lose the control plane at once; each retries after its own backoff, five failures in a row.
  const agents = Array.from({ length: 1000 }, () => createBackoff({ baseMs: 200, capMs: 5000 }));
  for (let attempt = 1; attempt <= 5; attempt++) {
    const delays = agents.map((b) => b.next());
    const distinct = new Set(delays).size;
    const mean = delays.reduce((a, b) => a + b, 0) / delays.length;
    const sd = Math.sqrt(delays.reduce((a, d) => a + (d - mean) ** 2, 0) / delays.length);
    assert.ok(distinct > 300, `attempt ${attempt}: only ${distinct} distinct delays among 1000 agents`);
    assert.ok(
      sd / mean > 0.2,
      `attempt ${attempt}: delays bunch together (mean ${mean.toFixed(0)} ms, sd ${sd.toFixed(0)} ms)`,
    );
    // No 100 ms window holds a third of the agents (the first retry spreads over 400 ms, later ones over more).
    const buckets = new Map<number, number>();
    for (const d of delays) buckets.set(Math.floor(d / 100), (buckets.get(Math.floor(d / 100)) ?? 0) + 1);
    assert.ok(
      Math.max(...buckets.values()) < 333,
      `attempt ${attempt}: ${Math.max(...buckets.values())} agents retry within the same 100 ms`,
    );
  }
});

test('backoff: grows from the base, never leaves [base, cap], and starts over after reset', () => {
  const high = createBackoff({ baseMs: 100, capMs: 3000, random: () => 0.999999 });
  assert.deepEqual(
    [1, 2, 3, 4, 5].map(() => high.next()),
    [300, 900, 2700, 3000, 3000],
    'the largest draws triple up to the cap',
  );
  const low = createBackoff({ baseMs: 100, capMs: 3000, random: () => 0 });
  assert.deepEqual(
    [1, 2, 3].map(() => low.next()),
    [100, 100, 100],
    'never below the base',
  );
  const b = createBackoff({ baseMs: 50, capMs: 1000 });
  for (let i = 0; i < 10_000; i++) {
    const d = b.next();
    assert.ok(d >= 50 && d <= 1000, `delay ${d} outside [50, 1000]`);
  }
  high.reset();
  assert.equal(high.next(), 300, 'after a success the next failure waits at most three times the base again');
  // On average it grows: the mean of the fifth delay is well above the first's.
  const mean = (n: number) => {
    let sum = 0;
    for (let i = 0; i < 2000; i++) {
      const x = createBackoff({ baseMs: 100, capMs: 1_000_000 });
      let d = 0;
      for (let k = 0; k < n; k++) d = x.next();
      sum += d;
    }
    return sum / 2000;
  };
  assert.ok(mean(5) > 4 * mean(1), `mean delay after 5 failures ${mean(5)} vs after 1 ${mean(1)}`);
});

test('sleep: waits the delay, or ends at once when its signal aborts, and leaves no listener behind', async () => {
  const t0 = performance.now();
  await sleep(30);
  assert.ok(performance.now() - t0 >= 25, 'waited about the delay');
  const stop = new AbortController();
  const listeners = () => countAbortListeners(stop.signal);
  for (let i = 0; i < 20; i++) await sleep(1, stop.signal);
  assert.equal(listeners(), 0, 'each finished wait removed its abort listener');
  const t1 = performance.now();
  const long = sleep(60_000, stop.signal);
  stop.abort();
  await long;
  assert.ok(performance.now() - t1 < 1000, 'an abort ends a long wait at once');
  const t2 = performance.now();
  await sleep(60_000, stop.signal);
  assert.ok(performance.now() - t2 < 1000, 'an aborted signal does not wait at all');
});

/** The abort listeners on a signal, through Node's public events.getEventListeners. */
function countAbortListeners(signal: AbortSignal): number {
  return getEventListeners(signal, 'abort').length;
}
