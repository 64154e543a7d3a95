import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { LogRead } from './store/route-log.repository.js';
import { shareLogReads } from './watch-routes.js';

test('streams at the same revision share one read of the log, but never one begun before a wake-up they follow', async () => {
  const calls: number[] = [];
  let finish: (r: LogRead) => void = () => {};
  const log = {
    read: (since: number) => {
      calls.push(since);
      return new Promise<LogRead>((r) => (finish = r));
    },
  };
  let generation = 0;
  const shared = shareLogReads(log, { generation: () => generation });
  const a = shared.read(7);
  const b = shared.read(7);
  const other = shared.read(3);
  assert.deepEqual(calls, [7, 3], 'one query per revision, however many streams');
  generation++; // a NOTIFY arrived: the change it announces may be invisible to the reads in flight
  const c = shared.read(7);
  assert.deepEqual(calls, [7, 3, 7], 'a stream woken by it reads afresh');
  const result: LogRead = { kind: 'not_ready' };
  finish(result);
  assert.equal(await c, result);
  void a;
  void b;
  void other;
  const d = shared.read(7);
  assert.equal(calls.length, 4, 'a finished read is not reused');
  void d;
});
