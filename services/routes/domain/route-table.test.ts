import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateRegistration } from './route-table.js';

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
