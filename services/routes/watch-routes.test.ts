import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { LogRead } from './store/route-log.repository.js';
import type { Notifier } from '../../lib/db/notifier.js';
import type { RoutesChange } from './domain/route-table.js';
import { createFlushClock, createWatchMessages, shareLogReads, watchRoutes, type FlushClock } from './watch-routes.js';

test('streams at the same revision share one read of the log, in flight or just finished, but never one begun before a wake-up they follow', async () => {
  const calls: number[] = [];
  let finish: (r: LogRead) => void = () => {};
  const log = {
    read: (since: number) => {
      calls.push(since);
      return new Promise<LogRead>((r) => (finish = r));
    },
  };
  let generation = 0;
  let clock = 0;
  const shared = shareLogReads(log, { generation: () => generation }, { reuseMs: 1000, now: () => clock });
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
  clock += 999;
  assert.equal(
    await shared.read(7),
    result,
    'a read finished less than reuseMs ago, with no NOTIFY since it began, serves a stream arriving later',
  );
  assert.equal(calls.length, 3);
  clock += 1;
  void shared.read(7);
  assert.equal(calls.length, 4, 'an older one is not reused: a NOTIFY that never came is still found by the poll');
  const fresh: LogRead = { kind: 'changes', changes: [] };
  finish(fresh);
  assert.equal(await shared.read(7), fresh);
  generation++;
  void shared.read(7);
  assert.equal(calls.length, 5, 'nor one begun before the last NOTIFY');
});

test("a replica's streams at the same revision yield the same message objects, coalesced or not, and a snapshot is made once per revision", async () => {
  const entry = (node: string) => ({
    node,
    underlayAddress: '192.0.2.1',
    vtepMac: '02:00:c0:00:02:01',
    blockCidrs: [],
  });
  const changes: LogRead = {
    kind: 'changes',
    changes: [
      { revision: 5, node: 'a', routes: entry('a') },
      { revision: 6, node: 'b', routes: entry('b') },
      { revision: 7, node: 'a', routes: null },
    ],
  };
  const table = (revision: number, fingerprint: number): LogRead => ({
    kind: 'snapshot',
    revision,
    table: [entry('a'), entry('b')],
    fingerprint,
  });
  const reads: Record<number, LogRead> = { 0: table(4, 7), 4: changes };
  const log = { read: async (since: number) => reads[since] ?? { kind: 'changes' as const, changes: [] } };
  const notifier = { wait: () => new Promise<void>(() => {}), generation: () => 0 } as unknown as Notifier;
  const messages = createWatchMessages();
  const deps = {
    // No reuse of finished reads: this test changes what the log answers between streams.
    log: shareLogReads(log, notifier, { reuseMs: 0 }),
    notifier,
    options: { pollMs: 60_000, bookmarkMs: 60_000 },
    messages,
  };
  const first = async (coalesce: boolean, since = 0, n = 0) => {
    const ac = new AbortController();
    const out: RoutesChange[] = [];
    for await (const m of watchRoutes(deps, since, ac.signal, { coalesce })) {
      out.push(m);
      if (out.length === n) break;
    }
    ac.abort();
    return out;
  };
  const [a, b, c] = await Promise.all([first(false, 0, 4), first(false, 0, 4), first(true, 0, 2)]);
  assert.equal(a[0], b[0], 'one snapshot message');
  assert.equal(a[0], c[0]);
  assert.deepEqual(
    a.slice(1).map((m) => m.revision),
    [5, 6, 7],
  );
  a.slice(1).forEach((m, i) => assert.equal(m, b[i + 1], 'one message per change for all streams'));
  assert.deepEqual(c[1], { revision: 7, reset: false, upserts: [entry('b')], deletes: ['a'], bookmark: false });
  const [d] = await first(true, 4, 1);
  assert.equal(d, c[1], 'one coalesced message for all streams');
  // Later, another read of the table at the same revision: the same message; at another revision or with another
  // table (a database restored to an earlier point reuses revisions), a new one.
  reads[0] = table(4, 7);
  assert.equal((await first(false, 0, 1))[0], a[0]);
  reads[0] = table(4, 9);
  assert.notEqual((await first(false, 0, 1))[0], a[0]);
});

