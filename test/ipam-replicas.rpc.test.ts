import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createClient, type PromiseClient } from '../lib/grpc/client.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/**
 * Two IPAM replicas on one database: what one is told is what the other answers, also where a replica keeps a cache
 * (the pools it read, for up to a second).
 */
let a: TestControlPlane;
let b: TestControlPlane;
let ipamA: PromiseClient<typeof IpamServiceService>;
let ipamB: PromiseClient<typeof IpamServiceService>;

before(async () => {
  a = await startTestControlPlane();
  b = await startTestControlPlane({ databaseUrl: a.databaseUrl, appDatabaseUrl: a.appDatabaseUrl });
  ipamA = createClient(IpamServiceService, a.address, { security: a.security });
  ipamB = createClient(IpamServiceService, b.address, { security: b.security });
});

after(async () => {
  ipamA?.close();
  ipamB?.close();
  await b?.stop();
  await a?.stop();
});

test('a pool created through one replica is allocated from at once through another, whose pool cache is warm', async () => {
  await ipamA.createPool({ name: 'first', cidr: '10.81.0.0/16', blockPrefixLength: 26 });
  // Replica B reads the pools (its cache now lacks the next one).
  await ipamB.allocate({ handle: 'warm/eth0', node: 'n1', pool: 'first' });
  await ipamA.createPool({ name: 'second', cidr: '10.82.0.0/16', blockPrefixLength: 26 });
  const r = await ipamB.allocate({ handle: 'at-once/eth0', node: 'n1', pool: 'second' });
  assert.match(r.allocations[0]!.address, /^10\.82\./);
  // A pool that exists nowhere is still refused, clearly.
  await assert.rejects(ipamB.allocate({ handle: 'nowhere/eth0', node: 'n1', pool: 'nowhere' }), /nowhere/);
});
