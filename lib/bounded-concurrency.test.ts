import { test } from 'node:test';
import assert from 'node:assert/strict';
import { forEachBounded } from './bounded-concurrency.js';

const tick = () => new Promise<void>((r) => setImmediate(r));

test('forEachBounded: every item once, never more than `limit` at a time, and the limit is reached', async () => {
  const items = Array.from({ length: 50 }, (_, i) => i);
  let running = 0;
  let most = 0;
  const seen: number[] = [];
  await forEachBounded(items, 7, async (item, index) => {
    assert.equal(item, index);
    running++;
    most = Math.max(most, running);
    await tick();
    if (item % 3 === 0) await tick();
    seen.push(item);
    running--;
  });
  assert.deepEqual(
    [...seen].sort((a, b) => a - b),
    items,
  );
  assert.equal(most, 7);
});

test('forEachBounded: items start in order; fewer items than the limit start all at once', async () => {
  const started: number[] = [];
  await forEachBounded(['a', 'b', 'c'], 64, async (_, i) => {
    started.push(i);
    await tick();
  });
  assert.deepEqual(started, [0, 1, 2]);
  await forEachBounded([], 4, async () => assert.fail('no item, no call'));
});

test('forEachBounded: a failure starts nothing more, lets the running calls finish, then throws the first error', async () => {
  const started: number[] = [];
  const finished: number[] = [];
  await assert.rejects(
    forEachBounded(
      Array.from({ length: 20 }, (_, i) => i),
      3,
      async (i) => {
        started.push(i);
        await tick();
        if (i === 1) throw new Error('item 1 failed');
        if (i === 2) throw new Error('item 2 failed too');
        await tick();
        finished.push(i);
      },
    ),
    /item 1 failed/,
  );
  assert.deepEqual(started, [0, 1, 2], 'nothing started after the failure');
  assert.deepEqual(finished, [0], 'the call that was running when the failure came finished');
});

test('forEachBounded: a limit below 1 is refused', async () => {
  await assert.rejects(
    forEachBounded([1], 0, async () => {}),
    /limit must be a whole number of at least 1, not 0/,
  );
});
