import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { rt } from 'netlink';
import { toKernelEvent } from './kernel-watch.js';

const ip = (s: string) => Buffer.from(s.split('.').map(Number));
/** A message as the package parses it (the typings do not admit unnamed protocol numbers such as 87). */
const msg = (m: object) => m as unknown as rt.Message;

test('rtnetlink messages reduce to the events the overlay filter needs', () => {
  const route = msg({
    kind: 'route',
    data: { family: 2, dstLen: 26, table: 254, protocol: 87 },
    attrs: { dst: ip('10.244.1.0'), oif: 7 },
  });
  assert.deepEqual(toKernelEvent(route), { kind: 'route', cidr: '10.244.1.0/26', protocol: 87, table: 254, oif: 7 });
  const named = msg({
    kind: 'route',
    data: { family: 2, dstLen: 0, table: 254, protocol: 'BIRD' },
    attrs: { table: 1000 },
  });
  assert.deepEqual(
    toKernelEvent(named),
    { kind: 'route', cidr: '0.0.0.0/0', protocol: 12, table: 1000, oif: null },
    'named protocols and RTA_TABLE',
  );
  const v6 = Buffer.from('fd0000100244000100000000000000c0', 'hex');
  assert.deepEqual(
    toKernelEvent(
      msg({ kind: 'route', data: { family: 10, dstLen: 122, table: 254, protocol: 87 }, attrs: { dst: v6, oif: 7 } }),
    ),
    { kind: 'route', cidr: 'fd00:10:244:1::c0/122', protocol: 87, table: 254, oif: 7 },
    'IPv6 routes, compressed as formatCidr prints them',
  );
  assert.deepEqual(toKernelEvent(msg({ kind: 'neighbor', data: { family: 7, ifindex: 7 }, attrs: {} })), {
    kind: 'neighbour',
    family: 'bridge',
    ifindex: 7,
    permanent: false,
  });
  assert.deepEqual(
    toKernelEvent(msg({ kind: 'neighbor', data: { family: 2, ifindex: 7, state: { permanent: true } }, attrs: {} })),
    { kind: 'neighbour', family: 'inet', ifindex: 7, permanent: true },
  );
  assert.deepEqual(
    toKernelEvent(msg({ kind: 'neighbor', data: { family: 10, ifindex: 7, state: { reachable: true } }, attrs: {} })),
    { kind: 'neighbour', family: 'inet6', ifindex: 7, permanent: false },
    'IPv6 neighbour discovery',
  );
  assert.deepEqual(toKernelEvent(msg({ kind: 'link', data: { index: 7 }, attrs: { ifname: 'weft.vxlan' } })), {
    kind: 'link',
    ifindex: 7,
    ifname: 'weft.vxlan',
  });
  assert.equal(toKernelEvent(msg({ kind: 'address', data: {}, attrs: {} })), null);
});

test('with the message type, route and neighbour events carry whether they announce or remove, and the entry', () => {
  const route = msg({
    kind: 'route',
    data: { family: 2, dstLen: 26, table: 254, protocol: 87 },
    attrs: { dst: ip('10.244.1.0'), oif: 7, gateway: ip('10.244.1.0') },
  });
  assert.deepEqual(toKernelEvent(route, 24), {
    kind: 'route',
    cidr: '10.244.1.0/26',
    protocol: 87,
    table: 254,
    oif: 7,
    op: 'new',
    gateway: '10.244.1.0',
  });
  assert.deepEqual(toKernelEvent(route, 25), {
    kind: 'route',
    cidr: '10.244.1.0/26',
    protocol: 87,
    table: 254,
    oif: 7,
    op: 'del',
    gateway: '10.244.1.0',
  });
  const mac = Buffer.from([2, 0x57, 0xc6, 0x33, 0x64, 0x0c]);
  assert.deepEqual(
    toKernelEvent(
      msg({
        kind: 'neighbor',
        data: { family: 2, ifindex: 7, state: { permanent: true } },
        attrs: { dst: ip('10.244.1.0'), lladdr: mac },
      }),
      28,
    ),
    {
      kind: 'neighbour',
      family: 'inet',
      ifindex: 7,
      permanent: true,
      op: 'new',
      ip: '10.244.1.0',
      mac: '02:57:c6:33:64:0c',
    },
  );
  assert.deepEqual(
    toKernelEvent(
      msg({ kind: 'neighbor', data: { family: 7, ifindex: 7 }, attrs: { dst: ip('198.51.100.12'), lladdr: mac } }),
      29,
    ),
    {
      kind: 'neighbour',
      family: 'bridge',
      ifindex: 7,
      permanent: false,
      op: 'del',
      ip: '198.51.100.12',
      mac: '02:57:c6:33:64:0c',
    },
  );
});
