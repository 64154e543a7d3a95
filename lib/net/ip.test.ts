import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Address4 } from 'ip-address';
import { containsAddress, formatAddress, formatCidr4, formatIPv4, parseAddress, parseCidr4, parseIPv4 } from './ip.js';

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

test('IPv4 addresses parse to the same value by the canonical fast path as through ip-address', () => {
  const canonical = [
    '0.0.0.0',
    '10.244.0.5',
    '192.0.2.255',
    '255.255.255.255',
    '1.2.3.4',
    '100.64.9.99',
    '249.250.199.0',
  ];
  for (const text of canonical) {
    const value = new Address4(text).bigInt();
    assert.deepEqual(parseAddress(text), { family: 4, value }, text);
    assert.equal(formatAddress(4, value), text);
  }
  // Not canonical: left to ip-address, which decides as before.
  for (const text of ['256.1.1.1', '1.2.3', '1.2.3.4.5', ' 1.2.3.4', '1.2.3.4/32', '1.2.3.4 ', '-1.2.3.4', '010.1.1.1'])
    assert.throws(() => parseAddress(text), /not an IPv4 or IPv6 address/, text);
  assert.deepEqual(parseAddress('fd00::5').family, 6);
});
