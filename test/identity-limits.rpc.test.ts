import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import { createClient, type PromiseClient } from '../lib/grpc/client.js';
import { errorCodeOf, RETRY_AFTER_KEY } from '../lib/grpc/errors.js';
import { AllocateRequest, IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';
import { eventually } from './support/eventually.js';

/**
 * Limits per identity (lib/auth/limits.ts, WEFT_LIMIT_*) on the real control plane with real node certificates, set
 * low: each node identity below is used by one test only, so each test sees its own budget.
 */
let cp: TestControlPlane;
const closers: { close(): void }[] = [];

async function clientsOf(kind: 'node' | 'controller', name: string) {
  const { security } = await cp.pki.issue(kind, name);
  const ipam = createClient(IpamServiceService, cp.address, { security });
  const routes = createClient(RoutesServiceService, cp.address, { security });
  closers.push(ipam, routes);
  return { ipam, routes };
}

/** The gRPC error a promise (or the first read of a stream) fails with. */
async function failure(
  p: Promise<unknown>,
): Promise<{ code: number; details: string; errorCode: string | undefined; metadata: { get(k: string): unknown[] } }> {
  try {
    await p;
  } catch (err) {
    const e = err as { code: number; details: string; metadata: { get(k: string): unknown[] } };
    return { code: e.code, details: e.details, errorCode: errorCodeOf(err), metadata: e.metadata };
  }
  assert.fail('expected the call to be refused');
}

let admin: PromiseClient<typeof IpamServiceService>;

before(async () => {
  cp = await startTestControlPlane({
    settings: { limitNodeStreams: '2', limitNodeRate: '1', limitNodeBurst: '12', limitNodeAllocations: '3' },
  });
  admin = createClient(IpamServiceService, cp.address, { security: cp.security });
  closers.push(admin);
  await admin.createPool({ name: 'p', cidr: '10.60.0.0/16', blockPrefixLength: 26 });
});

after(async () => {
  for (const c of closers) c.close();
  await cp?.stop();
});

test('a node past its call rate is refused RESOURCE_EXHAUSTED with a retry hint; other identities are unaffected', async () => {
  const { ipam } = await clientsOf('node', 'rate-node');
  for (let i = 0; i < 12; i++) await ipam.listPools({});
  const refused = await failure(ipam.listPools({}));
  assert.equal(refused.code, status.RESOURCE_EXHAUSTED);
  assert.equal(refused.errorCode, 'auth.rate_limited');
  assert.match(
    refused.details,
    /node:rate-node calls faster than the 1 calls\/s \(burst 12\).*WEFT_LIMIT_NODE_RATE, WEFT_LIMIT_NODE_BURST.*retry in \d+ ms/,
  );
  const retryAfter = Number(refused.metadata.get(RETRY_AFTER_KEY)[0]);
  assert.ok(retryAfter > 0 && retryAfter <= 1000, `retry-after-ms ${retryAfter}`);
  // Another node, a controller and admin call as usual.
  await (await clientsOf('node', 'rate-other')).ipam.listPools({});
  await (await clientsOf('controller', 'east')).ipam.listPools({});
  for (let i = 0; i < 20; i++) await admin.listPools({});
  // After the hint, the node may call again.
  await new Promise((r) => setTimeout(r, retryAfter + 20));
  await ipam.listPools({});
});

test('a node holding its most streams is refused another, naming the setting; a stream that ends frees its slot', async () => {
  const { routes } = await clientsOf('node', 'stream-node');
  const acs = [new AbortController(), new AbortController()];
  const open = acs.map((ac) =>
    routes.watchRoutes({ node: 'stream-node' }, { signal: ac.signal })[Symbol.asyncIterator](),
  );
  try {
    for (const it of open) assert.equal((await it.next()).done, false, 'each stream answers with its snapshot');
    const third = routes.watchRoutes({ node: 'stream-node' }, {})[Symbol.asyncIterator]();
    const refused = await failure(third.next());
    assert.equal(refused.code, status.RESOURCE_EXHAUSTED);
    assert.equal(refused.errorCode, 'auth.too_many_streams');
    assert.match(refused.details, /node:stream-node already has 2 open streams.*WEFT_LIMIT_NODE_STREAMS=2/);
    // Another node has its own slots.
    const other = await clientsOf('node', 'stream-other');
    const ac = new AbortController();
    const it = other.routes.watchRoutes({ node: 'stream-other' }, { signal: ac.signal })[Symbol.asyncIterator]();
    assert.equal((await it.next()).done, false);
    ac.abort();
    // The client ends one of its streams: the server frees the slot, and a new stream opens.
    acs[0]!.abort();
    await open[0]!.next().catch(() => {});
    const ac2 = new AbortController();
    await eventually(
      'a stream slot freed by the ended stream',
      async () => {
        const again = routes.watchRoutes({ node: 'stream-node' }, { signal: ac2.signal })[Symbol.asyncIterator]();
        return (await again.next()).done === false;
      },
      5000,
      100,
    );
    ac2.abort();
  } finally {
    for (const ac of acs) ac.abort();
  }
});

test('a node holding its most live allocations is refused more (ipam.node_allocation_limit); retries, admin and releases behave', async () => {
  const { ipam } = await clientsOf('node', 'alloc-node');
  const req = (handle: string) => ({
    handle,
    node: 'alloc-node',
    pool: 'p',
    podNamespace: 'default',
    podName: handle,
    containerId: handle,
  });
  const first = (await ipam.allocate(req('h1'))).allocation!;
  await ipam.allocate(req('h2'));
  await ipam.allocate(req('h3'));
  const refused = await failure(ipam.allocate(req('h4')));
  assert.equal(refused.code, status.RESOURCE_EXHAUSTED);
  assert.equal(refused.errorCode, 'ipam.node_allocation_limit');
  assert.match(refused.details, /node alloc-node holds 3 live allocations.*WEFT_LIMIT_NODE_ALLOCATIONS=3/);
  // A retry of a handle it holds still answers, with the same address.
  assert.equal((await ipam.allocate(req('h1'))).allocation!.address, first.address);
  // In a batch, each item past the limit fails on its own; a held handle passes.
  const batch = await ipam.batchAllocate({
    requests: [AllocateRequest.fromPartial(req('h1')), AllocateRequest.fromPartial(req('h5'))],
  });
  assert.equal(batch.results[0]!.errorCode, '');
  assert.equal(batch.results[0]!.allocations[0]!.address, first.address);
  assert.equal(batch.results[1]!.errorCode, 'ipam.node_allocation_limit');
  // Admin is not limited: it may allocate on that node.
  await admin.allocate(req('h-admin'));
  // Released addresses no longer count: after releasing two of its own (four live, now two), the node allocates again.
  await ipam.release({ handle: 'h2' });
  await ipam.release({ handle: 'h-admin' });
  assert.ok((await ipam.allocate(req('h6'))).allocation!.address);
  const live = await admin.listAllocations({ node: 'alloc-node' });
  assert.deepEqual(live.allocations.map((a) => a.handle).sort(), ['h1', 'h3', 'h6']);
});
