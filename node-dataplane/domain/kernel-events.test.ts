import { test } from 'node:test';
import assert from 'node:assert/strict';
import { concernsOverlay, MAIN_TABLE, type OverlayView } from './kernel-events.js';

const view: OverlayView = { deviceName: 'weft.vxlan', ifindex: 7, underlayIfindex: 3, routeProtocol: 87, routeCidrs: new Set(['10.244.1.0/26']) };

test('events on Weft\'s VXLAN device concern the overlay: the device, its IPv4 neighbours and its FDB', () => {
  assert.ok(concernsOverlay({ kind: 'link', ifindex: 7, ifname: 'weft.vxlan' }, view));
  assert.ok(concernsOverlay({ kind: 'link', ifindex: 9, ifname: 'weft.vxlan' }, view), 'a rebuilt device, by name');
  assert.ok(concernsOverlay({ kind: 'neighbour', family: 'inet', ifindex: 7 }, view));
  assert.ok(concernsOverlay({ kind: 'neighbour', family: 'bridge', ifindex: 7 }, view));
  assert.ok(!concernsOverlay({ kind: 'link', ifindex: 3, ifname: 'eth0' }, view));
  assert.ok(!concernsOverlay({ kind: 'neighbour', family: 'inet', ifindex: 3 }, view), 'ARP on the underlay');
  assert.ok(!concernsOverlay({ kind: 'neighbour', family: 'inet', ifindex: 7 }, { ...view, ifindex: null }));
  assert.ok(concernsOverlay({ kind: 'neighbour', family: 'inet6', ifindex: 7, permanent: true }, view), 'an IPv6 block\'s next hop');
  assert.ok(!concernsOverlay({ kind: 'neighbour', family: 'inet6', ifindex: 7, permanent: false }, view), 'IPv6 neighbour discovery on the device');
});

test('routes concern the overlay when Weft wants their destination or they carry its protocol through its device', () => {
  assert.ok(concernsOverlay({ kind: 'route', cidr: '10.244.1.0/26', protocol: 87, table: MAIN_TABLE, oif: 7 }, view));
  assert.ok(concernsOverlay({ kind: 'route', cidr: '10.244.1.0/26', protocol: 3, table: MAIN_TABLE, oif: 3 }, view), 'replaced by someone else\'s route');
  assert.ok(concernsOverlay({ kind: 'route', cidr: '10.244.9.0/26', protocol: 87, table: MAIN_TABLE, oif: 7 }, view), 'a stale route of Weft\'s');
  assert.ok(!concernsOverlay({ kind: 'route', cidr: '10.244.0.5/32', protocol: 87, table: MAIN_TABLE, oif: 12 }, view), 'a pod host route');
  assert.ok(!concernsOverlay({ kind: 'route', cidr: '203.0.113.0/24', protocol: 3, table: MAIN_TABLE, oif: 3 }, view));
  assert.ok(!concernsOverlay({ kind: 'route', cidr: '10.244.1.0/26', protocol: 87, table: 255, oif: 7 }, view), 'the local table');
});

test('direct routes (Weft\'s protocol on the underlay device) concern the overlay; other underlay routes do not', () => {
  assert.ok(concernsOverlay({ kind: 'route', cidr: '10.244.9.0/26', protocol: 87, table: MAIN_TABLE, oif: 3 }, view), 'a stale direct route of Weft\'s');
  assert.ok(concernsOverlay({ kind: 'route', cidr: '10.244.1.0/26', protocol: 87, table: MAIN_TABLE, oif: 3 }, view), 'a wanted block, routed directly');
  assert.ok(!concernsOverlay({ kind: 'route', cidr: '192.0.2.0/24', protocol: 2, table: MAIN_TABLE, oif: 3 }, view), 'the underlay subnet\'s kernel route');
  assert.ok(!concernsOverlay({ kind: 'route', cidr: '10.244.9.0/26', protocol: 87, table: MAIN_TABLE, oif: 3 }, { ...view, underlayIfindex: null }));
});
