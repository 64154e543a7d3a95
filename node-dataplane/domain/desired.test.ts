import { test } from 'node:test';
import assert from 'node:assert/strict';
import { computeDesired, driftRepairs, emptyState, planChanges, planSize, type RemoteNode } from './desired.js';

const a: RemoteNode = { node: 'a', underlayAddress: '192.0.2.11', vtepMac: '02:00:00:00:00:0A', blockCidrs: ['10.244.0.0/26'] };
const b: RemoteNode = { node: 'b', underlayAddress: '198.51.100.12', vtepMac: '02:00:00:00:00:0b', blockCidrs: ['10.244.0.64/26', '10.244.1.0/26'] };

test('desired state has one FDB entry per remote node and a neighbour and route per block, none for itself', () => {
  const d = computeDesired('a', [a, b]);
  assert.deepEqual([...d.fdb.keys()], ['02:00:00:00:00:0b']);
  assert.deepEqual([...d.routes.keys()].sort(), ['10.244.0.64/26', '10.244.1.0/26']);
  assert.equal(d.routes.get('10.244.1.0/26')!.gateway, '10.244.1.0');
  assert.equal(d.neighbours.get('10.244.1.0')!.mac, '02:00:00:00:00:0b');
});

test('plan adds neighbours and FDB before routes, and deletes routes first', () => {
  const add = planChanges(computeDesired('a', [a, b]), emptyState());
  assert.deepEqual(add.phases.map((p) => p.entries[0]!.kind), ['neighbour', 'fdb', 'route']);
  const del = planChanges(emptyState(), computeDesired('a', [a, b]));
  assert.deepEqual(del.phases.map((p) => `${p.op}:${p.entries[0]!.kind}`), ['delete:route', 'delete:fdb', 'delete:neighbour']);
});

test('an unchanged kernel needs an empty plan; a moved node changes only its FDB entry', () => {
  const d = computeDesired('a', [a, b]);
  assert.equal(planSize(planChanges(d, computeDesired('a', [a, b]))), 0);
  const moved = computeDesired('a', [a, { ...b, underlayAddress: '198.51.100.99' }]);
  const p = planChanges(moved, d);
  assert.equal(planSize(p), 1);
  assert.equal(p.phases[0]!.entries[0]!.kind, 'fdb');
});

test('the same events applied in any order give the same desired state', () => {
  const forward = computeDesired('c', [a, b]);
  const reversed = computeDesired('c', [b, a]);
  assert.equal(planSize(planChanges(forward, reversed)), 0);
});

test('drift repairs are the re-adds of entries the kernel held exactly so after the previous pass', () => {
  const d = computeDesired('a', [a, b]);
  const actual = computeDesired('a', [a, b]);
  actual.routes.delete('10.244.1.0/26');
  actual.fdb.delete('02:00:00:00:00:0b');
  const p = planChanges(d, actual);
  assert.deepEqual(driftRepairs(p, d).map((e) => `${e.kind}:${e.key}`).sort(), ['fdb:02:00:00:00:00:0b', 'route:10.244.1.0/26']);
  assert.deepEqual(driftRepairs(p, null), [], 'nothing counts as drift when the previous state is unknown (first pass)');
  // A node that moved gets a new FDB entry: a change of desired state, not drift.
  const moved = computeDesired('a', [a, { ...b, underlayAddress: '198.51.100.99' }]);
  assert.deepEqual(driftRepairs(planChanges(moved, d), d), []);
});
