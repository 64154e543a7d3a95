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
  const clients = names.map(() => createClient(IpamServiceService, cp.address));
  try {
    const got = await Promise.all(names.map((n, i) => clients[i]!.allocatePrefix({ cluster: n, aggregate: 'pods-eu', prefixLength: 16 })));
    const cidrs = got.map((g) => g.prefix!.cidr);
    assert.equal(new Set(cidrs).size, 20);
    const ranges = cidrs.map((c) => parseCidr(c)).sort((a, b) => (a.base < b.base ? -1 : 1));
    for (let i = 1; i < ranges.length; i++) assert.ok(ranges[i - 1]!.base + cidrSize(4, 16) <= ranges[i]!.base, `${formatCidr(ranges[i - 1]!)} and ${formatCidr(ranges[i]!)} overlap`);
    assert.equal(formatCidr(ranges[0]!), '10.0.0.0/16', 'carving starts at the bottom');
    const again = await ipam.allocatePrefix({ cluster: 'cluster-7', aggregate: 'pods-eu', prefixLength: 16 });
    assert.equal(again.prefix!.cidr, got[7]!.prefix!.cidr);
    await assert.rejects(ipam.allocatePrefix({ cluster: 'cluster-7', aggregate: 'pods-eu', prefixLength: 20 }), code(status.ALREADY_EXISTS, 'ipam.prefix_exists'));
    const services = await ipam.allocatePrefix({ cluster: 'cluster-7', aggregate: 'pods-eu', prefixLength: 20, purpose: 'services' });
    assert.ok(!cidrs.some((c) => parseCidr(c).base <= parseCidr(services.prefix!.cidr).base && parseCidr(services.prefix!.cidr).base < parseCidr(c).base + cidrSize(4, 16)));
  } finally {
    clients.forEach((c) => c.close());
  }
});

test('the database itself refuses an overlapping live prefix in one routing domain', async () => {
  await assert.rejects(sql.query(`INSERT INTO ipam.prefixes (aggregate_id, routing_domain_id, cluster_id, purpose, cidr)
    SELECT aggregate_id, routing_domain_id, cluster_id, 'sneaky', '10.0.128.0/17' FROM ipam.prefixes LIMIT 1`), /prefixes_no_overlap/);
});

test('routing domains: overlap across them is allowed, within one refused; clusters use only their domain\'s aggregates', async () => {
  await assert.rejects(ipam.createAggregate({ name: 'pods-eu-2', cidr: '10.1.0.0/16' }), code(status.ALREADY_EXISTS, 'ipam.aggregate_overlaps'));
  await ipam.createRoutingDomain({ name: 'lab' });
  const lab = await ipam.createAggregate({ name: 'pods-lab', routingDomain: 'lab', cidr: '10.0.0.0/8' });
  assert.equal(lab.aggregate!.cidr, '10.0.0.0/8');
  await ipam.registerCluster({ name: 'lab-1', routingDomain: 'lab' });
  const p = await ipam.allocatePrefix({ cluster: 'lab-1', aggregate: 'pods-lab', prefixLength: 16 });
  assert.equal(p.prefix!.cidr, '10.0.0.0/16', 'the lab domain has its own address space');
  await assert.rejects(ipam.allocatePrefix({ cluster: 'lab-1', aggregate: 'pods-eu', prefixLength: 16 }), code(status.FAILED_PRECONDITION, 'ipam.routing_domain_mismatch'));
  await assert.rejects(ipam.registerCluster({ name: 'lab-1', routingDomain: 'default' }), code(status.ALREADY_EXISTS, 'ipam.cluster_exists'));
  assert.deepEqual((await ipam.listRoutingDomains({})).routingDomains.map((d) => d.name), ['default', 'lab']);
});

test('a released prefix can be carved again; a full aggregate says so', async () => {
  await ipam.createAggregate({ name: 'small', cidr: '172.16.0.0/22' });
  for (const n of ['s1', 's2', 's3', 's4', 's5']) await ipam.registerCluster({ name: n });
  const held = [];
  for (const n of ['s1', 's2', 's3', 's4']) held.push((await ipam.allocatePrefix({ cluster: n, aggregate: 'small', prefixLength: 24 })).prefix!);
  await assert.rejects(ipam.allocatePrefix({ cluster: 's5', aggregate: 'small', prefixLength: 24 }), code(status.RESOURCE_EXHAUSTED, 'ipam.aggregate_exhausted'));
  assert.deepEqual(await ipam.releasePrefix({ name: held[1]!.name }), { released: true });
  assert.deepEqual(await ipam.releasePrefix({ name: held[1]!.name }), { released: false });
  const again = await ipam.allocatePrefix({ cluster: 's5', aggregate: 'small', prefixLength: 24 });
  assert.equal(again.prefix!.cidr, held[1]!.cidr);
  assert.deepEqual((await ipam.listPrefixes({ aggregate: 'small' })).prefixes.map((x) => x.cluster), ['s1', 's5', 's3', 's4']);
  await assert.rejects(ipam.releasePrefix({ name: 'prefixes/1' }), code(status.INVALID_ARGUMENT, 'ipam.invalid_name'));
  await assert.rejects(ipam.allocatePrefix({ cluster: 'nope', aggregate: 'small', prefixLength: 24 }), code(status.NOT_FOUND, 'ipam.cluster_not_found'));
});
