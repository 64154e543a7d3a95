import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sharePolicyViews } from './watch-node-policy.js';
import type { Snapshot } from './store/policy.repository.js';

/** A repository whose snapshot() reads are counted and released by the test; a notifier whose generation it sets. */
function fixture() {
  let reads = 0;
  let generation = 0;
  const pending: { resolve: (s: Snapshot) => void; reject: (e: Error) => void }[] = [];
  const repo = {
    snapshot: () => {
      reads++;
      return new Promise<Snapshot>((resolve, reject) => pending.push({ resolve, reject }));
    },
  };
  const snapshot = (revision: number): Snapshot => ({
    revision,
    namespaces: new Map([['a', {}]]),
    pods: [
      { namespace: 'a', name: 'p', labels: { app: 'p' }, node: 'n1', addresses: ['10.0.0.1'], ports: [], revision: 1 },
    ],
    policies: [],
  });
  return {
    repo,
    snapshot,
    pending,
    notifier: { generation: () => generation },
    reads: () => reads,
    notify: () => void generation++,
  };
}

test('streams woken together share one read; a NOTIFY after it begins makes the next caller read again', async () => {
  const f = fixture();
  const views = sharePolicyViews(f.repo, f.notifier, 60_000);
  const joined = Array.from({ length: 500 }, () => views.current());
  assert.equal(f.reads(), 1, '500 streams, one read');
  f.pending.shift()!.resolve(f.snapshot(7));
  const got = await Promise.all(joined);
  assert.ok(
    got.every((v) => v === got[0] && v.revision === 7),
    'one shared view',
  );
  assert.equal(await views.current(), got[0], 'no NOTIFY since: the same view, no read');
  f.notify();
  const next = views.current();
  assert.equal(f.reads(), 2, 'a NOTIFY since the read began: a new read');
  f.pending.shift()!.resolve(f.snapshot(8));
  const v8 = await next;
  assert.equal(v8.revision, 8);
  assert.equal(
    v8.pods[0],
    got[0]!.pods[0],
    'a pod row whose revision did not change is the same parsed object (the compile cache keys on it)',
  );
});

test('a read older than maxAgeMs is not reused (a change whose NOTIFY never came is still picked up by a poll)', async () => {
  const f = fixture();
  const views = sharePolicyViews(f.repo, f.notifier, 20);
  const first = views.current();
  f.pending.shift()!.resolve(f.snapshot(1));
  await first;
  await new Promise((r) => setTimeout(r, 30));
  const second = views.current();
  assert.equal(f.reads(), 2);
  f.pending.shift()!.resolve(f.snapshot(2));
  assert.equal((await second).revision, 2);
});

test('a failed read fails the callers that joined it, and the next caller reads again', async () => {
  const f = fixture();
  const views = sharePolicyViews(f.repo, f.notifier, 60_000);
  const a = views.current();
  const b = views.current();
  f.pending.shift()!.reject(new Error('database unavailable'));
  await assert.rejects(a, /database unavailable/);
  await assert.rejects(b, /database unavailable/);
  const c = views.current();
  assert.equal(f.reads(), 2, 'not the failed read again');
  f.pending.shift()!.resolve(f.snapshot(3));
  assert.equal((await c).revision, 3);
});
