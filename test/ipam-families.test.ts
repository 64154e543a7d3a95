import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import pg from 'pg';
import { IpFamily } from '../gen/weft/ipam/v1/ipam.js';
import { startIpamTestbed, type IpamTestbed } from './support/control-plane.js';

/** IPv6 and dual stack, cool-down, garbage collection, history and utilization, on real PostgreSQL over gRPC. */
let tb: IpamTestbed;
let ipam: IpamTestbed['ipam'];
let sql: pg.Client;

before(async () => {
  tb = await startIpamTestbed();
  ({ ipam, sql } = tb);
});

after(() => tb?.stop());

const req = (handle: string, extra: Record<string, unknown> = {}) => ({
  handle,
  node: 'node-a',
  podNamespace: 'ns',
  podName: handle.split('/')[0]!,
  containerId: handle.split('/')[0]!,
  ...extra,
});

describe('families', () => {
  test('a /48 IPv6 pool with /122 blocks allocates as readily as a /24 (no range is scanned)', async () => {
    const { pool } = await ipam.createPool({ name: 'v6', cidr: 'fd00:10:244::/48', blockPrefixLength: 122 });
    assert.equal(pool!.family, IpFamily.IP_FAMILY_IPV6);
    const got = [];
    for (let i = 0; i < 70; i++)
      got.push((await ipam.allocate(req(`six-${i}/eth0`, { pool: 'v6', node: `n${i % 3}` }))).allocation!);
    assert.equal(new Set(got.map((a) => a.address)).size, 70);
    assert.ok(got.every((a) => a.address.startsWith('fd00:10:244::') && a.family === IpFamily.IP_FAMILY_IPV6));
    // Node n0 filled one /122 (64 addresses) and claimed the next block.
    const n0Blocks = new Set(got.filter((a) => a.node === 'n0').map((a) => a.blockCidr));
    assert.equal(n0Blocks.size, 1);
    const { pools } = await ipam.getUtilization({ pool: 'v6' });
    assert.equal(pools[0]!.counts!.total, (2n ** 80n).toString());
    assert.equal(pools[0]!.counts!.allocated, 70);
  });

  test('a dual-stack pod whose IPv4 side is exhausted gets neither address', async () => {
    await ipam.createPool({ name: 'tiny4', cidr: '10.60.0.0/31', blockPrefixLength: 31 });
    await ipam.allocate(req('fill-1/eth0', { pool: 'tiny4' }));
    await ipam.allocate(req('fill-2/eth0', { pool: 'tiny4' }));
    await assert.rejects(
      ipam.allocate(req('atomic/eth0')),
      (e: { code: number }) => e.code === status.RESOURCE_EXHAUSTED,
    );
    const rows = await sql.query(`SELECT count(*)::int AS n FROM ipam.allocations WHERE handle = 'atomic/eth0'`);
    assert.equal(rows.rows[0].n, 0, 'no IPv6 address was left behind');
  });

  test('a dual-stack pod gets one address of each family; allocate and release cover both', async () => {
    await ipam.createPool({ name: 'v4', cidr: '10.50.0.0/16', blockPrefixLength: 26 });
    const { allocations } = await ipam.allocate(req('dual/eth0'));
    assert.deepEqual(
      allocations.map((a) => a.family),
      [IpFamily.IP_FAMILY_IPV4, IpFamily.IP_FAMILY_IPV6],
    );
    assert.equal(allocations[0]!.pool, 'v4', 'the full pool tiny4 is passed over');
    const again = await ipam.allocate(req('dual/eth0'));
    assert.deepEqual(
      again.allocations.map((a) => a.address),
      allocations.map((a) => a.address),
      'idempotent for both families',
    );
    const only4 = await ipam.allocate(req('single/eth0', { families: [IpFamily.IP_FAMILY_IPV4] }));
    assert.deepEqual(
      only4.allocations.map((a) => a.family),
      [IpFamily.IP_FAMILY_IPV4],
    );
    const r = await ipam.release({ handle: 'dual/eth0' });
    assert.deepEqual(
      r.addresses,
      allocations.map((a) => a.address),
    );
  });

  test('an unknown family is INVALID_ARGUMENT and allocates nothing', async () => {
    await assert.rejects(
      ipam.allocate(req('bad-family/eth0', { families: [99] })),
      (e: { code: number; details: string }) => e.code === status.INVALID_ARGUMENT && /IP_FAMILY_IPV4/.test(e.details),
    );
    assert.equal(
      (await sql.query(`SELECT count(*)::int AS n FROM ipam.allocations WHERE handle = 'bad-family/eth0'`)).rows[0].n,
      0,
    );
  });
});

