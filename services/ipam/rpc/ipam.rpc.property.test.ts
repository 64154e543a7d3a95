import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { IpamServiceService } from '../../../gen/weft/ipam/v1/ipam.js';
import { fuzzUnaryRequests, mostly, storeStandIn } from '../../../test/support/request-fuzz.js';
import { createIpamHandlers } from './ipam.rpc.js';

/**
 * Every unary IPAM RPC with random requests of its own message type (test/support/request-fuzz.ts): refused as
 * INVALID_ARGUMENT or passed on to the store, never INTERNAL. Strings are often plausible (names, CIDRs, addresses,
 * selectors, resource names), so that validation is passed as well as failed.
 */
const name = fc.constantFrom('default', 'pool-a', 'x1');
const strings = (field: string): fc.Arbitrary<string> => {
  if (/cidr|aggregateCidr/i.test(field))
    return mostly(fc.constantFrom('10.244.0.0/16', '10.0.0.0/8', 'fd00:10:244::/48', '10.244.0.1/16', '0.0.0.0/0'));
  if (/address|first|last/i.test(field)) return mostly(fc.constantFrom('10.244.0.5', 'fd00::5', '10.244.0.5/32'));
  if (/selector/i.test(field))
    return mostly(fc.constantFrom('', 'zone=a', 'zone=a,env in (prod,stage),!spot', 'env notin (', 'a b'));
  if (/^node$/.test(field)) return mostly(fc.constantFrom('node-1', 'n.example'));
  if (/handle/i.test(field)) return mostly(fc.constantFrom('abc123/eth0'));
  if (/podUid/.test(field)) return mostly(fc.constantFrom('', '6f1c1a9e-3b4d-4f57-9a0e-1d2c3b4a5f60'));
  if (/attemptId/.test(field)) return mostly(fc.constantFrom('', 'a-1'));
  if (/use|purpose/i.test(field)) return mostly(fc.constantFrom('workload', 'pods', 'gateway'));
  if (/namespace$/i.test(field)) return mostly(fc.constantFrom('x', 'kube-system'));
  if (/^name$/.test(field))
    return mostly(fc.constantFrom('default', 'pools/default/reservations/1', 'aggregates/a/prefixes/2'));
  if (/etag|token/i.test(field)) return mostly(fc.base64String({ maxLength: 24 }));
  if (/time|since|until|at$/i.test(field)) return mostly(fc.constantFrom('2026-01-01T00:00:00Z', ''));
  return mostly(name);
};

test('IPAM: every unary RPC refuses a bad request as INVALID_ARGUMENT or passes it on, never INTERNAL', async (t) => {
  const handlers = createIpamHandlers({
    repo: storeStandIn(),
    prefixes: storeStandIn(),
    notifier: storeStandIn(),
    pollMs: 1,
  });
  const counts = await fuzzUnaryRequests(IpamServiceService as never, handlers as never, strings, {
    numRuns: 300,
    interruptAfterTimeLimit: 250,
  });
  t.diagnostic(`reached the store / refused, per RPC: ${JSON.stringify(counts)}`);
  const names = Object.keys(counts);
  assert.ok(names.length >= 10, `only ${names.length} RPCs fuzzed`);
  assert.ok(
    names.filter((n) => counts[n]!.refused > 0).length >= names.length / 2,
    `few RPCs refused anything: ${JSON.stringify(counts)}`,
  );
});
