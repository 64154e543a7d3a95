import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateAllocationRequest, validatePoolSpec } from './pool.js';

test('a pool spec is normalised; each bad field is named in the error', () => {
  const p = validatePoolSpec({ name: 'default', cidr: '10.244.0.0/16', blockPrefixLength: 26 });
  assert.equal(p.cidr.prefixLength, 16);
  assert.throws(
    () => validatePoolSpec({ name: 'default', cidr: '0.0.0.0/4', blockPrefixLength: 26 }),
    /larger than a \/8/,
  );
  assert.throws(
    () => validatePoolSpec({ name: 'default', cidr: '10.244.0.0/24', blockPrefixLength: 23 }),
    /larger than the pool/,
  );
  assert.throws(
    () => validatePoolSpec({ name: 'default', cidr: '10.244.0.0/24', blockPrefixLength: 0 }),
    /between 1 and 32/,
  );
  assert.throws(
    () => validatePoolSpec({ name: 'default', cidr: '10.0.0.0/8', blockPrefixLength: 12 }),
    /more than 2\^16 addresses; use \/16 or longer/,
  );
  assert.throws(
    () => validatePoolSpec({ name: 'default', cidr: '10.0.0.0/16', blockPrefixLength: 26, cooldownSeconds: -1 }),
    /cool-down/,
  );
  // IPv6: a /48 of /122 blocks is fine (2^74 blocks: nothing enumerates them); blocks over 2^16 addresses are not.
  const v6 = validatePoolSpec({ name: 'v6', cidr: 'fd00:10:244::/48', blockPrefixLength: 122 });
  assert.equal(v6.cidr.family, 6);
  assert.equal(v6.cooldownSeconds, 30);
  assert.throws(() => validatePoolSpec({ name: 'v6', cidr: 'fd00:10:244::/48', blockPrefixLength: 64 }), /2\^16/);
  assert.throws(
    () => validatePoolSpec({ name: 'v6', cidr: 'fd00:10:244::1/48', blockPrefixLength: 122 }),
    /did you mean fd00:10:244::\/48/,
  );
  assert.throws(() => validatePoolSpec({ name: 'v6', cidr: 'fd00::/129', blockPrefixLength: 122 }), /0-128 for IPv6/);
  assert.throws(() => validatePoolSpec({ name: '-x', cidr: '10.244.0.0/24', blockPrefixLength: 26 }), /pool name/);
});

test('allocation requests: handle and node are checked, an empty pool means any', () => {
  const r = validateAllocationRequest({
    handle: 'c/eth0',
    node: 'node-1.example',
    pool: '',
    podNamespace: '',
    podName: '',
    containerId: '',
  } as never);
  assert.equal(r.pool, null);
  assert.throws(
    () =>
      validateAllocationRequest({
        handle: 'a\nb',
        node: 'n',
        pool: null,
        families: null,
        podNamespace: '',
        podName: '',
        containerId: '',
      }),
    /printable/,
  );
  assert.throws(
    () =>
      validateAllocationRequest({
        handle: 'h',
        node: 'no spaces',
        pool: null,
        families: null,
        podNamespace: '',
        podName: '',
        containerId: '',
      }),
    /node name/,
  );
});
