import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import pg from 'pg';
import { createClient } from '../lib/grpc/client.js';
import { errorCodeOf } from '../lib/grpc/errors.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { formatCidr, parseCidr, cidrSize } from '../lib/net/ip.js';
import { startIpamTestbed, type IpamTestbed, type TestControlPlane } from './support/control-plane.js';

/** Routing domains, clusters and the prefixes carved for them from shared aggregates, on real PostgreSQL. */
let tb: IpamTestbed;
let cp: TestControlPlane;
let ipam: IpamTestbed['ipam'];
let sql: pg.Client;
before(async () => {
  tb = await startIpamTestbed();
  ({ cp, ipam, sql } = tb);
});
after(() => tb?.stop());

const code = (c: status, domain: string) => (e: { code: number }) => e.code === c && errorCodeOf(e) === domain;

test('twenty clusters asking at once get twenty disjoint pod CIDRs; asking again returns the same one', async () => {
  await ipam.createAggregate({ name: 'pods-eu', cidr: '10.0.0.0/8' });
  const names = Array.from({ length: 20 }, (_, i) => `cluster-${i}`);
  for (const n of names) await ipam.registerCluster({ name: n });
  const clients = names.map(() => createClient(IpamServiceService, cp.address, { security: cp.security }));
  try {
    const got = await Promise.all(
      names.map((n, i) => clients[i]!.allocatePrefix({ cluster: n, aggregate: 'pods-eu', prefixLength: 16 })),
    );
    const cidrs = got.map((g) => g.prefix!.cidr);
    assert.equal(new Set(cidrs).size, 20);
    const ranges = cidrs.map((c) => parseCidr(c)).sort((a, b) => (a.base < b.base ? -1 : 1));
    for (let i = 1; i < ranges.length; i++)
      assert.ok(
        ranges[i - 1]!.base + cidrSize(4, 16) <= ranges[i]!.base,
        `${formatCidr(ranges[i - 1]!)} and ${formatCidr(ranges[i]!)} overlap`,
      );
    assert.equal(formatCidr(ranges[0]!), '10.0.0.0/16', 'carving starts at the bottom');
    const again = await ipam.allocatePrefix({ cluster: 'cluster-7', aggregate: 'pods-eu', prefixLength: 16 });
    assert.equal(again.prefix!.cidr, got[7]!.prefix!.cidr);
    await assert.rejects(
      ipam.allocatePrefix({ cluster: 'cluster-7', aggregate: 'pods-eu', prefixLength: 20 }),
      code(status.ALREADY_EXISTS, 'ipam.prefix_exists'),
    );
    const services = await ipam.allocatePrefix({
      cluster: 'cluster-7',
      aggregate: 'pods-eu',
      prefixLength: 20,
      purpose: 'services',
    });
    assert.ok(
      !cidrs.some(
        (c) =>
          parseCidr(c).base <= parseCidr(services.prefix!.cidr).base &&
          parseCidr(services.prefix!.cidr).base < parseCidr(c).base + cidrSize(4, 16),
      ),
    );
  } finally {
    clients.forEach((c) => c.close());
  }
});

test('the database itself refuses an overlapping live prefix in one routing domain', async () => {
  await assert.rejects(
    sql.query(`INSERT INTO ipam.prefixes (aggregate_id, routing_domain_id, cluster_id, purpose, cidr)
    SELECT aggregate_id, routing_domain_id, cluster_id, 'sneaky', '10.0.128.0/17' FROM ipam.prefixes LIMIT 1`),
    /prefixes_no_overlap/,
  );
});

