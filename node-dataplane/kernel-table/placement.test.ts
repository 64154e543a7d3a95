import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dependentsOf, phaseOrder } from './placement.js';

/** The order derivation on made-up kinds (drivers/registry.test.ts has the agent's). */
const phases = (order: { kind: string; op: string }[]) => order.map((p) => `${p.kind} ${p.op}`);

test('a kind is written after what it depends on and removed before it; ties follow the list', () => {
  assert.deepEqual(phases(phaseOrder([{ kind: 'a' }, { kind: 'b' }])), [
    'a update',
    'a delete',
    'b update',
    'b delete',
  ]);
  assert.deepEqual(phases(phaseOrder([{ kind: 'chain', dependsOn: ['set'] }, { kind: 'set' }])), [
    'set update',
    'chain update',
    'chain delete',
    'set delete',
  ]);
  assert.deepEqual(phases(phaseOrder([{ kind: 'route', dependsOn: ['link'], deletes: 'first' }, { kind: 'link' }])), [
    'route delete',
    'link update',
    'route update',
    'link delete',
  ]);
});

test('a kind that never deletes has no delete phase; one named but not placed is passed over', () => {
  assert.deepEqual(
    phases(
      phaseOrder([
        { kind: 'device', deletes: 'never' },
        { kind: 'entry', livesOn: ['device'], dependsOn: ['x'] },
      ]),
    ),
    ['device update', 'entry update', 'entry delete'],
  );
  assert.deepEqual(
    dependentsOf([{ kind: 'device' }, { kind: 'a', livesOn: ['device'] }, { kind: 'b', livesOn: ['device'] }]),
    {
      device: ['a', 'b'],
    },
  );
});

test('the same placements give the same order; a cycle or a kind placed twice is refused', () => {
  const placements = [{ kind: 'c', dependsOn: ['b'] }, { kind: 'b', dependsOn: ['a'] }, { kind: 'a' }];
  assert.deepEqual(phaseOrder(placements), phaseOrder(placements));
  assert.throws(
    () =>
      phaseOrder([
        { kind: 'a', dependsOn: ['b'] },
        { kind: 'b', dependsOn: ['a'] },
      ]),
    /cycle/,
  );
  assert.throws(() => phaseOrder([{ kind: 'a' }, { kind: 'a' }]), /twice/);
});
