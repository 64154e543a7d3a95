import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { coalesceChanges, entryBytes, validateRegistration, type NodeRoutes } from './route-table.js';

test('registration rejects bad addresses and MACs with a message naming the field', () => {
  assert.throws(
    () => validateRegistration({ name: 'n1', underlayAddress: '192.0.2', vtepMac: '02:00:00:00:00:01' }),
    /underlay address/,
  );
  assert.throws(() => validateRegistration({ name: 'n1', underlayAddress: '192.0.2.1', vtepMac: 'zz' }), /VTEP MAC/);
  assert.throws(
    () => validateRegistration({ name: 'bad name', underlayAddress: '192.0.2.1', vtepMac: '02:00:00:00:00:01' }),
    /node name/,
  );
});

test('coalesced changes give the table of every revision they end at, in increasing revisions, ending at the last, within the budget', () => {
  const node = fc.constantFrom('a', 'b', 'c', 'd', 'e');
  const entry = (n: string, blocks: number): NodeRoutes => ({
    node: n,
    underlayAddress: '192.0.2.1',
    vtepMac: '02:00:c0:00:02:01',
    blockCidrs: Array.from({ length: blocks }, (_, i) => `10.244.${i}.0/26`),
  });
  fc.assert(
    fc.property(
      fc.array(fc.tuple(node, fc.option(fc.nat(6), { nil: null }), fc.integer({ min: 1, max: 3 })), { maxLength: 40 }),
      fc.integer({ min: 1, max: 400 }),
      (ops, budget) => {
        // Revisions with gaps (a rolled-back writer leaves one).
        let revision = 10;
        const changes = ops.map(([n, blocks, step]) => ({
          revision: (revision += step),
          node: n,
          routes: blocks === null ? null : entry(n, blocks),
        }));
        const tableAt = new Map<number, string>();
        const held = new Map<string, NodeRoutes>();
        const show = (t: Map<string, NodeRoutes>) => JSON.stringify([...t].sort(([x], [y]) => x.localeCompare(y)));
        for (const c of changes) {
          if (c.routes) held.set(c.node, c.routes);
          else held.delete(c.node);
          tableAt.set(c.revision, show(held));
        }
        const messages = coalesceChanges(changes, budget);
        const got = new Map<string, NodeRoutes>();
        let prev = 0;
        for (const m of messages) {
          assert.ok(m.revision > prev);
          prev = m.revision;
          assert.equal(m.reset, false);
          assert.equal(m.bookmark, false);
          for (const u of m.upserts) assert.ok(!m.deletes.includes(u.node));
          assert.equal(
            new Set([...m.upserts.map((u) => u.node), ...m.deletes]).size,
            m.upserts.length + m.deletes.length,
          );
          const size =
            m.upserts.reduce((s, u) => s + entryBytes(u), 0) + m.deletes.reduce((s, d) => s + d.length + 2, 0);
          assert.ok(
            size <= budget || m.upserts.length + m.deletes.length === 1,
            'within the budget, or one change alone',
          );
          for (const u of m.upserts) got.set(u.node, u);
          for (const d of m.deletes) got.delete(d);
          assert.equal(show(got), tableAt.get(m.revision), `the table as of revision ${m.revision}`);
        }
        assert.equal(prev, changes.at(-1)?.revision ?? 0, 'the last message is at the last revision');
        const total = changes.reduce((s, c) => s + (c.routes ? entryBytes(c.routes) : c.node.length + 2), 0);
        if (total <= budget) assert.ok(messages.length <= 1, 'changes that fit the budget are one message');
      },
    ),
    { numRuns: 500 },
  );
});
