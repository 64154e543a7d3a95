import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateAllocationRequest, validatePoolSpec } from './pool.js';

test('a pool spec is normalised; each bad field is named in the error', () => {
  const p = validatePoolSpec({ name: 'default', cidr: '10.244.0.0/16', blockPrefixLength: 26 });
  assert.equal(p.cidr.prefixLength, 16);
  assert.throws(() => validatePoolSpec({ name: 'default', cidr: '0.0.0.0/4', blockPrefixLength: 26 }), /larger than a \/8/);
  assert.throws(() => validatePoolSpec({ name: 'default', cidr: '10.244.0.0/24', blockPrefixLength: 23 }), /larger than the pool/);
  assert.throws(() => validatePoolSpec({ name: 'default', cidr: '10.244.0.0/24', blockPrefixLength: 0 }), /between 1 and 32/);
  assert.throws(() => validatePoolSpec({ name: 'default', cidr: '10.0.0.0/8', blockPrefixLength: 32 }), /more than 2\^20 blocks/);
  assert.throws(() => validatePoolSpec({ name: '-x', cidr: '10.244.0.0/24', blockPrefixLength: 26 }), /pool name/);
});

test('allocation requests: handle and node are checked, an empty pool means any', () => {
  const r = validateAllocationRequest({ handle: 'c/eth0', node: 'node-1.example', pool: '', podNamespace: '', podName: '', containerId: '' } as never);
  assert.equal(r.pool, null);
  assert.throws(() => validateAllocationRequest({ handle: 'a\nb', node: 'n', pool: null, podNamespace: '', podName: '', containerId: '' }), /printable/);
  assert.throws(() => validateAllocationRequest({ handle: 'h', node: 'no spaces', pool: null, podNamespace: '', podName: '', containerId: '' }), /node name/);
});
