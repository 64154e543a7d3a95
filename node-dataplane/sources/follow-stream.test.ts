import { test } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../../lib/logger.js';
import { followStream, reconnectSpreadMs } from './follow-stream.js';

test('agents whose streams broke together reopen them at spread-out moments, not in step (reconnect jitter)', async () => {
  // 30 agents lose the control plane at the same moment; it stays down, so every reopen fails at once.
  const ac = new AbortController();
  const opens: number[][] = Array.from({ length: 30 }, () => []);
  const started = Date.now();
  for (const times of opens) {
    followStream({
      // eslint-disable-next-line require-yield
      open: async function* () {
        times.push(Date.now() - started);
        throw new Error('UNAVAILABLE');
      },
      onMessage: () => {},
      brokenMessage: 'broken',
      logger: silentLogger,
      signal: ac.signal,
    });
  }
  await new Promise((r) => setTimeout(r, 2500));
  ac.abort();
  // The second reopen of each agent (at most 600 + 1,800 ms after the first try): with jitter they are spread over
  // hundreds of milliseconds; without, all come within a few.
  const second = opens.map((t) => t[2]).filter((t): t is number => t !== undefined);
  assert.ok(second.length >= 25, `only ${second.length} agents reopened twice`);
  const spread = Math.max(...second) - Math.min(...second);
  assert.ok(spread > 200, `every agent reopened within ${spread} ms of the others`);
  // And every agent still backs off: no reopen sooner than the base delay after the previous one.
  for (const t of opens)
    for (let i = 1; i < t.length; i++)
      assert.ok(t[i]! - t[i - 1]! >= 190, `reopened ${t[i]! - t[i - 1]!} ms after the previous try`);
});

test('agents whose flowing streams end together (their server went away) reopen them spread over the cluster-sized window', async () => {
  const ac = new AbortController();
  const reopened: number[] = [];
  let ended = 0;
  for (let i = 0; i < 40; i++) {
    let opens = 0;
    followStream({
      open: async function* () {
        if (opens++ > 0) {
          reopened.push(Date.now() - started);
          return await new Promise<never>(() => {});
        }
        yield 'snapshot';
        await new Promise((r) => setTimeout(r, 20));
        ended++;
        throw new Error('UNAVAILABLE: the server is shutting down');
      },
      onMessage: () => {},
      brokenMessage: 'broken',
      logger: silentLogger,
      signal: ac.signal,
      spreadMs: () => reconnectSpreadMs(2000),
    });
  }
  const started = Date.now();
  await new Promise((r) => setTimeout(r, 3500));
  ac.abort();
  assert.equal(ended, 40);
  assert.equal(reopened.length, 40, `${reopened.length} of 40 reopened within 3.5 s`);
  // Full jitter over 2 s (2,000 nodes): spread over most of it, not within the backoff's first 200-600 ms.
  const spread = Math.max(...reopened) - Math.min(...reopened);
  assert.ok(spread > 1000, `every agent reopened within ${spread} ms of the others`);
  assert.ok(Math.min(...reopened) >= 200, 'reopened sooner than the backoff floor');
});
