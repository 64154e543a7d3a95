import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RT_TABLE_MAIN as MAIN_TABLE } from '../../lib/net/netlink-constants.js';
import { agreesWithTarget, concernsOverlay, type OverlayView } from './kernel-events.js';
import { computeDesired } from './desired.js';

const view: OverlayView = {
  deviceName: 'weft.vxlan',
  ifindex: 7,
  underlayIfindex: 3,
  routeProtocol: 87,
  routeCidrs: new Set(['10.244.1.0/26']),
};

test("events on Weft's VXLAN device concern the overlay: the device, its IPv4 neighbours and its FDB", () => {
  assert.ok(concernsOverlay({ kind: 'link', ifindex: 7, ifname: 'weft.vxlan' }, view));
  assert.ok(concernsOverlay({ kind: 'link', ifindex: 9, ifname: 'weft.vxlan' }, view), 'a rebuilt device, by name');
  assert.ok(concernsOverlay({ kind: 'neighbour', family: 'inet', ifindex: 7 }, view));
  assert.ok(concernsOverlay({ kind: 'neighbour', family: 'bridge', ifindex: 7 }, view));
  assert.ok(!concernsOverlay({ kind: 'link', ifindex: 3, ifname: 'eth0' }, view));
  assert.ok(!concernsOverlay({ kind: 'neighbour', family: 'inet', ifindex: 3 }, view), 'ARP on the underlay');
  assert.ok(!concernsOverlay({ kind: 'neighbour', family: 'inet', ifindex: 7 }, { ...view, ifindex: null }));
  assert.ok(
    concernsOverlay({ kind: 'neighbour', family: 'inet6', ifindex: 7, permanent: true }, view),
    "an IPv6 block's next hop",
  );
  assert.ok(
    !concernsOverlay({ kind: 'neighbour', family: 'inet6', ifindex: 7, permanent: false }, view),
    'IPv6 neighbour discovery on the device',
  );
});

test('routes concern the overlay when Weft wants their destination or they carry its protocol through its device', () => {
  assert.ok(concernsOverlay({ kind: 'route', cidr: '10.244.1.0/26', protocol: 87, table: MAIN_TABLE, oif: 7 }, view));
  assert.ok(
    concernsOverlay({ kind: 'route', cidr: '10.244.1.0/26', protocol: 3, table: MAIN_TABLE, oif: 3 }, view),
    "replaced by someone else's route",
  );
  assert.ok(
    concernsOverlay({ kind: 'route', cidr: '10.244.9.0/26', protocol: 87, table: MAIN_TABLE, oif: 7 }, view),
    "a stale route of Weft's",
  );
  assert.ok(
    !concernsOverlay({ kind: 'route', cidr: '10.244.0.5/32', protocol: 87, table: MAIN_TABLE, oif: 12 }, view),
    'a pod host route',
  );
  assert.ok(!concernsOverlay({ kind: 'route', cidr: '203.0.113.0/24', protocol: 3, table: MAIN_TABLE, oif: 3 }, view));
  assert.ok(
    !concernsOverlay({ kind: 'route', cidr: '10.244.1.0/26', protocol: 87, table: 255, oif: 7 }, view),
    'the local table',
  );
});

test("direct routes (Weft's protocol on the underlay device) concern the overlay; other underlay routes do not", () => {
  assert.ok(
    concernsOverlay({ kind: 'route', cidr: '10.244.9.0/26', protocol: 87, table: MAIN_TABLE, oif: 3 }, view),
    "a stale direct route of Weft's",
  );
  assert.ok(
    concernsOverlay({ kind: 'route', cidr: '10.244.1.0/26', protocol: 87, table: MAIN_TABLE, oif: 3 }, view),
    'a wanted block, routed directly',
  );
  assert.ok(
    !concernsOverlay({ kind: 'route', cidr: '192.0.2.0/24', protocol: 2, table: MAIN_TABLE, oif: 3 }, view),
    "the underlay subnet's kernel route",
  );
  assert.ok(
    !concernsOverlay(
      { kind: 'route', cidr: '10.244.9.0/26', protocol: 87, table: MAIN_TABLE, oif: 3 },
      { ...view, underlayIfindex: null },
    ),
  );
});

