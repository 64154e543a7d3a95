import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createWorkQueue } from './work-queue.js';

test('a key marked many times while waiting or busy is worked on once more, never twice at once', async () => {
  const log: string[] = [];
  let running = 0;
  let most = 0;
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const q = createWorkQueue({
    concurrency: 4,
    onError: () => assert.fail('no error expected'),
    work: async (key) => {
      running++;
      most = Math.max(most, running);
      log.push(key);
      if (log.length === 1) await gate;
      running--;
    },
  });
  q.add('a');
  for (let i = 0; i < 10; i++) q.add('a');
  release();
  await q.idle();
  assert.deepEqual(log, ['a', 'a']);
  assert.equal(most, 1);
  q.stop();
});

test('a failing key is retried after a backoff until it succeeds; other keys go on meanwhile', async () => {
  let fails = 2;
  const done: string[] = [];
  const errors: number[] = [];
  const q = createWorkQueue({
    concurrency: 1,
    baseRetryMs: 5,
    capRetryMs: 20,
    onError: (_k, _e, ms) => errors.push(ms),
    work: async (key) => {
      if (key === 'bad' && fails-- > 0) throw new Error('unavailable');
      done.push(key);
    },
  });
  q.add('bad');
  q.add('good');
  const deadline = Date.now() + 2000;
  while (!done.includes('bad') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  assert.deepEqual(done, ['good', 'bad']);
  assert.equal(errors.length, 2);
  assert.ok(errors.every((ms) => ms >= 5 && ms <= 20));
  q.stop();
});
