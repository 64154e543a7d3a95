import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodePageToken, encodePageToken, pageSize } from './paging.js';

test('page tokens round-trip and refuse tokens of other lists or garbage', () => {
  const t = encodePageToken('pools', ['default']);
  assert.deepEqual(decodePageToken('pools', t), ['default']);
  assert.equal(decodePageToken('pools', ''), null);
  assert.throws(() => decodePageToken('allocations', t), /page_token/);
  assert.throws(() => decodePageToken('pools', 'not-a-token!'), /page_token/);
  assert.equal(pageSize(0, 100, 1000), 100);
  assert.throws(() => pageSize(1001, 100, 1000), /over 1000/);
});
