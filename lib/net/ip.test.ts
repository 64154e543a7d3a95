import { test } from 'node:test';
import assert from 'node:assert/strict';
import { containsAddress, formatCidr4, formatIPv4, parseCidr4, parseIPv4 } from './ip.js';

test('CIDRs parse strictly and say how to fix host bits', () => {
  assert.deepEqual(parseCidr4('10.244.0.0/16'), { base: parseIPv4('10.244.0.0'), prefixLength: 16 });
  assert.throws(() => parseCidr4('10.244.0.1/16'), /did you mean 10\.244\.0\.0\/16/);
  assert.throws(() => parseCidr4('10.244.0.0/33'), /prefix length must be 0-32/);
  assert.throws(() => parseCidr4('10.244.0/16'), /not an IPv4 CIDR/);
  assert.throws(() => parseCidr4('10.244.0.0'), /not an IPv4 CIDR/);
  assert.throws(() => parseCidr4('300.1.1.0/24'), /not an IPv4 CIDR/);
});

test('addresses round-trip, including the top of the space', () => {
  for (const a of ['0.0.0.0', '10.244.3.7', '255.255.255.255', '192.0.2.128'])
    assert.equal(formatIPv4(parseIPv4(a)), a);
  assert.equal(formatCidr4(parseCidr4('128.0.0.0/1')), '128.0.0.0/1');
  assert.ok(containsAddress(parseCidr4('10.244.0.64/26'), parseIPv4('10.244.0.127')));
  assert.ok(!containsAddress(parseCidr4('10.244.0.64/26'), parseIPv4('10.244.0.128')));
});
