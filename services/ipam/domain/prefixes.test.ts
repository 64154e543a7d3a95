import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatCidr, parseCidr } from '../../../lib/net/ip.js';
import { lowestFreePrefix } from './prefixes.js';

const c = (s: string) => parseCidr(s);
const carve = (agg: string, taken: string[], len: number) => {
  const r = lowestFreePrefix(c(agg), taken.map(c), len);
  return r ? formatCidr(r) : null;
};

test('the lowest free aligned prefix, around taken ones of any size', () => {
  assert.equal(carve('10.0.0.0/8', [], 16), '10.0.0.0/16');
  assert.equal(carve('10.0.0.0/8', ['10.0.0.0/16'], 16), '10.1.0.0/16');
  assert.equal(carve('10.0.0.0/8', ['10.0.0.0/16', '10.2.0.0/16'], 16), '10.1.0.0/16', 'a hole is reused');
  assert.equal(carve('10.0.0.0/8', ['10.0.0.0/24'], 16), '10.1.0.0/16', 'a small prefix blocks its whole aligned slot');
  assert.equal(carve('10.0.0.0/8', ['10.0.0.0/16'], 24), '10.1.0.0/24');
  assert.equal(carve('10.0.0.0/8', ['10.0.0.0/9'], 9), '10.128.0.0/9');
  assert.equal(carve('10.0.0.0/8', ['10.0.0.0/9', '10.128.0.0/9'], 16), null, 'full');
  assert.equal(carve('10.0.0.0/16', [], 8), null, 'larger than the aggregate');
});

test('IPv6 aggregates carve as readily: /48s out of a /16 (2^32 slots), nothing enumerated', () => {
  assert.equal(carve('fd00::/16', ['fd00::/48', 'fd00:0:1::/48'], 48), 'fd00:0:2::/48');
  assert.equal(carve('fd00::/16', ['fd00::/32'], 48), 'fd00:1::/48');
  assert.equal(carve('fd00::/16', ['fd00::/17'], 17), 'fd00:8000::/17');
});
