import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import { createClient } from '../lib/grpc/client.js';
import { errorCodeOf } from '../lib/grpc/errors.js';
import { AllocateRequest, IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/** Pool rules (etags, disabling, selectors, uses), reservations, specific and sticky addresses, over gRPC on PostgreSQL. */
let cp: TestControlPlane;
let ipam: ReturnType<typeof createClient<typeof IpamServiceService>>;

before(async () => {
  cp = await startTestControlPlane();
  ipam = createClient(IpamServiceService, cp.address, { security: cp.security });
});
after(async () => {
  ipam?.close();
  await cp?.stop();
});

const req = (handle: string, extra: Record<string, unknown> = {}) => ({
  handle,
  node: 'n1',
  podNamespace: 'ns',
  podName: handle.split('/')[0]!,
  containerId: handle.split('/')[0]!,
  ...extra,
});
const code = (c: status, domain?: string, msg?: RegExp) => (e: { code: number; details: string }) =>
  e.code === c && (!domain || errorCodeOf(e) === domain) && (!msg || msg.test(e.details));

describe('pool rules', () => {
  test('an update with a stale etag fails with ABORTED and changes nothing', async () => {
    const { pool } = await ipam.createPool({ name: 'main', cidr: '10.1.0.0/16', blockPrefixLength: 26 });
    const { pool: updated } = await ipam.updatePool({ name: 'main', etag: pool!.etag, cooldownSeconds: 5 });
    assert.equal(updated!.cooldownSeconds, 5);
    assert.notEqual(updated!.etag, pool!.etag);
    await assert.rejects(
      ipam.updatePool({ name: 'main', etag: pool!.etag, cooldownSeconds: 99 }),
      code(status.ABORTED, 'ipam.stale_etag', /read it again/),
    );
    const [now] = (await ipam.listPools({})).pools;
    assert.equal(now!.cooldownSeconds, 5);
    await assert.rejects(
      ipam.updatePool({ name: 'main', etag: now!.etag, nodeSelector: 'zone in (a' }),
      code(status.INVALID_ARGUMENT, 'ipam.invalid_node_selector'),
    );
    await assert.rejects(ipam.updatePool({ name: 'nope', etag: '"1.1"', disabled: true }), code(status.NOT_FOUND));
  });

  test('a disabled pool makes no new allocations but keeps its live ones (drain)', async () => {
    await ipam.createPool({ name: 'old', cidr: '10.2.0.0/16', blockPrefixLength: 26 });
    const held = (await ipam.allocate(req('d1/eth0', { pool: 'old' }))).allocation!;
    const old = (await ipam.listPools({})).pools.find((p) => p.name === 'old')!;
    await ipam.updatePool({ name: 'old', etag: old.etag, disabled: true });
    await assert.rejects(
      ipam.allocate(req('d2/eth0', { pool: 'old' })),
      code(status.FAILED_PRECONDITION, 'ipam.pool_disabled'),
    );
    const fallback = (await ipam.allocate(req('d3/eth0'))).allocation!;
    assert.equal(fallback.pool, 'main', 'allocations without a pool skip the disabled one');
    const drained = (await ipam.listPools({})).pools.find((p) => p.name === 'old')!;
    assert.equal(drained.liveAllocations, 1);
    await ipam.release({ handle: 'd1/eth0' });
    assert.equal((await ipam.listPools({})).pools.find((p) => p.name === 'old')!.liveAllocations, 0, 'drained');
    assert.ok(held.address.startsWith('10.2.'));
  });

  test("node and namespace selectors choose pools; a pod's pool wins over its namespace's", async () => {
    await ipam.createPool({ name: 'zone-b', cidr: '10.3.0.0/16', blockPrefixLength: 26, nodeSelector: 'zone=b' });
    await ipam.createPool({ name: 'shop', cidr: '10.4.0.0/16', blockPrefixLength: 26, namespaceSelector: 'team=shop' });
    await ipam.createPool({ name: 'lb', cidr: '10.5.0.0/16', blockPrefixLength: 26, allowedUses: ['loadbalancer'] });
    const onB = (await ipam.allocate(req('s1/eth0', { node: 'nb', nodeLabels: { zone: 'b' } }))).allocation!;
    assert.equal(onB.pool, 'zone-b');
    const onA = (await ipam.allocate(req('s2/eth0', { node: 'na', nodeLabels: { zone: 'a' } }))).allocation!;
    assert.equal(onA.pool, 'main');
    const shop = (await ipam.allocate(req('s3/eth0', { node: 'na', namespaceLabels: { team: 'shop' } }))).allocation!;
    assert.equal(shop.pool, 'shop');
    const asked = (await ipam.allocate(req('s4/eth0', { node: 'na', pool: 'main', namespacePool: 'shop' })))
      .allocation!;
    assert.equal(asked.pool, 'main');
    await assert.rejects(
      ipam.allocate(req('s5/eth0', { node: 'na', pool: 'zone-b', nodeLabels: { zone: 'a' } })),
      code(status.FAILED_PRECONDITION, 'ipam.node_not_selected'),
    );
    const lb = (await ipam.allocate(req('s6/eth0', { node: 'na', use: 'loadbalancer' }))).allocation!;
    assert.equal(lb.pool, 'lb');
    await assert.rejects(
      ipam.allocate(req('s7/eth0', { use: 'teleport' })),
      code(status.INVALID_ARGUMENT, 'ipam.invalid_use'),
    );
  });
});

describe('reservations', () => {
  test('reserved addresses are never allocated and count as reserved', async () => {
    await ipam.createPool({ name: 'res', cidr: '10.9.0.0/24', blockPrefixLength: 28, nodeSelector: 'res' });
    const { reservation } = await ipam.createReservation({
      pool: 'res',
      first: '10.9.0.0',
      last: '10.9.0.9',
      reason: 'routers',
    });
    assert.equal(reservation!.name, `pools/res/reservations/${reservation!.name.split('/').pop()}`);
    const got: string[] = [];
    for (let i = 0; i < 6; i++)
      got.push(
        (await ipam.allocate(req(`r${i}/eth0`, { node: 'rn', pool: 'res', nodeLabels: { res: '' } }))).allocation!
          .address,
      );
    assert.deepEqual(got, ['10.9.0.10', '10.9.0.11', '10.9.0.12', '10.9.0.13', '10.9.0.14', '10.9.0.15']);
    const next = (await ipam.allocate(req('r6/eth0', { node: 'rn', pool: 'res', nodeLabels: { res: '' } })))
      .allocation!;
    assert.equal(next.address, '10.9.0.16', 'the second block starts past the reservation');
    const u = (await ipam.getUtilization({ pool: 'res', includeBlocks: true })).pools[0]!;
    assert.deepEqual(u.counts, { total: '256', allocated: 7, coolingDown: 0, reserved: '10', free: '239' });
    assert.deepEqual(u.blocks[0]!.counts, { total: '16', allocated: 6, coolingDown: 0, reserved: '10', free: '0' });
  });

  test('a range with live allocations cannot be reserved; bad ranges are refused; a reservation can be removed', async () => {
    await assert.rejects(
      ipam.createReservation({ pool: 'res', cidr: '10.9.0.8/29' }),
      code(status.FAILED_PRECONDITION, 'ipam.reservation_in_use', /10\.9\.0\.10 \(r0\/eth0\)/),
    );
    await assert.rejects(
      ipam.createReservation({ pool: 'res', cidr: '10.10.0.0/29' }),
      code(status.INVALID_ARGUMENT, 'ipam.invalid_reservation', /inside pool res/),
    );
    await assert.rejects(
      ipam.createReservation({ pool: 'res', first: '10.9.0.9', last: '10.9.0.1' }),
      code(status.INVALID_ARGUMENT),
    );
    const { reservations } = await ipam.listReservations({ pool: 'res' });
    assert.equal(reservations.length, 1);
    assert.deepEqual(await ipam.deleteReservation({ name: reservations[0]!.name }), { deleted: true });
    await assert.rejects(
      ipam.deleteReservation({ name: 'reservations/1' }),
      code(status.INVALID_ARGUMENT, 'ipam.invalid_name'),
    );
  });
});

describe('specific and sticky addresses', () => {
  test('a pod gets the exact address it asks for, checked against pools, reservations, holders and nodes', async () => {
    await ipam.createPool({ name: 'exact', cidr: '10.20.0.0/16', blockPrefixLength: 26, nodeSelector: 'exact' });
    const labels = { nodeLabels: { exact: '' } };
    const a = (await ipam.allocate(req('e1/eth0', { node: 'ex1', addresses: ['10.20.5.7'], ...labels }))).allocation!;
    assert.deepEqual([a.address, a.blockCidr, a.node], ['10.20.5.7', '10.20.5.0/26', 'ex1']);
    await assert.rejects(
      ipam.allocate(req('e2/eth0', { node: 'ex1', addresses: ['10.20.5.7'], ...labels })),
      code(status.ALREADY_EXISTS, 'ipam.address_in_use', /held by e1\/eth0/),
    );
    await assert.rejects(
      ipam.allocate(req('e3/eth0', { node: 'ex2', addresses: ['10.20.5.8'], ...labels })),
      code(status.FAILED_PRECONDITION, 'ipam.address_on_other_node', /node ex1/),
    );
    await assert.rejects(
      ipam.allocate(req('e4/eth0', { node: 'ex1', addresses: ['192.0.2.1'], ...labels })),
      code(status.FAILED_PRECONDITION, 'ipam.address_not_in_pool'),
    );
    await ipam.createReservation({ pool: 'exact', first: '10.20.9.1', last: '10.20.9.1' });
    await assert.rejects(
      ipam.allocate(req('e5/eth0', { node: 'ex1', addresses: ['10.20.9.1'], ...labels })),
      code(status.FAILED_PRECONDITION, 'ipam.address_reserved'),
    );
    await assert.rejects(
      ipam.allocate(req('e6/eth0', { node: 'ex1', addresses: ['10.20.5.300'], ...labels })),
      code(status.INVALID_ARGUMENT),
    );
    // The block's own allocation order steps past the address taken as a specific one.
    const seq = [];
    for (let i = 0; i < 9; i++)
      seq.push(
        (await ipam.allocate(req(`e-seq-${i}/eth0`, { node: 'ex1', pool: 'exact', ...labels }))).allocation!.address,
      );
    assert.ok(!seq.includes('10.20.5.7'));
    assert.equal(new Set(seq).size, 9);
  });

  test('an owner gets its address back within the sticky time, even while it cools down; nobody else does', async () => {
    await ipam.createPool({
      name: 'sticky',
      cidr: '10.30.0.0/30',
      blockPrefixLength: 30,
      cooldownSeconds: 0,
      stickySeconds: 60,
      nodeSelector: 'sticky',
    });
    const labels = { node: 'st', pool: 'sticky', nodeLabels: { sticky: '' } };
    const first = (await ipam.allocate(req('web-0-a/eth0', { ...labels, owner: 'statefulset/shop/web-0' })))
      .allocation!;
    for (const h of ['x1', 'x2', 'x3']) await ipam.allocate(req(`${h}/eth0`, labels));
    await ipam.release({ handle: 'web-0-a/eth0' });
    await assert.rejects(
      ipam.allocate(req('thief/eth0', labels)),
      code(status.RESOURCE_EXHAUSTED),
      'held for its owner',
    );
    const again = (await ipam.allocate(req('web-0-b/eth0', { ...labels, owner: 'statefulset/shop/web-0' })))
      .allocation!;
    assert.equal(again.address, first.address);
    assert.equal(again.owner, 'statefulset/shop/web-0');
  });
});

describe('paging', () => {
  test('lists come in pages that cover every item once; a foreign or mangled token is refused', async () => {
    for (let i = 0; i < 7; i++) await ipam.allocate(req(`pg-${i}/eth0`, { node: 'pager', pool: 'main' }));
    const seen: string[] = [];
    let token = '';
    let pages = 0;
    do {
      const r = await ipam.listAllocations({ node: 'pager', pageSize: 3, pageToken: token });
      assert.ok(r.allocations.length <= 3);
      seen.push(...r.allocations.map((a) => a.handle));
      token = r.nextPageToken;
      pages++;
    } while (token);
    assert.equal(pages, 3);
    assert.deepEqual([...seen].sort(), Array.from({ length: 7 }, (_, i) => `pg-${i}/eth0`).sort());
    const pools = await ipam.listPools({ pageSize: 2 });
    assert.equal(pools.pools.length, 2);
    await assert.rejects(
      ipam.listAllocations({ pageToken: pools.nextPageToken }),
      code(status.INVALID_ARGUMENT, 'ipam.invalid_page_token'),
    );
    await assert.rejects(
      ipam.listPools({ pageToken: 'garbage' }),
      code(status.INVALID_ARGUMENT, 'ipam.invalid_page_token'),
    );
    await assert.rejects(ipam.listPools({ pageSize: 5000 }), code(status.INVALID_ARGUMENT, 'ipam.invalid_page_size'));
    const h1 = await ipam.listAllocationHistory({ node: 'pager', pageSize: 4 });
    const h2 = await ipam.listAllocationHistory({ node: 'pager', pageSize: 4, pageToken: h1.nextPageToken });
    assert.equal(h1.entries.length + h2.entries.length, 7);
    assert.equal(h2.nextPageToken, '');
  });
});

describe('batch allocation', () => {
  test('a batch allocates each item on its own: good ones succeed, a bad one reports its error, retries are idempotent', async () => {
    const requests = Array.from({ length: 40 }, (_, i) =>
      AllocateRequest.fromPartial(req(`batch-${i}/eth0`, { node: `bn-${i % 4}`, pool: 'main' })),
    );
    requests[7] = AllocateRequest.fromPartial(req('batch-bad/eth0', { pool: 'no-such-pool' }));
    const { results } = await ipam.batchAllocate({ requests });
    assert.equal(results.length, 40);
    assert.deepEqual([results[7]!.errorCode, results[7]!.allocations.length], ['ipam.pool_not_found', 0]);
    const ok = results.filter((r, i) => i !== 7);
    assert.ok(ok.every((r) => r.errorCode === '' && r.allocations.length === 1));
    assert.equal(new Set(ok.map((r) => r.allocations[0]!.address)).size, 39);
    const again = await ipam.batchAllocate({ requests });
    assert.deepEqual(
      again.results.map((r) => r.allocations[0]?.address),
      results.map((r) => r.allocations[0]?.address),
    );
    await assert.rejects(
      ipam.batchAllocate({
        requests: Array.from({ length: 1001 }, (_, i) => AllocateRequest.fromPartial(req(`x${i}/eth0`))),
      }),
      code(status.INVALID_ARGUMENT, 'ipam.invalid_requests'),
    );
  });
});
