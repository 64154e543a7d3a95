import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCoalescer } from '../lib/coalescer.js';

test('coalescer: an idle caller goes at once; callers arriving meanwhile share the next batch; errors reach each caller', async () => {
  const batches: number[][] = [];
  let release: () => void = () => {};
  const c = createCoalescer(
    async (items: number[]) => {
      batches.push(items);
      if (items.includes(-1)) throw new Error('bad batch');
      if (batches.length === 1) await new Promise<void>((r) => (release = r));
      return items.map((i) => i * 10);
    },
    { maxInFlight: 1, maxBatch: 3, maxQueued: 100, overloaded: () => new Error('full') },
  );
  const first = c.submit(1);
  const rest = [2, 3, 4, 5].map((i) => c.submit(i));
  assert.deepEqual(batches, [[1]], 'the first request did not wait');
  release();
  assert.deepEqual(await Promise.all([first, ...rest]), [10, 20, 30, 40, 50]);
  assert.deepEqual(batches, [[1], [2, 3, 4], [5]], 'waiting requests joined batches of at most maxBatch');
  const failed = [c.submit(-1), c.submit(7)];
  await assert.rejects(failed[0]!, /bad batch/);
  assert.equal(await failed[1], 70);
});

test('coalescer: the queue is bounded (a request beyond maxQueued is refused at once) and a batch failing as unavailable fails the waiting ones', async () => {
  let release: (fail: boolean) => void = () => {};
  let runs = 0;
  const c = createCoalescer(
    async (items: number[]) => {
      runs++;
      if (await new Promise<boolean>((r) => (release = r)))
        throw Object.assign(new Error('database down'), { unavailable: true });
      return items;
    },
    {
      maxInFlight: 1,
      maxBatch: 2,
      maxQueued: 5,
      overloaded: (queued) => new Error(`overloaded: ${queued} waiting`),
      failsQueued: (err) => (err as { unavailable?: boolean }).unavailable === true,
    },
  );
  const running = c.submit(0);
  const waiting = [1, 2, 3, 4, 5].map((i) => c.submit(i));
  const stillWaiting = new Promise((_, reject) =>
    setTimeout(() => reject(new Error('the request was queued behind the others')), 100),
  );
  await assert.rejects(
    Promise.race([c.submit(6), stillWaiting]),
    /overloaded: 5 waiting/,
    'refused at once, not queued',
  );
  assert.equal(c.queued(), 5, 'the refused request did not join the queue');
  release(true);
  await assert.rejects(running, /database down/);
  for (const w of waiting) await assert.rejects(w, /database down/);
  assert.equal(runs, 1, 'the waiting requests failed with the batch, without a statement of their own');
  assert.equal(c.queued(), 0);
  // Afterwards the coalescer serves again.
  const again = c.submit(7);
  release(false);
  assert.equal(await again, 7);
});
