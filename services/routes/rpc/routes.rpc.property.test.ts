import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { RoutesServiceService } from '../../../gen/weft/routes/v1/routes.js';
import { fuzzUnaryRequests, mostly, storeStandIn } from '../../../test/support/request-fuzz.js';
import { createRoutesHandlers } from './routes.rpc.js';

/** Every unary routes RPC with random requests of its own message type: INVALID_ARGUMENT or passed on, never INTERNAL. */
const strings = (field: string): fc.Arbitrary<string> => {
  if (/underlay|address/i.test(field)) return mostly(fc.constantFrom('192.0.2.7', '192.0.2.7/32', 'fd00::1'));
  if (/mac/i.test(field)) return mostly(fc.constantFrom('02:00:c0:00:02:07', '02:00:C0:00:02:07', '02:00:c0:00:02'));
  if (/token/i.test(field)) return mostly(fc.base64String({ maxLength: 24 }));
  return mostly(fc.constantFrom('node-1', 'n.example', '-a'));
};

test('routes: every unary RPC refuses a bad request as INVALID_ARGUMENT or passes it on, never INTERNAL', async (t) => {
  const handlers = createRoutesHandlers({
    nodes: storeStandIn(),
    log: storeStandIn(),
    notifier: storeStandIn(),
    options: { leaseMs: 1000, pollMs: 1000, bookmarkMs: 1000 },
  });
  const counts = await fuzzUnaryRequests(RoutesServiceService as never, handlers as never, strings, {
    numRuns: 300,
    interruptAfterTimeLimit: 500,
  });
  t.diagnostic(`reached the store / refused, per RPC: ${JSON.stringify(counts)}`);
  assert.ok(Object.keys(counts).length >= 3, JSON.stringify(counts));
  assert.ok(
    Object.values(counts).some((c) => c.refused > 0) && Object.values(counts).some((c) => c.reached > 0),
    JSON.stringify(counts),
  );
});
