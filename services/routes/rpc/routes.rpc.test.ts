import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RoutesServiceService, WatchRoutesResponse } from '../../../gen/weft/routes/v1/routes.js';
import { routesServiceDefinition, toPbWatchMessages } from './routes.rpc.js';

const entry = (i: number) => ({
  node: `node-${i}`,
  underlayAddress: '192.0.2.1',
  vtepMac: '02:00:c0:00:02:01',
  blockCidrs: ['10.244.0.0/26'],
});

test('a WatchRoutes message is encoded once, however many streams write it, to the bytes every client decodes', () => {
  const m: WatchRoutesResponse = {
    revision: 9,
    reset: false,
    upserts: [entry(1)],
    deletes: ['gone'],
    bookmark: false,
    more: false,
  };
  const encode = routesServiceDefinition.watchRoutes.responseSerialize;
  const bytes = encode(m);
  assert.equal(encode(m), bytes, 'the same bytes for every stream');
  assert.deepEqual(bytes, RoutesServiceService.watchRoutes.responseSerialize(m), 'the generated encoding');
  assert.deepEqual(RoutesServiceService.watchRoutes.responseDeserialize(bytes), m);
  const bookmark = { ...m, upserts: [], deletes: [], bookmark: true };
  assert.notEqual(encode(bookmark), encode(bookmark), "a bookmark is one stream's: not kept");
});

test('a message that fits one chunk goes whole, also with upserts and deletes; a larger one in chunks', () => {
  const small = { revision: 3, reset: false, upserts: [entry(1)], deletes: ['x'], bookmark: false };
  assert.deepEqual(toPbWatchMessages(small, true), [{ ...small, more: false }]);
  const big = { ...small, upserts: Array.from({ length: 5000 }, (_, i) => entry(i)) };
  const parts = toPbWatchMessages(big, true);
  assert.ok(parts.length > 1);
  assert.deepEqual(
    parts.map((p) => p.more),
    [...parts.slice(1).map(() => true), false],
  );
  assert.deepEqual(
    parts.flatMap((p) => p.upserts),
    big.upserts,
  );
  assert.deepEqual(
    parts.flatMap((p) => p.deletes),
    ['x'],
  );
});
