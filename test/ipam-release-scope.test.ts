import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from '../lib/grpc/client.js';
import { peerIdentity } from '../lib/grpc/credentials.js';
import { AllocateRequest, IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/**
 * A node's Release frees only its own allocations, in the release's own statement (services/ipam/store release with
 * a ReleaseScope), not only in the authorization check that runs before it. The control plane here identifies callers
 * by their certificates but does not enforce the table: a node's Release reaches the handler for a handle another node
 * holds, which is what a race between the check ("held by nobody") and the release ("now held by node2") amounts to.
 */
let cp: TestControlPlane;
const closers: { close(): void }[] = [];

before(async () => {
  cp = await startTestControlPlane({ access: { enforce: false, identify: (call) => peerIdentity(call) } });
});
after(async () => {
  for (const c of closers) c.close();
  await cp?.stop();
});

test("a node's release leaves another node's allocation of the handle alone; the holder's release frees it", async () => {
  const admin = createClient(IpamServiceService, cp.address, { security: cp.security });
  closers.push(admin);
  await admin.createPool({ name: 'p', cidr: '10.62.0.0/16', blockPrefixLength: 26 });
  const held = await admin.allocate(
    AllocateRequest.fromPartial({ handle: 'race/eth0', node: 'node2', pool: 'p', containerId: 'race' }),
  );
  const as = async (node: string) => {
    const c = createClient(IpamServiceService, cp.address, { security: (await cp.pki.issue('node', node)).security });
    closers.push(c);
    return c;
  };
  const node1 = await as('node1');
  const node2 = await as('node2');
  assert.deepEqual(
    await node1.release({ handle: 'race/eth0' }),
    { released: false, address: '', addresses: [] },
    "node1 frees nothing of node2's",
  );
  const live = (await admin.listAllocations({ node: 'node2' })).allocations.map((a) => a.address);
  assert.deepEqual(live, [held.allocation!.address], 'node2 still holds its address');
  assert.equal((await node2.release({ handle: 'race/eth0' })).released, true);
});