test("routing domains: overlap across them is allowed, within one refused; clusters use only their domain's aggregates", async () => {
  await assert.rejects(
    ipam.createAggregate({ name: 'pods-eu-2', cidr: '10.1.0.0/16' }),
    code(status.ALREADY_EXISTS, 'ipam.aggregate_overlaps'),
  );
  await ipam.createRoutingDomain({ name: 'lab' });
  const lab = await ipam.createAggregate({ name: 'pods-lab', routingDomain: 'lab', cidr: '10.0.0.0/8' });
  assert.equal(lab.aggregate!.cidr, '10.0.0.0/8');
  await ipam.registerCluster({ name: 'lab-1', routingDomain: 'lab' });
  const p = await ipam.allocatePrefix({ cluster: 'lab-1', aggregate: 'pods-lab', prefixLength: 16 });
  assert.equal(p.prefix!.cidr, '10.0.0.0/16', 'the lab domain has its own address space');
  await assert.rejects(
    ipam.allocatePrefix({ cluster: 'lab-1', aggregate: 'pods-eu', prefixLength: 16 }),
    code(status.FAILED_PRECONDITION, 'ipam.routing_domain_mismatch'),
  );
  await assert.rejects(
    ipam.registerCluster({ name: 'lab-1', routingDomain: 'default' }),
    code(status.ALREADY_EXISTS, 'ipam.cluster_exists'),
  );
  assert.deepEqual(
    (await ipam.listRoutingDomains({})).routingDomains.map((d) => d.name),
    ['default', 'lab'],
  );
});

test('a released prefix can be carved again; a full aggregate says so', async () => {
  await ipam.createAggregate({ name: 'small', cidr: '172.16.0.0/22' });
  for (const n of ['s1', 's2', 's3', 's4', 's5']) await ipam.registerCluster({ name: n });
  const held = [];
  for (const n of ['s1', 's2', 's3', 's4'])
    held.push((await ipam.allocatePrefix({ cluster: n, aggregate: 'small', prefixLength: 24 })).prefix!);
  await assert.rejects(
    ipam.allocatePrefix({ cluster: 's5', aggregate: 'small', prefixLength: 24 }),
    code(status.RESOURCE_EXHAUSTED, 'ipam.aggregate_exhausted'),
  );
  assert.deepEqual(await ipam.releasePrefix({ name: held[1]!.name }), { released: true });
  assert.deepEqual(await ipam.releasePrefix({ name: held[1]!.name }), { released: false });
  const again = await ipam.allocatePrefix({ cluster: 's5', aggregate: 'small', prefixLength: 24 });
  assert.equal(again.prefix!.cidr, held[1]!.cidr);
  assert.deepEqual(
    (await ipam.listPrefixes({ aggregate: 'small' })).prefixes.map((x) => x.cluster),
    ['s1', 's5', 's3', 's4'],
  );
  await assert.rejects(ipam.releasePrefix({ name: 'prefixes/1' }), code(status.INVALID_ARGUMENT, 'ipam.invalid_name'));
  await assert.rejects(
    ipam.allocatePrefix({ cluster: 'nope', aggregate: 'small', prefixLength: 24 }),
    code(status.NOT_FOUND, 'ipam.cluster_not_found'),
  );
});

