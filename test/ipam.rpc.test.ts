import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import pg from 'pg';
import { createClient } from '../lib/grpc/client.js';
import { errorCodeOf } from '../lib/grpc/errors.js';
import { AllocateRequest, IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { startIpamTestbed, type IpamTestbed, type TestControlPlane } from './support/control-plane.js';

/** IPAM over real gRPC on a real PostgreSQL. */
let tb: IpamTestbed;
let cp: TestControlPlane;
let ipam: IpamTestbed['ipam'];
let sql: pg.Client;

before(async () => {
  tb = await startIpamTestbed();
  ({ cp, ipam, sql } = tb);
});

after(() => tb?.stop());

async function rejects(p: Promise<unknown>, code: status, domainCode: string, message: RegExp) {
  await assert.rejects(p, (err: { code: number; details: string }) => {
    assert.equal(err.code, code, `status ${err.code}: ${err.details}`);
    assert.equal(errorCodeOf(err), domainCode);
    assert.match(err.details, message);
    return true;
  });
}

describe('pools', () => {
  test('a pool is created and listed', async () => {
    const { pool } = await ipam.createPool({ name: 'main', cidr: '10.32.0.0/16', blockPrefixLength: 26 });
    assert.equal(pool!.cidr, '10.32.0.0/16');
    const { pools } = await ipam.listPools({});
    assert.deepEqual(
      pools.map((p) => [p.name, p.cidr, p.blockPrefixLength]),
      [['main', '10.32.0.0/16', 26]],
    );
  });

  test('bad input is rejected with INVALID_ARGUMENT, a message that says what to fix, and no change', async () => {
    await rejects(
      ipam.createPool({ name: 'x', cidr: '10.33.0.0/33', blockPrefixLength: 26 }),
      status.INVALID_ARGUMENT,
      'invalid_cidr',
      /prefix length/,
    );
    await rejects(
      ipam.createPool({ name: 'x', cidr: '10.33.0/16', blockPrefixLength: 26 }),
      status.INVALID_ARGUMENT,
      'invalid_cidr',
      /not a CIDR/,
    );
    await rejects(
      ipam.createPool({ name: 'x', cidr: '10.33.0.1/16', blockPrefixLength: 26 }),
      status.INVALID_ARGUMENT,
      'invalid_cidr',
      /host bits.*10\.33\.0\.0\/16/,
    );
    await rejects(
      ipam.createPool({ name: 'x', cidr: '10.33.0.0/24', blockPrefixLength: 20 }),
      status.INVALID_ARGUMENT,
      'ipam.invalid_block_prefix_length',
      /larger than the pool/,
    );
    await rejects(
      ipam.createPool({ name: 'Bad Name', cidr: '10.33.0.0/24', blockPrefixLength: 26 }),
      status.INVALID_ARGUMENT,
      'ipam.invalid_pool_name',
      /lowercase/,
    );
    const { pools } = await ipam.listPools({});
    assert.deepEqual(
      pools.map((p) => p.name),
      ['main'],
    );
  });

  test('an overlapping pool is refused (by the database) and nothing changes', async () => {
    await rejects(
      ipam.createPool({ name: 'inner', cidr: '10.32.5.0/24', blockPrefixLength: 26 }),
      status.ALREADY_EXISTS,
      'ipam.pool_overlaps',
      /overlaps existing pool main/,
    );
    await rejects(
      ipam.createPool({ name: 'outer', cidr: '10.0.0.0/8', blockPrefixLength: 26 }),
      status.ALREADY_EXISTS,
      'ipam.pool_overlaps',
      /overlaps/,
    );
    await rejects(
      ipam.createPool({ name: 'main', cidr: '10.40.0.0/16', blockPrefixLength: 26 }),
      status.ALREADY_EXISTS,
      'ipam.pool_exists',
      /already exists/,
    );
    // The constraint is the database's own, not only the service's check.
    await assert.rejects(
      sql.query(
        `INSERT INTO ipam.pools (name, cidr, block_prefix_length, routing_domain_id) SELECT 'sneaky', '10.32.0.0/20', 26, id FROM ipam.routing_domains WHERE name = 'default'`,
      ),
      /pools_no_overlap/,
    );
    assert.equal((await ipam.listPools({})).pools.length, 1);
  });
});

describe('allocations', () => {
  const req = (handle: string, node = 'node-a') => ({
    handle,
    node,
    pool: '',
    podNamespace: 'ns1',
    podName: handle.split('/')[0]!,
    containerId: handle.split('/')[0]!,
  });

  test('allocate is idempotent by handle and records the pod', async () => {
    const a = (await ipam.allocate(req('c1/eth0'))).allocation!;
    const b = (await ipam.allocate(req('c1/eth0'))).allocation!;
    assert.equal(a.address, b.address);
    assert.equal(a.pool, 'main');
    assert.match(a.blockCidr, /^10\.32\.\d+\.\d+\/26$/);
    const { allocations } = await ipam.listAllocations({ pool: '', node: 'node-a' });
    const mine = allocations.filter((x) => x.handle === 'c1/eth0');
    assert.equal(mine.length, 1);
    assert.equal(mine[0]!.podNamespace, 'ns1');
    assert.equal(mine[0]!.podName, 'c1');
  });

  test('release frees the address and is idempotent; the released row stays in history', async () => {
    const a = (await ipam.allocate(req('c2/eth0'))).allocation!;
    assert.deepEqual(await ipam.release({ handle: 'c2/eth0' }), {
      released: true,
      address: a.address,
      addresses: [a.address],
    });
    assert.deepEqual(await ipam.release({ handle: 'c2/eth0' }), { released: false, address: '', addresses: [] });
    assert.deepEqual(await ipam.release({ handle: 'never-seen/eth0' }), {
      released: false,
      address: '',
      addresses: [],
    });
    const live = (await ipam.listAllocations({ pool: '', node: '' })).allocations.map((x) => x.handle);
    assert.ok(!live.includes('c2/eth0'));
    const hist = await sql.query(`SELECT released_at FROM ipam.allocations WHERE handle = 'c2/eth0'`);
    assert.equal(hist.rowCount, 1);
    assert.ok(hist.rows[0].released_at);
  });

  test('bad allocation input is rejected and changes nothing', async () => {
    const before = (await ipam.listAllocations({ pool: '', node: '' })).allocations.length;
    await rejects(ipam.allocate(req('')), status.INVALID_ARGUMENT, 'ipam.invalid_handle', /handle is empty/);
    await rejects(
      ipam.allocate({ ...req('c3/eth0'), node: 'bad node!' }),
      status.INVALID_ARGUMENT,
      'ipam.invalid_node',
      /DNS name/,
    );
    await rejects(
      ipam.allocate({ ...req('c3/eth0'), pool: 'nope' }),
      status.NOT_FOUND,
      'ipam.pool_not_found',
      /no pool named "nope"/,
    );
    assert.equal((await ipam.listAllocations({ pool: '', node: '' })).allocations.length, before);
  });

  test('a pod UID is stored with the allocation and returned by Allocate, BatchAllocate, ListAllocations, history and GarbageCollect', async () => {
    const uid = '6f1c1a9e-3b4d-4f57-9a0e-1d2c3b4a5f60';
    // The group-commit path (one family, no owner) and the full path (an owner key) both record it.
    const fast = (await ipam.allocate({ ...req('u1/eth0', 'node-u'), podUid: uid })).allocation!;
    const full = (
      await ipam.allocate({ ...req('u2/eth0', 'node-u'), podUid: `${uid.slice(0, -1)}1`, owner: 'statefulset/ns1/u-0' })
    ).allocation!;
    assert.deepEqual([fast.podUid, full.podUid], [uid, `${uid.slice(0, -1)}1`]);
    assert.equal(
      (await ipam.allocate({ ...req('u1/eth0', 'node-u'), podUid: uid })).allocation!.podUid,
      uid,
      'a retried Allocate returns it too',
    );
    const batch = await ipam.batchAllocate({
      requests: [AllocateRequest.fromPartial({ ...req('u3/eth0', 'node-u'), podUid: 'b-1' })],
    });
    assert.equal(batch.results[0]!.allocations[0]!.podUid, 'b-1');
    const listed = (await ipam.listAllocations({ pool: '', node: 'node-u' })).allocations;
    assert.deepEqual(listed.map((a) => [a.handle, a.podUid]).sort(), [
      ['u1/eth0', uid],
      ['u2/eth0', `${uid.slice(0, -1)}1`],
      ['u3/eth0', 'b-1'],
    ]);
    assert.equal((await ipam.listAllocationHistory({ handle: 'u1/eth0' })).entries[0]!.allocation!.podUid, uid);
    const gc = await ipam.garbageCollect({ node: 'node-u', validHandles: ['u2/eth0', 'u3/eth0'] });
    assert.deepEqual(
      gc.released.map((a) => [a.handle, a.podUid]),
      [['u1/eth0', uid]],
    );
    // Callers that give none (before Kubernetes) get ''.
    assert.equal((await ipam.allocate(req('u4/eth0', 'node-u'))).allocation!.podUid, '');
  });

  test('a bad pod UID is refused with INVALID_ARGUMENT naming pod_uid, and nothing is allocated', async () => {
    for (const podUid of ['a'.repeat(129), 'uid with spaces', 'ns/name', 'ü']) {
      await rejects(
        ipam.allocate({ ...req('u5/eth0', 'node-u'), podUid }),
        status.INVALID_ARGUMENT,
        'ipam.invalid_pod_uid',
        /pod_uid .* at most 128 letters, digits or '-'/,
      );
    }
    const batch = await ipam.batchAllocate({
      requests: [AllocateRequest.fromPartial({ ...req('u5/eth0', 'node-u'), podUid: 'bad uid' })],
    });
    assert.equal(batch.results[0]!.errorCode, 'ipam.invalid_pod_uid');
    assert.equal((await ipam.listAllocationHistory({ handle: 'u5/eth0' })).entries.length, 0);
    assert.equal(
      (await ipam.allocate({ ...req('u6/eth0', 'node-u'), podUid: 'A'.repeat(128) })).allocation!.podUid,
      'A'.repeat(128),
      '128 is the limit',
    );
  });

  test('the database refuses two live allocations of one address', async () => {
    const a = (await ipam.allocate(req('c4/eth0'))).allocation!;
    await assert.rejects(
      sql.query(`INSERT INTO ipam.allocations (handle, address, pool_id, block_id, routing_domain_id, node)
                 SELECT 'dup/eth0', address, pool_id, block_id, routing_domain_id, node FROM ipam.allocations WHERE handle = 'c4/eth0' AND released_at IS NULL`),
      /allocations_live_address_uq/,
    );
    assert.ok(a.address);
  });

  test('200 allocations from 20 concurrent clients on one pool are all distinct and all recorded', async () => {
    const clients = Array.from({ length: 20 }, () =>
      createClient(IpamServiceService, cp.address, { security: cp.security }),
    );
    try {
      const results = await Promise.all(
        clients.map(async (c, i) => {
          const got: { handle: string; address: string }[] = [];
          for (let k = 0; k < 10; k++) {
            const handle = `hammer-${i}-${k}/eth0`;
            const { allocation } = await c.allocate(req(handle, `node-${i % 5}`));
            got.push({ handle, address: allocation!.address });
          }
          return got;
        }),
      );
      const all = results.flat();
      assert.equal(all.length, 200);
      assert.equal(new Set(all.map((x) => x.address)).size, 200, 'two handles got the same address');
      const recorded = await sql.query(
        `SELECT handle, host(address) AS address FROM ipam.allocations WHERE handle LIKE 'hammer-%' AND released_at IS NULL`,
      );
      assert.equal(recorded.rowCount, 200);
      const byHandle = new Map(recorded.rows.map((r) => [r.handle, r.address]));
      for (const x of all) assert.equal(byHandle.get(x.handle), x.address);
      // Every address lies in a block held by the node that asked for it.
      const misplaced =
        await sql.query(`SELECT count(*)::int AS n FROM ipam.allocations a JOIN ipam.blocks b ON b.id = a.block_id
        WHERE a.released_at IS NULL AND (NOT a.address <<= b.cidr OR a.node <> b.node)`);
      assert.equal(misplaced.rows[0].n, 0);
    } finally {
      for (const c of clients) c.close();
    }
  });

  test('a full pool answers RESOURCE_EXHAUSTED', async () => {
    await ipam.createPool({ name: 'tiny', cidr: '10.99.0.0/30', blockPrefixLength: 31 });
    await ipam.allocate({ ...req('t1/eth0'), pool: 'tiny' });
    await ipam.allocate({ ...req('t2/eth0'), pool: 'tiny' });
    await ipam.allocate({ ...req('t3/eth0', 'node-b'), pool: 'tiny' });
    await ipam.allocate({ ...req('t4/eth0', 'node-b'), pool: 'tiny' });
    await rejects(
      ipam.allocate({ ...req('t5/eth0', 'node-c'), pool: 'tiny' }),
      status.RESOURCE_EXHAUSTED,
      'ipam.pool_exhausted',
      /no free address in pool tiny/,
    );
  });
});

describe('block affinities', () => {
  test('the watch sends a snapshot, then each newly claimed block', async () => {
    const ac = new AbortController();
    const stream = ipam.watchBlockAffinities({}, { signal: ac.signal })[Symbol.asyncIterator]();
    try {
      const first = (await stream.next()).value;
      assert.equal(first.reset, true);
      const known = new Set(first.upserts.map((u: { cidr: string }) => u.cidr));
      assert.ok(known.size > 0);
      const { allocation } = await ipam.allocate(req('watch/eth0', 'node-new'));
      const next = (await stream.next()).value;
      assert.equal(next.reset, false);
      assert.ok(next.revision > first.revision);
      assert.deepEqual(
        next.upserts.map((u: { node: string; cidr: string }) => [u.node, u.cidr]),
        [['node-new', allocation!.blockCidr]],
      );
    } finally {
      ac.abort();
    }
  });

  function req(handle: string, node: string) {
    return { handle, node, pool: 'main', podNamespace: '', podName: '', containerId: '' };
  }
});
