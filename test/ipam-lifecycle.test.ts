import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import { createClient } from '../lib/grpc/client.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/** Blocks come and go: a per-node maximum, empty blocks back to the pool, a gone node's addresses released. */
let cp: TestControlPlane;
let ipam: ReturnType<typeof createClient<typeof IpamServiceService>>;
let routes: ReturnType<typeof createClient<typeof RoutesServiceService>>;

before(async () => {
  // Short graces and a fast sweep so that the test sees the housekeeping happen.
  cp = await startTestControlPlane({
    settings: { sweepSeconds: '1', blockGraceSeconds: '1', nodeGoneGraceSeconds: '1' },
  });
  ipam = createClient(IpamServiceService, cp.address, { security: cp.security });
  routes = createClient(RoutesServiceService, cp.address, { security: cp.security });
});
after(async () => {
  ipam?.close();
  routes?.close();
  await cp?.stop();
});

const waitFor = async (what: string, probe: () => Promise<boolean>, ms = 10_000) => {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await probe()) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}`);
};

test("a node holds at most the pool's maximum of blocks", async () => {
  await ipam.createPool({
    name: 'capped',
    cidr: '10.80.0.0/24',
    blockPrefixLength: 29,
    maxBlocksPerNode: 2,
    cooldownSeconds: 0,
  });
  await routes.registerNode({ name: 'capped-node', underlayAddress: '192.0.2.60', vtepMac: '02:00:00:00:00:60' });
  for (let i = 0; i < 16; i++) await ipam.allocate({ handle: `cap-${i}/eth0`, node: 'capped-node', pool: 'capped' });
  await assert.rejects(
    ipam.allocate({ handle: 'cap-16/eth0', node: 'capped-node', pool: 'capped' }),
    (e: { code: number }) => e.code === status.RESOURCE_EXHAUSTED,
  );
  const other = (await ipam.allocate({ handle: 'cap-other/eth0', node: 'capped-other', pool: 'capped' })).allocation!;
  assert.ok(other.address.startsWith('10.80.0.'), 'another node still gets a block');
  for (let i = 0; i < 16; i++) await ipam.release({ handle: `cap-${i}/eth0` });
  await ipam.release({ handle: 'cap-other/eth0' });
});

test('an empty block returns to its pool after the grace period, and its withdrawal reaches the watchers', async () => {
  await ipam.createPool({ name: 'churn', cidr: '10.81.0.0/24', blockPrefixLength: 28, cooldownSeconds: 0 });
  await routes.registerNode({ name: 'churn-a', underlayAddress: '192.0.2.61', vtepMac: '02:00:00:00:00:61' });
  const a = (await ipam.allocate({ handle: 'churn-1/eth0', node: 'churn-a', pool: 'churn' })).allocation!;
  const ac = new AbortController();
  const watch = ipam.watchBlockAffinities({}, { signal: ac.signal })[Symbol.asyncIterator]();
  await watch.next();
  await ipam.release({ handle: 'churn-1/eth0' });
  try {
    let deleted = false;
    const end = Date.now() + 10_000;
    while (!deleted && Date.now() < end)
      deleted = ((await watch.next()).value as { deletes: string[] }).deletes.includes(a.blockCidr);
    assert.ok(deleted, "the block's withdrawal is streamed");
  } finally {
    ac.abort();
  }
  const u = (await ipam.getUtilization({ pool: 'churn' })).pools[0]!;
  assert.deepEqual(u.nodes, [], 'no node holds a block of the pool any more');
  const b = (await ipam.allocate({ handle: 'churn-2/eth0', node: 'churn-b', pool: 'churn' })).allocation!;
  assert.equal(b.blockCidr, a.blockCidr, 'another node can claim the same block now');
  const hist = await ipam.listAllocationHistory({ handle: 'churn-1/eth0' });
  assert.equal(hist.entries[0]!.allocation!.blockCidr, a.blockCidr, 'history still names the old block');
  const { problems } = await ipam.checkConsistency({});
  assert.deepEqual(problems, []);
});

test('the IPAM sweeper releases only what Weft owns: an external allocation (node na, or a node never registered) survives; a node that deregistered for good has its addresses released; one that registered again keeps them', async () => {
  await routes.registerNode({ name: 'alive', underlayAddress: '192.0.2.62', vtepMac: '02:00:00:00:00:62' });
  await ipam.allocate({ handle: 'alive-1/eth0', node: 'alive', pool: 'churn' });
  // External systems call the IPAM API too: a load balancer's address on node "na", an allocation for a name the
  // routes service never knew. Neither is Weft's to sweep.
  await ipam.allocate({ handle: 'lb-frontend/vip', node: 'na', pool: 'churn' });
  await ipam.allocate({ handle: 'ghost-1/eth0', node: 'ghost', pool: 'churn' });
  await routes.registerNode({ name: 'leaving', underlayAddress: '192.0.2.63', vtepMac: '02:00:00:00:00:63' });
  await ipam.allocate({ handle: 'leaving-1/eth0', node: 'leaving', pool: 'churn' });
  await routes.registerNode({ name: 'back', underlayAddress: '192.0.2.64', vtepMac: '02:00:00:00:00:64' });
  await ipam.allocate({ handle: 'back-1/eth0', node: 'back', pool: 'churn' });
  await routes.deregisterNode({ name: 'leaving' });
  // Made after the node departed: not the departed node's (its sweep releases only what it allocated before it left).
  await new Promise((r) => setTimeout(r, 50));
  await ipam.allocate({ handle: 'leaving-late/eth0', node: 'leaving', pool: 'churn' });
  // Deregistered, then registered again (its agent still runs): it is a live node again.
  await routes.deregisterNode({ name: 'back' });
  await routes.registerNode({ name: 'back', underlayAddress: '192.0.2.64', vtepMac: '02:00:00:00:00:64' });
  await waitFor("the departed node's allocations to be released", async () => {
    const live = (await ipam.listAllocations({ pool: 'churn' })).allocations.map((a) => a.handle);
    return !live.includes('leaving-1/eth0');
  });
  // Several more sweeps (1 s each, grace 1 s) past the one that released the departed node.
  await new Promise((r) => setTimeout(r, 3500));
  const live = (await ipam.listAllocations({ pool: 'churn' })).allocations.map((a) => a.handle).sort();
  // churn-2/eth0 (the test above) is on churn-b, a node never registered either.
  assert.deepEqual(live, [
    'alive-1/eth0',
    'back-1/eth0',
    'churn-2/eth0',
    'ghost-1/eth0',
    'lb-frontend/vip',
    'leaving-late/eth0',
  ]);
});