test('pools in routing domains: the same addresses live once per domain; a cluster allocates only from its domain', async () => {
  await ipam.createRoutingDomain({ name: 'blue' });
  await ipam.registerCluster({ name: 'shop-blue', routingDomain: 'blue' });
  await ipam.registerCluster({ name: 'shop-default' });
  const red = (await ipam.createPool({ name: 'pods-default', cidr: '172.20.0.0/24', blockPrefixLength: 28 })).pool!;
  const blue = (
    await ipam.createPool({ name: 'pods-blue', cidr: '172.20.0.0/24', blockPrefixLength: 28, routingDomain: 'blue' })
  ).pool!;
  assert.deepEqual([red.routingDomain, blue.routingDomain], ['default', 'blue']);
  // Within one domain the database still refuses overlap, through the API and underneath it.
  await assert.rejects(
    ipam.createPool({ name: 'blue-2', cidr: '172.20.0.128/25', blockPrefixLength: 28, routingDomain: 'blue' }),
    (e: { code: number; details: string }) =>
      e.code === status.ALREADY_EXISTS &&
      errorCodeOf(e) === 'ipam.pool_overlaps' &&
      /pods-blue .* in routing domain blue/.test(e.details),
  );
  await assert.rejects(
    sql.query(`INSERT INTO ipam.pools (name, cidr, block_prefix_length, routing_domain_id)
    SELECT 'sneaky', '172.20.0.64/26', 28, id FROM ipam.routing_domains WHERE name = 'blue'`),
    /pools_no_overlap/,
  );
  await assert.rejects(
    ipam.createPool({ name: 'nowhere', cidr: '172.21.0.0/24', blockPrefixLength: 28, routingDomain: 'green' }),
    code(status.NOT_FOUND, 'ipam.routing_domain_not_found'),
  );

  const inBlue = (
    await ipam.allocate({ handle: 'b1/eth0', node: 'bn1', cluster: 'shop-blue', podNamespace: 'shop', podName: 'b1' })
  ).allocation!;
  const inDefault = (
    await ipam.allocate({
      handle: 'r1/eth0',
      node: 'rn1',
      cluster: 'shop-default',
      podNamespace: 'shop',
      podName: 'r1',
    })
  ).allocation!;
  const noCluster = (await ipam.allocate({ handle: 'r2/eth0', node: 'rn1', podNamespace: 'shop', podName: 'r2' }))
    .allocation!;
  assert.deepEqual([inBlue.pool, inBlue.routingDomain, inBlue.cluster], ['pods-blue', 'blue', 'shop-blue']);
  assert.deepEqual(
    [inDefault.pool, inDefault.routingDomain, inDefault.cluster],
    ['pods-default', 'default', 'shop-default'],
  );
  assert.equal(noCluster.pool, 'pods-default', 'a caller naming no cluster uses the default domain');
  assert.equal(inBlue.address, inDefault.address, 'the first address of the same CIDR, live in both domains at once');
  await assert.rejects(
    ipam.allocate({ handle: 'x1/eth0', node: 'bn1', cluster: 'unregistered' }),
    code(status.NOT_FOUND, 'ipam.cluster_not_found'),
  );

  // An exact address is checked within the caller's domain only.
  const exactBlue = (
    await ipam.allocate({ handle: 'b2/eth0', node: 'bn1', cluster: 'shop-blue', addresses: ['172.20.0.200'] })
  ).allocation!;
  const exactDefault = (await ipam.allocate({ handle: 'r3/eth0', node: 'rn2', addresses: ['172.20.0.200'] }))
    .allocation!;
  assert.deepEqual([exactBlue.routingDomain, exactDefault.routingDomain], ['blue', 'default']);
  await assert.rejects(
    ipam.allocate({ handle: 'b3/eth0', node: 'bn1', cluster: 'shop-blue', addresses: ['172.20.0.200'] }),
    code(status.ALREADY_EXISTS, 'ipam.address_in_use'),
  );

  // History: every domain's holder, or one domain's.
  const both = (await ipam.listAllocationHistory({ address: '172.20.0.200' })).entries
    .map((e) => e.allocation!.handle)
    .sort();
  assert.deepEqual(both, ['b2/eth0', 'r3/eth0']);
  const onlyBlue = (await ipam.listAllocationHistory({ address: '172.20.0.200', routingDomain: 'blue' })).entries.map(
    (e) => e.allocation!.handle,
  );
  assert.deepEqual(onlyBlue, ['b2/eth0']);

  // A release in one domain frees the address there only: the other domain's holder stays live.
  await ipam.release({ handle: 'b2/eth0' });
  const live = await sql.query(
    `SELECT handle FROM ipam.allocations WHERE host(address) = '172.20.0.200' AND released_at IS NULL`,
  );
  assert.deepEqual(
    live.rows.map((r) => r.handle),
    ['r3/eth0'],
  );
  await assert.rejects(
    ipam.allocate({ handle: 'b4/eth0', node: 'bn1', cluster: 'shop-blue', addresses: ['172.20.0.200'] }),
    code(status.FAILED_PRECONDITION, 'ipam.address_cooling_down'),
  );
  assert.deepEqual((await ipam.checkConsistency({})).problems, []);
});
