import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createPolicyFanout, sharePolicyViews, type PolicyView } from './watch-node-policy.js';
import type { PlacedPod } from './domain/compile.js';
import { parseIp, parsePolicyObject, type NetworkPolicy } from './domain/model.js';
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

/** Views the test sets, and a notifier whose wake-ups the test sends. */
function fanoutFixture() {
  const ns = new Map([['a', {}]]);
  const np = parsePolicyObject({
    kind: 'NetworkPolicy',
    metadata: { namespace: 'a', name: 'from-clients' },
    spec: { podSelector: {}, ingress: [{ from: [{ podSelector: { matchLabels: { role: 'client' } } }] }] },
  }) as NetworkPolicy;
  const pod = (name: string, node: string, address: string, labels: Record<string, string> = {}): PlacedPod => ({
    namespace: 'a',
    name,
    node,
    labels,
    addresses: [parseIp(address, 'ip')],
    ports: [],
  });
  let view: PolicyView = {
    seq: 1,
    revision: 1,
    world: { namespaces: ns, networkPolicies: [np], adminPolicies: [], baseline: null },
    pods: [pod('p1', 'n1', '10.0.0.1'), pod('p2', 'n2', '10.0.0.2')],
  };
  let reads = 0;
  const waiters = new Set<() => void>();
  const notifier = {
    wait: (_ch: string, ms: number, signal: AbortSignal) =>
      new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(t);
          waiters.delete(done);
          resolve();
        };
        const t = setTimeout(done, ms);
        signal.addEventListener('abort', done, { once: true });
        waiters.add(done);
      }),
    generation: () => 0,
    close: async () => {},
  };
  return {
    pod,
    views: {
      current: async () => {
        reads++;
        return view;
      },
    },
    notifier,
    reads: () => reads,
    waiting: () => waiters.size,
    /** A change: the next view (the pods given replace those of the same name; `gone` are removed), then NOTIFY. */
    change(pods: PlacedPod[], gone: string[] = []) {
      const names = new Set(pods.map((p) => p.name));
      view = {
        ...view,
        seq: view.seq + 1,
        revision: view.revision + 1,
        pods: [...view.pods.filter((p) => !names.has(p.name) && !gone.includes(p.name)), ...pods].sort((a, b) =>
          a.name < b.name ? -1 : 1,
        ),
      };
      for (const w of [...waiters]) w();
    },
  };
}

/** The next message within `ms`, or null. */
async function nextWithin<T>(
  it: AsyncIterator<T>,
  pending: Map<AsyncIterator<T>, Promise<IteratorResult<T>>>,
  ms: number,
) {
  let p = pending.get(it);
  if (!p) pending.set(it, (p = it.next()));
  const r = await Promise.race([p, new Promise<null>((res) => setTimeout(() => res(null), ms))]);
  if (r === null) return null;
  pending.delete(it);
  assert.ok(!r.done);
  return r.value;
}

test('fan-out: a change is compiled once for the streams of the nodes it concerns; other nodes get nothing, a slow stream one delta to the newest', async () => {
  const f = fanoutFixture();
  const fanout = createPolicyFanout({
    views: f.views,
    notifier: f.notifier as never,
    options: { pollMs: 60_000, bookmarkMs: 60_000 },
  });
  const ac = new AbortController();
  const pending = new Map();
  const n1a = fanout.watch('n1', ac.signal, { acceptDeltas: true });
  const n1b = fanout.watch('n1', ac.signal, { acceptDeltas: true });
  const n2 = fanout.watch('n2', ac.signal, { acceptDeltas: true });
  try {
    const first = await Promise.all([n1a, n1b, n2].map((s) => nextWithin(s, pending, 1000)));
    assert.ok(
      first.every((m) => m?.policy && !m.delta),
      'every stream starts complete',
    );
    assert.equal(first[0]!.policy, first[1]!.policy, "two streams of a node share the node's compiled rules");
    assert.equal(first[0]!.policy!.pods.length, 1);
    // A pod attached on n1, selected by no set n2's rules name: n1's streams get a delta, n2's nothing.
    f.change([f.pod('p3', 'n1', '10.0.0.3')]);
    const d = await nextWithin(n1a, pending, 1000);
    assert.deepEqual(
      d?.delta?.pods.map((p) => p.name),
      ['p3'],
    );
    assert.equal(d?.revision, 2);
    assert.equal(await nextWithin(n2, pending, 200), null, 'n2 is not concerned: no message');
    // A client on n2: the set every node's rules name changes; n1b has not read since its first message.
    f.change([f.pod('p2', 'n2', '10.0.0.2', { role: 'client' })]);
    assert.ok((await nextWithin(n2, pending, 1000))?.delta, 'n2 gets its delta');
    assert.ok((await nextWithin(n1a, pending, 1000))?.delta);
    f.change([f.pod('p4', 'n1', '10.0.0.4')]);
    assert.ok((await nextWithin(n1a, pending, 1000))?.delta);
    const slow = await nextWithin(n1b, pending, 1000);
    assert.deepEqual(
      slow?.delta?.pods.map((p) => p.name).sort(),
      ['p1', 'p3', 'p4'],
      'the slow stream: one delta from what it held to the newest',
    );
    assert.equal(slow?.revision, 4);
    assert.equal(await nextWithin(n1b, pending, 200), null, 'and nothing more');
  } finally {
    ac.abort();
    await Promise.all([n1a, n1b, n2].map((s) => s.return(undefined)));
  }
  // The last stream gone, the replica's loop stops reading.
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(f.waiting(), 0, 'no loop left waiting');
  const reads = f.reads();
  f.change([]);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(f.reads(), reads);
});
