import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { createKernelTable, type KernelTable } from './table.js';

type V = { via: string };
const v = (via: string): V => ({ via });
const pending = (t: KernelTable<V>) => ({
  updates: Object.fromEntries([...t.pendingUpdates].sort(([a], [b]) => a.localeCompare(b))),
  deletes: Object.fromEntries([...t.pendingDeletes].sort(([a], [b]) => a.localeCompare(b))),
});

test('a new table needs a resync; what is pending is the difference between desired and the cache', () => {
  const t = createKernelTable<V>();
  assert.equal(t.needsResync, true);
  t.setDesired('a', v('1'));
  t.setDesired('b', v('2'));
  t.beginResync();
  assert.equal(t.needsResync, false);
  assert.deepEqual(
    t.replaceCache(
      new Map([
        ['a', v('1')],
        ['b', v('9')],
        ['s', v('3')],
      ]),
    ),
    [],
    'a first read-back finds no drift',
  );
  assert.deepEqual(
    pending(t),
    { updates: { b: v('2') }, deletes: { s: v('3') } },
    'a right entry is not pending; a wrong one is; a stale one is deleted with the value the kernel holds',
  );
  t.updated('b');
  t.deleted('s');
  assert.deepEqual(pending(t), { updates: {}, deletes: {} });
  assert.deepEqual([...t.cache.keys()].sort(), ['a', 'b']);
});

test('a change of one desired entry makes exactly that entry pending; setting an entry to what the kernel holds clears it', () => {
  const t = createKernelTable<V>();
  t.replaceCache(new Map([['a', v('1')]]));
  t.setDesired('a', v('1'));
  assert.deepEqual(pending(t), { updates: {}, deletes: {} });
  t.setDesired('a', v('2'));
  assert.deepEqual(pending(t), { updates: { a: v('2') }, deletes: {} });
  t.setDesired('a', v('1'));
  assert.deepEqual(pending(t), { updates: {}, deletes: {} }, 'back to what the kernel holds: nothing to do');
  t.deleteDesired('a');
  assert.deepEqual(pending(t), { updates: {}, deletes: { a: v('1') } });
  t.setDesired('a', v('1'));
  assert.deepEqual(pending(t), { updates: {}, deletes: {} });
});

test('a resync reports as drift only entries the cache held as desired that the kernel lost or changed', () => {
  const t = createKernelTable<V>();
  t.replaceDesired(
    new Map([
      ['a', v('1')],
      ['b', v('2')],
      ['c', v('3')],
    ]),
  );
  t.replaceCache(
    new Map([
      ['a', v('1')],
      ['b', v('2')],
    ]),
  );
  // c was never written: its absence is not drift. a changed and b vanished behind the agent's back: drift.
  const drift = t.replaceCache(new Map([['a', v('x')]]));
  assert.deepEqual(drift.map((d) => d.key).sort(), ['a', 'b']);
  assert.deepEqual(Object.keys(pending(t).updates).sort(), ['a', 'b', 'c']);
});

test('a mark for resync that arrives during a read-back is kept for the next one', () => {
  const t = createKernelTable<V>();
  t.beginResync();
  t.markForResync();
  t.replaceCache(new Map());
  assert.equal(t.needsResync, true);
});

test('a write whose result differs from the desired value leaves the entry pending', () => {
  const t = createKernelTable<V>();
  t.replaceCache(new Map());
  t.setDesired('a', v('1'));
  t.updated('a', v('other'));
  assert.deepEqual(pending(t).updates, { a: v('1') });
  t.updated('a');
  assert.deepEqual(pending(t).updates, {});
});

// Sequence tests: the pending changes are a function of the final desired entries and the cache alone, whether the
// changes come one by one, in the reverse order (last change of each key only), or collapsed into one replacement.
const keys = fc.constantFrom('a', 'b', 'c', 'd', 'e');
const value = fc.constantFrom('1', '2', '3').map(v);
const event = fc.oneof(
  fc.tuple(fc.constant('set' as const), keys, value),
  fc.tuple(fc.constant('delete' as const), keys, fc.constant(null)),
);
const cacheArb = fc.dictionary(keys, value);
const play = (t: KernelTable<V>, op: 'set' | 'delete', k: string, val: V | null) => {
  if (op === 'set') t.setDesired(k, val!);
  else t.deleteDesired(k);
};

test('sequences: one by one, reversed and collapsed give the same pending changes', () => {
  fc.assert(
    fc.property(
      fc.array(event, { maxLength: 30 }),
      cacheArb,
      fc.array(event, { maxLength: 10 }),
      (events, cache, before) => {
        const make = () => {
          const t = createKernelTable<V>();
          // Some history before the cache is read: it must not matter.
          for (const [op, k, val] of before) play(t, op, k, val);
          t.replaceCache(new Map(Object.entries(cache)));
          return t;
        };
        const final = new Map<string, V>();
        for (const [k, val] of [...before, ...events].map(([op, k, val]) => [k, op === 'set' ? val : null] as const)) {
          if (val) final.set(k, val);
          else final.delete(k);
        }
        const oneByOne = make();
        for (const [op, k, val] of events) play(oneByOne, op, k, val);
        const reversed = make();
        const lastPerKey = new Map(events.map(([op, k, val]) => [k, op === 'set' ? val : null] as const));
        for (const [k, val] of [...lastPerKey].reverse()) play(reversed, val ? 'set' : 'delete', k, val);
        const collapsed = make();
        collapsed.replaceDesired(final);
        const expected = {
          updates: Object.fromEntries(
            [...final].filter(([k, val]) => cache[k]?.via !== val.via).sort(([a], [b]) => a.localeCompare(b)),
          ),
          deletes: Object.fromEntries(
            Object.entries(cache)
              .filter(([k]) => !final.has(k))
              .sort(([a], [b]) => a.localeCompare(b)),
          ),
        };
        assert.deepEqual(pending(oneByOne), expected);
        assert.deepEqual(pending(reversed), expected);
        assert.deepEqual(pending(collapsed), expected);
      },
    ),
    { numRuns: 300 },
  );
});