test('a joining watcher that accepts coalesced messages gets the snapshot read less than a second ago and what followed it; an older watcher a fresh one', async () => {
  const entry = (node: string) => ({
    node,
    underlayAddress: '192.0.2.1',
    vtepMac: '02:00:c0:00:02:01',
    blockCidrs: [],
  });
  let clock = 0;
  const reads: number[] = [];
  let head = 4;
  const log = {
    read: async (since: number): Promise<LogRead> => {
      reads.push(since);
      if (since === 0) return { kind: 'snapshot', revision: head, table: [entry('a')], fingerprint: head };
      return {
        kind: 'changes',
        changes: since < 5 && head >= 5 ? [{ revision: 5, node: 'b', routes: entry('b') }] : [],
      };
    },
  };
  const notifier = { wait: () => new Promise<void>(() => {}), generation: () => 0 } as unknown as Notifier;
  const messages = createWatchMessages({ now: () => clock });
  const deps = { log, notifier, options: { pollMs: 60_000, bookmarkMs: 60_000 }, messages };
  const take = async (coalesce: boolean, n: number) => {
    const ac = new AbortController();
    const out: RoutesChange[] = [];
    for await (const m of watchRoutes(deps, 0, ac.signal, { coalesce })) if (out.push(m) === n) break;
    ac.abort();
    return out;
  };
  const [first] = await take(true, 1);
  head = 5; // a node joined
  clock = 900;
  reads.length = 0;
  const joined = await take(true, 2);
  assert.equal(joined[0], first, 'the snapshot held');
  assert.deepEqual(joined[1]!.upserts, [entry('b')], 'then the change after it');
  assert.deepEqual(reads, [4], 'the table was not read again');
  reads.length = 0;
  const older = await take(false, 1);
  assert.equal(older[0]!.revision, 5, 'a watcher without the flag gets the table as it is');
  clock = 2000;
  reads.length = 0;
  const later = await take(true, 1);
  assert.equal(later[0]!.revision, 5);
  assert.deepEqual(reads, [0], 'a snapshot older than a second is read again');
});

/** A route log of one change per commit (a node each), with a NOTIFY per commit, and the reads counted. */
function committedLog() {
  const entry = (node: string) => ({
    node,
    underlayAddress: '192.0.2.1',
    vtepMac: '02:00:c0:00:02:01',
    blockCidrs: [],
  });
  const changes: { revision: number; node: string; routes: ReturnType<typeof entry> }[] = [];
  let wake: (() => void)[] = [];
  let generation = 0;
  const counted = { queries: 0 };
  const commit = () => {
    const revision = changes.length + 1;
    changes.push({ revision, node: `n${revision}`, routes: entry(`n${revision}`) });
    generation++;
    const w = wake;
    wake = [];
    for (const f of w) f();
  };
  const log = {
    read: async (since: number): Promise<LogRead> => {
      counted.queries++;
      return { kind: 'changes', changes: changes.filter((c) => c.revision > since) };
    },
  };
  const notifier = {
    wait: (_ch: string, ms: number, signal: AbortSignal) =>
      new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(t);
          signal.removeEventListener('abort', done);
          resolve();
        };
        const t = setTimeout(done, ms);
        wake.push(done);
        signal.addEventListener('abort', done, { once: true });
      }),
    generation: () => generation,
  } as unknown as Notifier;
  /** Streams over this log with the clock, from revision 1 (committed now), each message with when it came. */
  const streams = (n: number, flush: FlushClock, signal: AbortSignal) => {
    const deps = {
      log: shareLogReads(log, notifier),
      notifier,
      options: { pollMs: 60_000, bookmarkMs: 60_000 },
      messages: createWatchMessages(),
      flush,
    };
    commit();
    const got: { at: number; m: RoutesChange }[][] = Array.from({ length: n }, () => []);
    const done = Promise.all(
      got.map(async (out) => {
        for await (const m of watchRoutes(deps, 1, signal, { coalesce: true })) out.push({ at: performance.now(), m });
      }),
    );
    return { got, done };
  };
  return { changes, commit, counted, streams };
}