test("a notification that agrees with the target is the echo of the agent's own write; anything else is drift", () => {
  const target = computeDesired(
    'a',
    [
      { node: 'b', underlayAddress: '198.51.100.12', vtepMac: '02:57:c6:33:64:0c', blockCidrs: ['10.244.1.0/26'] },
      { node: 'c', underlayAddress: '192.0.2.13', vtepMac: '02:57:c0:00:02:0d', blockCidrs: ['10.244.2.0/26'] },
    ],
    { mode: 'auto', underlay: { address: '192.0.2.11', prefixLength: 24 } },
  );
  const v: OverlayView = { ...view, target };
  const route = { kind: 'route' as const, table: MAIN_TABLE, protocol: 87 };
  // Echoes: entries announced exactly as wanted, removals of what is not wanted.
  assert.ok(
    agreesWithTarget({ ...route, op: 'new', cidr: '10.244.1.0/26', gateway: '10.244.1.0', oif: 7 }, v),
    'a VXLAN route as written',
  );
  assert.ok(
    agreesWithTarget({ ...route, op: 'new', cidr: '10.244.2.0/26', gateway: '192.0.2.13', oif: 3 }, v),
    'a direct route as written',
  );
  assert.ok(
    agreesWithTarget({ ...route, op: 'del', cidr: '10.244.9.0/26', gateway: '10.244.9.0', oif: 7 }, v),
    'a stale route removed',
  );
  assert.ok(
    agreesWithTarget(
      {
        kind: 'neighbour',
        family: 'inet',
        ifindex: 7,
        permanent: true,
        op: 'new',
        ip: '10.244.1.0',
        mac: '02:57:c6:33:64:0c',
      },
      v,
    ),
  );
  assert.ok(
    agreesWithTarget(
      { kind: 'neighbour', family: 'bridge', ifindex: 7, op: 'new', ip: '198.51.100.12', mac: '02:57:c6:33:64:0c' },
      v,
    ),
    'the FDB entry',
  );
  assert.ok(
    agreesWithTarget(
      { kind: 'neighbour', family: 'bridge', ifindex: 7, op: 'del', ip: '198.51.100.99', mac: '02:57:c6:33:64:99' },
      v,
    ),
    'a stale FDB entry removed',
  );
  // Drift: a wanted entry removed, changed, replaced by someone else's, or an unwanted one added.
  assert.ok(
    !agreesWithTarget({ ...route, op: 'del', cidr: '10.244.1.0/26', gateway: '10.244.1.0', oif: 7 }, v),
    'a wanted route deleted (by hand)',
  );
  assert.ok(
    !agreesWithTarget({ ...route, op: 'new', cidr: '10.244.1.0/26', gateway: '10.244.1.0', oif: 3 }, v),
    'on the wrong device',
  );
  assert.ok(
    !agreesWithTarget({ ...route, op: 'new', cidr: '10.244.2.0/26', gateway: '192.0.2.99', oif: 3 }, v),
    'another gateway',
  );
  assert.ok(
    !agreesWithTarget({ ...route, protocol: 3, op: 'new', cidr: '10.244.1.0/26', gateway: '10.244.1.0', oif: 7 }, v),
    "someone else's route",
  );
  assert.ok(
    !agreesWithTarget({ ...route, op: 'new', cidr: '10.244.9.0/26', gateway: '10.244.9.0', oif: 7 }, v),
    'an unwanted route added',
  );
  assert.ok(
    !agreesWithTarget(
      {
        kind: 'neighbour',
        family: 'inet',
        ifindex: 7,
        permanent: true,
        op: 'del',
        ip: '10.244.1.0',
        mac: '02:57:c6:33:64:0c',
      },
      v,
    ),
    'a wanted neighbour deleted',
  );
  assert.ok(
    !agreesWithTarget(
      {
        kind: 'neighbour',
        family: 'inet',
        ifindex: 7,
        permanent: true,
        op: 'new',
        ip: '10.244.1.0',
        mac: '02:57:00:00:00:01',
      },
      v,
    ),
    'another MAC',
  );
  assert.ok(
    !agreesWithTarget(
      {
        kind: 'neighbour',
        family: 'inet',
        ifindex: 7,
        permanent: false,
        op: 'new',
        ip: '10.244.1.0',
        mac: '02:57:c6:33:64:0c',
      },
      v,
    ),
    'not permanent',
  );
  assert.ok(
    !agreesWithTarget(
      { kind: 'neighbour', family: 'bridge', ifindex: 7, op: 'del', ip: '198.51.100.12', mac: '02:57:c6:33:64:0c' },
      v,
    ),
    'a wanted FDB entry deleted',
  );
  assert.ok(
    !agreesWithTarget(
      { kind: 'neighbour', family: 'bridge', ifindex: 7, op: 'new', ip: '198.51.100.77', mac: '02:57:c6:33:64:0c' },
      v,
    ),
    'an FDB entry pointing elsewhere',
  );
  // Deleting a neighbour by hand announces it FAILED, then removes it (neither message says permanent): IPv6 too.
  const target6 = computeDesired(
    'a',
    [
      {
        node: 'b',
        underlayAddress: '198.51.100.12',
        vtepMac: '02:57:c6:33:64:0c',
        blockCidrs: ['fd00:10:244:1::40/122'],
      },
    ],
    { mode: 'auto', underlay: { address: '192.0.2.11', prefixLength: 24 } },
  );
  const v6: OverlayView = { ...view, target: target6 };
  for (const op of ['new', 'del'] as const) {
    const e = {
      kind: 'neighbour' as const,
      family: 'inet6' as const,
      ifindex: 7,
      permanent: false,
      op,
      ip: 'fd00:10:244:1::40',
      mac: null,
    };
    assert.ok(concernsOverlay(e, v6) && !agreesWithTarget(e, v6), `a wanted IPv6 neighbour deleted by hand (${op})`);
    assert.ok(!concernsOverlay({ ...e, ip: 'fe80::1' }, v6), 'neighbour discovery of another address');
  }
  // Unknown: no target yet, no op, a link.
  assert.ok(
    !agreesWithTarget({ ...route, op: 'del', cidr: '10.244.9.0/26', gateway: null, oif: 7 }, { ...v, target: null }),
  );
  assert.ok(!agreesWithTarget({ ...route, cidr: '10.244.1.0/26', oif: 7 }, v), 'an event without its type');
  assert.ok(!agreesWithTarget({ kind: 'link', ifindex: 7, ifname: 'weft.vxlan' }, v));
});
