import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Phase } from '../kernel-table/dataplane.js';
import { FDB } from './fdb.js';
import { filterKind } from './filter.js';
import { ipsetKind } from './ipsets.js';
import { natKind } from './nat.js';
import { NEIGHBOUR } from './neighbours.js';
import { POD_LINK } from './pod-links.js';
import { POD_ROUTE } from './pod-routes.js';
import { DEPENDENTS, DRIVER_MODULES, ORDER, OVERLAY_KINDS } from './registry.js';
import { ROUTE } from './routes.js';
import { DEVICE } from './vxlan-device.js';

/**
 * The order derived from the drivers' placements is the order the agent ran before it was derived: the literal list
 * that drivers/order.ts held, copied here.
 */
const LITERAL_ORDER: readonly Phase[] = [
  { kind: DEVICE, op: 'update' },
  { kind: natKind(4), op: 'update' },
  { kind: natKind(4), op: 'delete' },
  { kind: natKind(6), op: 'update' },
  { kind: natKind(6), op: 'delete' },
  { kind: POD_ROUTE, op: 'delete' },
  { kind: POD_LINK, op: 'update' },
  { kind: POD_ROUTE, op: 'update' },
  { kind: POD_LINK, op: 'delete' },
  { kind: ROUTE, op: 'delete' },
  { kind: NEIGHBOUR, op: 'update' },
  { kind: FDB, op: 'update' },
  { kind: ROUTE, op: 'update' },
  { kind: FDB, op: 'delete' },
  { kind: NEIGHBOUR, op: 'delete' },
  ...([4, 6] as const).flatMap((f): Phase[] => [
    { kind: ipsetKind(f), op: 'update' },
    { kind: filterKind(f), op: 'update' },
    { kind: filterKind(f), op: 'delete' },
    { kind: ipsetKind(f), op: 'delete' },
  ]),
];

test('the order derived from the placements is the literal order the agent ran before', () => {
  // Today the registry places exactly these kinds, so this is the whole order, phase for phase; a kind added later
  // puts its phases among them, and the old ones keep their order.
  const kinds = new Set(LITERAL_ORDER.map((p) => p.kind));
  assert.deepEqual(
    ORDER.filter((p) => kinds.has(p.kind)),
    LITERAL_ORDER,
  );
  for (const kind of [NEIGHBOUR, FDB, ROUTE]) {
    assert.ok(DEPENDENTS[DEVICE]?.includes(kind), `${kind} lives on the device: read back when it is re-made`);
    assert.ok(OVERLAY_KINDS.includes(kind), `${kind} is of the overlay`);
  }
});

test('every declared placement holds in the order', () => {
  const at = (kind: string, op: Phase['op']) => ORDER.findIndex((p) => p.kind === kind && p.op === op);
  const placements = DRIVER_MODULES.flatMap((m) => m.placements);
  assert.equal(new Set(ORDER.map((p) => `${p.kind} ${p.op}`)).size, ORDER.length, 'each phase once');
  for (const p of placements) {
    const [update, remove] = [at(p.kind, 'update'), at(p.kind, 'delete')];
    assert.ok(update >= 0, `${p.kind} writes`);
    if (p.deletes === 'never') assert.equal(remove, -1, `${p.kind} has no delete phase`);
    else if (p.deletes === 'first') assert.ok(remove >= 0 && remove < update, `${p.kind} deletes before it writes`);
    else assert.ok(remove > update, `${p.kind} writes before it deletes`);
    for (const kind of [...(p.livesOn ?? []), ...(p.dependsOn ?? [])]) {
      assert.ok(
        placements.some((q) => q.kind === kind),
        `${p.kind} depends on ${kind}, which a module places`,
      );
      assert.ok(at(kind, 'update') < update, `${kind} is written before ${p.kind}`);
      if (remove >= 0 && at(kind, 'delete') >= 0)
        assert.ok(remove < at(kind, 'delete'), `${p.kind} is removed before ${kind}`);
    }
  }
  assert.deepEqual(
    [...new Set(ORDER.map((p) => p.kind))].sort(),
    placements.map((p) => p.kind).sort(),
    'every placed kind has its phases, and nothing else does',
  );
});