test('over its budget, a busy coalescing stream takes a storm of changes once per flush tick, every change in order, and a change after a quiet spell at once', async () => {
  const { changes, commit, counted, streams: start } = committedLog();
  // A budget of 2 messages a second: the first change's 3 messages are over it already, and the storm below (3
  // streams, a change every 5 ms) far over it.
  const flush = createFlushClock(100, 2);
  const ac = new AbortController();
  const { got, done: streams } = start(3, flush, ac.signal);
  try {
    await new Promise((r) => setTimeout(r, 20));
    // Quiet: a change goes out at once.
    let t0 = performance.now();
    commit();
    await new Promise((r) => setTimeout(r, 20));
    for (const out of got) {
      assert.equal(out.length, 1);
      assert.ok(out[0]!.at - t0 < 15, `sent ${(out[0]!.at - t0).toFixed(1)} ms after the commit`);
    }
    // A storm: a change every 5 ms for 150 ms. Each stream gets a message per tick (100 ms), not one per change.
    counted.queries = 0;
    for (let i = 0; i < 30; i++) {
      commit();
      await new Promise((r) => setTimeout(r, 5));
    }
    await new Promise((r) => setTimeout(r, 250));
    for (const out of got) {
      const storm = out.slice(1);
      assert.ok(storm.length >= 2 && storm.length <= 4, `${storm.length} messages for 30 changes`);
      assert.equal(storm[storm.length - 1]!.m.revision, 32, 'the last change arrived');
      const nodes = storm.flatMap((x) => x.m.upserts.map((u) => u.node));
      assert.deepEqual(
        nodes,
        changes.slice(2).map((c) => c.node),
        'every change, in order, once',
      );
      for (let i = 1; i < storm.length; i++) assert.ok(storm[i]!.m.revision > storm[i - 1]!.m.revision);
    }
    assert.ok(counted.queries <= 8, `the streams read together at each tick: ${counted.queries} reads`);
    // Quiet again for longer than a tick: the next change goes out at once.
    t0 = performance.now();
    commit();
    await new Promise((r) => setTimeout(r, 20));
    for (const out of got) {
      assert.equal(out[out.length - 1]!.m.revision, 33);
      assert.ok(out[out.length - 1]!.at - t0 < 15);
    }
  } finally {
    ac.abort();
    commit(); // wakes the streams, which end
    await streams;
  }
});

test('under its budget, a replica sends each change at once, however soon after the one before', async () => {
  const { commit, streams: start } = committedLog();
  // A small cluster: 3 streams, a change every 30 ms (as a registration, then its block, then its removal) is 100
  // messages a second, under a budget of 1,000.
  const ac = new AbortController();
  const { got, done } = start(3, createFlushClock(250, 1000), ac.signal);
  try {
    await new Promise((r) => setTimeout(r, 20));
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      commit();
      await new Promise((r) => setTimeout(r, 30));
      for (const out of got) {
        assert.equal(out.length, i + 1);
        const late = out[i]!.at - t0;
        assert.ok(late < 20, `change ${i + 1} sent ${late.toFixed(1)} ms after its commit (flush period 250 ms)`);
      }
    }
  } finally {
    ac.abort();
    commit();
    await done;
  }
});

test("the flush clock's rate is the messages of the last second: over the budget, then under it as the second passes", () => {
  let t = 0;
  const clock = createFlushClock(250, 100, () => t);
  clock.sent(100);
  assert.equal(clock.congested(), false, '100 messages a second is the budget, not over it');
  clock.sent(50);
  assert.equal(clock.congested(), true);
  t = 1500; // the 150 of the first second: half still within the last second
  assert.equal(clock.congested(), false, 'about 75 messages in the last second');
  clock.sent(60);
  assert.equal(clock.congested(), true, 'about 135 in the last second');
  t = 3600; // a quiet spell longer than a second: nothing counted from before
  assert.equal(clock.congested(), false);
  clock.sent(101);
  assert.equal(clock.congested(), true);
});