describe('cool-down and reuse', () => {
  test('a released address is not reused within the cool-down, and reuse takes the longest-free first', async () => {
    await ipam.createPool({ name: 'cool', cidr: '10.70.0.0/29', blockPrefixLength: 30, cooldownSeconds: 1 });
    const n = { pool: 'cool', node: 'cooler' };
    // Two /30 blocks x 4 addresses = 8 addresses, all for one node.
    const held = [];
    for (let i = 0; i < 8; i++) held.push((await ipam.allocate(req(`cool-${i}/eth0`, n))).allocation!.address);
    await ipam.release({ handle: 'cool-5/eth0' });
    await new Promise((r) => setTimeout(r, 50));
    await ipam.release({ handle: 'cool-2/eth0' });
    await assert.rejects(
      ipam.allocate(req('cool-new-1/eth0', n)),
      (e: { code: number }) => e.code === status.RESOURCE_EXHAUSTED,
      'both are cooling down',
    );
    await new Promise((r) => setTimeout(r, 1200));
    const first = (await ipam.allocate(req('cool-new-1/eth0', n))).allocation!.address;
    const second = (await ipam.allocate(req('cool-new-2/eth0', n))).allocation!.address;
    assert.deepEqual([first, second], [held[5], held[2]], 'the longest-free address comes back first');
    const u = (await ipam.getUtilization({ pool: 'cool' })).pools[0]!;
    assert.deepEqual(u.counts, { total: '8', allocated: 8, coolingDown: 0, reserved: '0', free: '0' });
  });
});

describe('garbage collection', () => {
  test("GarbageCollect releases the node's other allocations and never a valid one", async () => {
    const n = { pool: 'v4', node: 'gc-node' };
    for (const h of ['keep-1/eth0', 'keep-2/eth0', 'stale-1/eth0', 'stale-2/eth0']) await ipam.allocate(req(h, n));
    await ipam.allocate(req('other-node/eth0', { pool: 'v4', node: 'gc-other' }));
    const { released } = await ipam.garbageCollect({ node: 'gc-node', validHandles: ['keep-1/eth0', 'keep-2/eth0'] });
    assert.deepEqual(released.map((a) => a.handle).sort(), ['stale-1/eth0', 'stale-2/eth0']);
    const live = (await ipam.listAllocations({ node: 'gc-node' })).allocations.map((a) => a.handle).sort();
    assert.deepEqual(live, ['keep-1/eth0', 'keep-2/eth0']);
    assert.equal((await ipam.listAllocations({ node: 'gc-other' })).allocations.length, 1, 'other nodes are untouched');
    assert.deepEqual(
      (await ipam.garbageCollect({ node: 'gc-node', validHandles: ['keep-1/eth0', 'keep-2/eth0'] })).released,
      [],
    );
  });
});

describe('history', () => {
  test('who held an address at a time, every address of a pod, what a node held in a range', async () => {
    const n = { pool: 'v4', node: 'hist-node' };
    const a1 = (await ipam.allocate(req('h1/eth0', { ...n, podNamespace: 'shop', podName: 'cart-0' }))).allocation!;
    const t1 = new Date();
    await new Promise((r) => setTimeout(r, 20));
    await ipam.release({ handle: 'h1/eth0' });
    const t2 = new Date();
    await new Promise((r) => setTimeout(r, 20));
    const a2 = (await ipam.allocate(req('h2/eth0', { ...n, podNamespace: 'shop', podName: 'cart-0' }))).allocation!;

    const at1 = await ipam.listAllocationHistory({ address: a1.address, at: t1 });
    assert.deepEqual(
      at1.entries.map((e) => e.allocation!.handle),
      ['h1/eth0'],
    );
    const atLater = await ipam.listAllocationHistory({ address: a1.address, at: t2 });
    assert.ok(
      !atLater.entries.some((e) => e.allocation!.handle === 'h1/eth0'),
      'after its release h1 no longer holds it',
    );

    const pod = await ipam.listAllocationHistory({ podNamespace: 'shop', podName: 'cart-0' });
    assert.deepEqual(
      pod.entries.map((e) => e.allocation!.address),
      [a2.address, a1.address],
    );
    assert.ok(pod.entries[1]!.releaseTime, 'the old one is closed');
    assert.equal(pod.entries[0]!.releaseTime, undefined, 'the current one is open');

    const node = await ipam.listAllocationHistory({ node: 'hist-node', at: t2, until: new Date() });
    assert.deepEqual(
      node.entries.map((e) => e.allocation!.handle),
      ['h2/eth0'],
    );

    await assert.rejects(
      ipam.listAllocationHistory({ address: a1.address, node: 'hist-node' }),
      (e: { code: number; details: string }) => e.code === status.INVALID_ARGUMENT && /exactly one/.test(e.details),
    );
    await assert.rejects(
      ipam.listAllocationHistory({ address: '10.0.0.300' }),
      (e: { code: number }) => e.code === status.INVALID_ARGUMENT,
    );
  });

  test('history queries use indexes, not scans', async () => {
    const plans: string[] = [];
    await sql.query('SET enable_seqscan = off');
    for (const q of [
      `SELECT * FROM ipam.allocations a WHERE a.address = '10.50.0.1'::inet AND a.allocated_at <= now() AND (a.released_at IS NULL OR a.released_at > now())`,
      `SELECT * FROM ipam.allocations a WHERE a.pod_namespace = 'shop' AND a.pod_name = 'cart-0'`,
      `SELECT * FROM ipam.allocations a WHERE a.node = 'hist-node' AND a.allocated_at < now()`,
    ])
      plans.push(JSON.stringify((await sql.query(`EXPLAIN (FORMAT JSON) ${q}`)).rows[0]));
    await sql.query('RESET enable_seqscan');
    for (const p of plans) assert.match(p, /Index|Bitmap/);
  });
});
