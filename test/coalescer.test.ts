import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCoalescer } from '../lib/coalescer.js';

test('coalescer: an idle caller goes at once; callers arriving meanwhile share the next batch; errors reach each caller', async () => {
  const batches: number[][] = [];
  let release: () => void = () => {};
  const c = createCoalescer(async (items: number[]) => {
    batches.push(items);
    if (items.includes(-1)) throw new Error('bad batch');
    if (batches.length === 1) await new Promise<void>((r) => (release = r));
    return items.map((i) => i * 10);
  }, { maxInFlight: 1, maxBatch: 3 });
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
