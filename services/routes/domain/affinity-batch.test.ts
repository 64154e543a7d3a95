import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { createAffinityBatch, type AffinityMessage } from './affinity-batch.js';

/** The follower's write of one message to its copy of the affinities (route-log.repository.ts applyAffinities). */
function write(table: Map<string, string>, msg: AffinityMessage): void {
  if (msg.reset) table.clear();
  else for (const cidr of [...msg.deletes, ...msg.upserts.map((u) => u.cidr)]) table.delete(cidr);
  for (const u of msg.upserts) table.set(u.cidr, u.node);
}

const sorted = (t: Map<string, string>) => [...t].sort(([a], [b]) => a.localeCompare(b));

test('a merged batch writes the same affinities as its messages written one by one, from any starting table', () => {
  const cidr = fc.constantFrom('10.244.0.0/26', '10.244.0.64/26', '10.244.0.128/26', '10.244.1.0/26', '10.244.2.0/26');
  const node = fc.constantFrom('n1', 'n2', 'n3');
  const message = fc.record({
    reset: fc.boolean(),
    upserts: fc.array(fc.record({ cidr, node }), { maxLength: 4 }),
    deletes: fc.array(cidr, { maxLength: 3 }),
  });
  fc.assert(
    fc.property(
      fc.array(fc.tuple(cidr, node), { maxLength: 5 }),
      fc.array(message, { minLength: 1, maxLength: 12 }),
      (start, msgs) => {
        const oneByOne = new Map(start);
        const merged = new Map(start);
        const batch = createAffinityBatch();
        for (const m of msgs) {
          write(oneByOne, m);
          batch.add(m);
        }
        assert.equal(batch.messages, msgs.length);
        const taken = batch.take();
        write(merged, taken);
        assert.deepEqual(sorted(merged), sorted(oneByOne));
        // A reset anywhere in the batch makes the merged message a reset (it replaces what was held before it).
        assert.equal(
          taken.reset,
          msgs.some((m) => m.reset),
        );
        assert.ok(batch.empty);
      },
    ),
  );
});

test('a batch of block claims is one message naming each block once; take empties it', () => {
  const batch = createAffinityBatch();
  assert.ok(batch.empty);
  for (let i = 0; i < 1000; i++)
    batch.add({ reset: false, upserts: [{ cidr: `10.${i >> 8}.${i & 255}.0/26`, node: `n${i}` }], deletes: [] });
  batch.add({ reset: false, upserts: [], deletes: ['10.0.5.0/26'] });
  const m = batch.take();
  assert.equal(m.upserts.length, 999);
  assert.deepEqual(m.deletes, ['10.0.5.0/26']);
  assert.ok(batch.empty);
  assert.deepEqual(batch.take(), { reset: false, upserts: [], deletes: [] });
});
