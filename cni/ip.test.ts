import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { isIP } from './ip.js';

test('isIP answers as node:net does', () => {
  const samples = [
    '10.244.1.7',
    '0.0.0.0',
    '255.255.255.255',
    '256.1.1.1',
    '01.2.3.4',
    '1.2.3',
    '1.2.3.4.5',
    '1.2.3.4 ',
    ' 1.2.3.4',
    '',
    '::',
    '::1',
    'fe80::1',
    'fe80::1%eth0',
    'fd00:10:244::7',
    '2001:db8::',
    '2001:db8:0:0:0:0:0:1',
    '::ffff:10.0.0.1',
    '1:2:3:4:5:6:7:8',
    '1:2:3:4:5:6:7:8:9',
    '1::2::3',
    'gggg::1',
    '12345::',
    ':::',
    '1:2:3:4:5:6:1.2.3.4',
    'fe80::1%',
    '10.244.1.7/32',
    'not an address',
    '1.2.3.4\n',
    'FE80::ABCD',
  ];
  for (const s of samples) assert.equal(isIP(s), net.isIP(s), JSON.stringify(s));
});
