import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildRouteTable, diffRouteTables, validateRegistration } from './route-table.js';

const node = (name: string, ip: string) => ({ name, underlayAddress: ip, vtepMac: '02:00:00:00:00:01', registeredAt: new Date(0) });

test('blocks land behind their node; unregistered nodes are left out', () => {
  const t = buildRouteTable([node('a', '192.0.2.1')], new Map([['10.0.0.64/26', 'a'], ['10.0.0.0/26', 'a'], ['10.0.1.0/26', 'ghost']]));
  assert.deepEqual([...t.keys()], ['a']);
  assert.deepEqual(t.get('a')!.blockCidrs, ['10.0.0.0/26', '10.0.0.64/26']);
});

test('diff reports new, changed and removed nodes only', () => {
  const before = buildRouteTable([node('a', '192.0.2.1'), node('b', '192.0.2.2')], new Map([['10.0.0.0/26', 'a']]));
  const after = buildRouteTable([node('a', '192.0.2.1'), node('c', '192.0.2.3')], new Map([['10.0.0.0/26', 'a'], ['10.0.0.64/26', 'c']]));
  const d = diffRouteTables(before, after);
  assert.deepEqual(d.upserts.map((u) => u.node), ['c']);
  assert.deepEqual(d.deletes, ['b']);
  assert.deepEqual(diffRouteTables(after, after), { upserts: [], deletes: [] });
});

test('registration rejects bad addresses and MACs with a message naming the field', () => {
  assert.throws(() => validateRegistration({ name: 'n1', underlayAddress: '192.0.2', vtepMac: '02:00:00:00:00:01' }), /underlay address/);
  assert.throws(() => validateRegistration({ name: 'n1', underlayAddress: '192.0.2.1', vtepMac: 'zz' }), /VTEP MAC/);
  assert.throws(() => validateRegistration({ name: 'bad name', underlayAddress: '192.0.2.1', vtepMac: '02:00:00:00:00:01' }), /node name/);
});
