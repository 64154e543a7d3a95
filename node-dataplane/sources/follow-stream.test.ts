import { test } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../../lib/logger.js';
import { followStream } from './follow-stream.js';

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
