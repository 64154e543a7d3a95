import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import { createClient } from '../lib/grpc/client.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService, type WatchRoutesResponse } from '../gen/weft/routes/v1/routes.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/** The routes service over real gRPC: registrations and IPAM's block affinities become one route table. */
let cp: TestControlPlane;
let routes: ReturnType<typeof createClient<typeof RoutesServiceService>>;
let ipam: ReturnType<typeof createClient<typeof IpamServiceService>>;

before(async () => {
  cp = await startTestControlPlane();
  routes = createClient(RoutesServiceService, cp.address, { security: cp.security });
  ipam = createClient(IpamServiceService, cp.address, { security: cp.security });
  await ipam.createPool({ name: 'default', cidr: '10.244.0.0/16', blockPrefixLength: 26 });
});

after(async () => {
  routes?.close();
  ipam?.close();
  await cp?.stop();
});

async function nextMatching(
  it: AsyncIterator<WatchRoutesResponse>,
  pred: (m: WatchRoutesResponse) => boolean,
  ms = 10_000,
) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const r = await Promise.race([
      it.next(),
      new Promise<null>((res) => setTimeout(() => res(null), deadline - Date.now())),
    ]);
    if (!r || r.done) break;
    if (pred(r.value)) return r.value;
  }
  throw new Error('expected change did not arrive');
}

test('a watcher sees a node, then its new block, then its removal, with rising revisions', async () => {
  const ac = new AbortController();
  const it = routes.watchRoutes({ node: 'watcher' }, { signal: ac.signal })[Symbol.asyncIterator]();
  try {
    const snap = (await it.next()).value as WatchRoutesResponse;
    assert.equal(snap.reset, true);
    await routes.registerNode({ name: 'n1', underlayAddress: '192.0.2.11', vtepMac: '02:57:C0:00:02:0B' });
    const reg = await nextMatching(it, (m) => m.upserts.some((u) => u.node === 'n1'));
    assert.ok(reg.revision > snap.revision);
    assert.equal(reg.upserts[0]!.vtepMac, '02:57:c0:00:02:0b');
    const { allocation } = await ipam.allocate({
      handle: 'p1/eth0',
      node: 'n1',
      pool: '',
      podNamespace: '',
      podName: '',
      containerId: '',
    });
    const withBlock = await nextMatching(it, (m) => m.upserts.some((u) => u.node === 'n1' && u.blockCidrs.length > 0));
    assert.deepEqual(withBlock.upserts.find((u) => u.node === 'n1')!.blockCidrs, [allocation!.blockCidr]);
    assert.ok(withBlock.revision > reg.revision);
    assert.deepEqual(await routes.deregisterNode({ name: 'n1' }), { deregistered: true });
    const gone = await nextMatching(it, (m) => m.deletes.includes('n1'));
    assert.ok(gone.revision > withBlock.revision);
  } finally {
    ac.abort();
  }
});

test('a new watcher starts from a snapshot that holds every node and block', async () => {
  await routes.registerNode({ name: 'n2', underlayAddress: '198.51.100.12', vtepMac: '02:57:c6:33:64:0c' });
  const { allocation } = await ipam.allocate({
    handle: 'p2/eth0',
    node: 'n2',
    pool: '',
    podNamespace: '',
    podName: '',
    containerId: '',
  });
  const ac = new AbortController();
  const it = routes.watchRoutes({ node: 'n2' }, { signal: ac.signal })[Symbol.asyncIterator]();
  try {
    const snap = await nextMatching(
      it,
      (m) => m.reset || m.upserts.some((u) => u.node === 'n2' && u.blockCidrs.length > 0),
    );
    const deadline = Date.now() + 5000;
    let n2 = snap.upserts.find((u) => u.node === 'n2');
    while ((!n2 || n2.blockCidrs.length === 0) && Date.now() < deadline)
      n2 = (await nextMatching(it, (m) => m.upserts.some((u) => u.node === 'n2'))).upserts.find((u) => u.node === 'n2');
    assert.deepEqual(n2!.blockCidrs, [allocation!.blockCidr]);
    assert.equal(n2!.underlayAddress, '198.51.100.12');
  } finally {
    ac.abort();
  }
});

test('bad registrations get INVALID_ARGUMENT and register nothing', async () => {
  const before = (await routes.listNodes({})).nodes.length;
  for (const bad of [
    { name: 'n3', underlayAddress: '192.0.2', vtepMac: '02:57:c0:00:02:0d' },
    { name: 'n3', underlayAddress: '192.0.2.13', vtepMac: 'not-a-mac' },
    { name: '', underlayAddress: '192.0.2.13', vtepMac: '02:57:c0:00:02:0d' },
  ]) {
    await assert.rejects(
      routes.registerNode(bad),
      (e: { code: number; details: string }) => e.code === status.INVALID_ARGUMENT && e.details.length > 10,
    );
  }
  assert.equal((await routes.listNodes({})).nodes.length, before);
});

test('ListDepartedNodes names the nodes that were registered and deregistered, until they register again; never a name it never knew', async () => {
  await routes.registerNode({ name: 'd1', underlayAddress: '192.0.2.31', vtepMac: '02:57:c0:00:02:1f' });
  await routes.registerNode({ name: 'd2', underlayAddress: '192.0.2.32', vtepMac: '02:57:c0:00:02:20' });
  const before = Date.now();
  await routes.deregisterNode({ name: 'd1' });
  await routes.deregisterNode({ name: 'd2' });
  await routes.deregisterNode({ name: 'never-registered' });
  await routes.registerNode({ name: 'd2', underlayAddress: '192.0.2.32', vtepMac: '02:57:c0:00:02:20' });
  const { nodes } = await routes.listDepartedNodes({ names: ['d1', 'd2', 'never-registered', 'na', 'd1'] });
  assert.deepEqual(
    nodes.map((n) => n.name),
    ['d1'],
  );
  assert.ok(Math.abs(nodes[0]!.departTime!.getTime() - before) < 5000, 'with the time it departed');
  assert.deepEqual((await routes.listDepartedNodes({ names: [] })).nodes, []);
  await assert.rejects(
    routes.listDepartedNodes({ names: Array.from({ length: 10_001 }, (_, i) => `n-${i}`) }),
    (e: { code: number; details: string }) => e.code === status.INVALID_ARGUMENT && /at most 10000/.test(e.details),
  );
});
