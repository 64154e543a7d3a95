import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  compareState,
  computeDesired,
  emptyState,
  onUnderlaySubnet,
  type KernelState,
  type RemoteNode,
  type Routing,
  type RoutingMode,
} from './desired.js';

/** The difference as `kind key` lines: what is missing (+) and what is stale (-). */
const diff = (desired: KernelState, actual: KernelState) => {
  const { missing, stale } = compareState(desired, actual);
  return [...missing.map((e) => `+${e.kind} ${e.key}`), ...stale.map((e) => `-${e.kind} ${e.key}`)].sort();
};

const a: RemoteNode = {
  node: 'a',
  underlayAddress: '192.0.2.11',
  vtepMac: '02:00:00:00:00:0A',
  blockCidrs: ['10.244.0.0/26'],
};
const b: RemoteNode = {
  node: 'b',
  underlayAddress: '198.51.100.12',
  vtepMac: '02:00:00:00:00:0b',
  blockCidrs: ['10.244.0.64/26', '10.244.1.0/26'],
};

test('desired state has one FDB entry per remote node and a neighbour and route per block, none for itself', () => {
  const d = computeDesired('a', [a, b]);
  assert.deepEqual([...d.fdb.keys()], ['02:00:00:00:00:0b']);
  assert.deepEqual([...d.routes.keys()].sort(), ['10.244.0.64/26', '10.244.1.0/26']);
  assert.equal(d.routes.get('10.244.1.0/26')!.gateway, '10.244.1.0');
  assert.equal(d.neighbours.get('10.244.1.0')!.mac, '02:00:00:00:00:0b');
});

test('the difference names what is missing and what is stale; an unchanged kernel has none; a moved node changes only its FDB entry', () => {
  assert.deepEqual(diff(computeDesired('a', [a, b]), emptyState()), [
    '+fdb 02:00:00:00:00:0b',
    '+neighbour 10.244.0.64',
    '+neighbour 10.244.1.0',
    '+route 10.244.0.64/26',
    '+route 10.244.1.0/26',
  ]);
  assert.deepEqual(diff(emptyState(), computeDesired('a', [a, b])), [
    '-fdb 02:00:00:00:00:0b',
    '-neighbour 10.244.0.64',
    '-neighbour 10.244.1.0',
    '-route 10.244.0.64/26',
    '-route 10.244.1.0/26',
  ]);
  const d = computeDesired('a', [a, b]);
  assert.deepEqual(diff(d, computeDesired('a', [a, b])), []);
  assert.deepEqual(diff(computeDesired('a', [a, { ...b, underlayAddress: '198.51.100.99' }]), d), [
    '+fdb 02:00:00:00:00:0b',
  ]);
});

test('the same events applied in any order give the same desired state', () => {
  const forward = computeDesired('c', [a, b]);
  const reversed = computeDesired('c', [b, a]);
  assert.deepEqual(diff(forward, reversed), []);
});

// Routing modes. This node ('self') is 192.0.2.10/24: a is on its subnet, b is not.
const self = {
  node: 'self',
  underlayAddress: '192.0.2.10',
  vtepMac: '02:57:c0:00:02:0a',
  blockCidrs: ['10.244.2.0/26'],
};
const routing = (mode: RoutingMode): Routing => ({ mode, underlay: { address: '192.0.2.10', prefixLength: 24 } });
const describe = (s: KernelState) =>
  [...s.neighbours.values(), ...s.fdb.values(), ...s.routes.values()]
    .map((e) => (e.kind === 'route' ? `route ${e.cidr} ${e.mode} via ${e.gateway}` : `${e.kind} ${e.key}`))
    .sort();

test("auto: a node on this node's underlay subnet gets direct routes only; a node beyond it gets the VXLAN entries", () => {
  const d = computeDesired('self', [self, a, b], routing('auto'));
  assert.deepEqual(describe(d), [
    'fdb 02:00:00:00:00:0b',
    'neighbour 10.244.0.64',
    'neighbour 10.244.1.0',
    'route 10.244.0.0/26 direct via 192.0.2.11',
    'route 10.244.0.64/26 vxlan via 10.244.0.64',
    'route 10.244.1.0/26 vxlan via 10.244.1.0',
  ]);
  assert.deepEqual(
    d.peers.map((p) => `${p.node}:${p.mode}`),
    ['a:direct', 'b:vxlan'],
  );
});

test("vxlan: every node through VXLAN, whatever its subnet (today's behaviour)", () => {
  const d = computeDesired('self', [self, a, b], routing('vxlan'));
  assert.deepEqual(
    [...d.routes.values()].map((r) => r.mode),
    ['vxlan', 'vxlan', 'vxlan'],
  );
  assert.equal(d.fdb.size, 2);
  assert.deepEqual(diff(d, computeDesired('self', [self, a, b])), [], 'the default is VXLAN for every node');
});

test('direct: a node it cannot reach directly is refused, with a reason, and gets no entry at all', () => {
  const d = computeDesired('self', [self, a, b], routing('direct'));
  assert.deepEqual(describe(d), ['route 10.244.0.0/26 direct via 192.0.2.11']);
  const refused = d.peers.find((p) => p.node === 'b')!;
  assert.equal(refused.mode, 'refused');
  assert.match(refused.reason!, /198\.51\.100\.12 is outside this node's underlay subnet 192\.0\.2\.0\/24/);
});

test('subnet membership follows the prefix length: a /16 underlay reaches both, a /32 neither', () => {
  assert.ok(onUnderlaySubnet({ address: '192.0.2.10', prefixLength: 24 }, '192.0.2.254'));
  assert.ok(!onUnderlaySubnet({ address: '192.0.2.10', prefixLength: 24 }, '192.0.3.1'));
  assert.ok(onUnderlaySubnet({ address: '192.0.2.10', prefixLength: 16 }, '192.0.3.1'));
  assert.ok(!onUnderlaySubnet({ address: '192.0.2.10', prefixLength: 32 }, '192.0.2.11'));
});

test('a node changing mode keeps its route key: the route is replaced in place, only the VXLAN entries come or go', () => {
  const vxlan = computeDesired('self', [{ ...a, underlayAddress: '198.51.100.11' }], routing('auto'));
  const direct = computeDesired('self', [a], routing('auto'));
  assert.deepEqual(
    diff(vxlan, direct),
    ['+fdb 02:00:00:00:00:0a', '+neighbour 10.244.0.0', '+route 10.244.0.0/26'],
    'no route delete: the write replaces it',
  );
  assert.equal(compareState(vxlan, direct).missing.find((e) => e.kind === 'route')?.mode, 'vxlan');
  assert.deepEqual(diff(direct, vxlan), ['+route 10.244.0.0/26', '-fdb 02:00:00:00:00:0a', '-neighbour 10.244.0.0']);
});

test('existing direct routes are adopted as they are (no delete, no re-add); a direct route with the wrong gateway is replaced', () => {
  const d = computeDesired('self', [self, a, b], routing('auto'));
  // What the driver reads back: the same entries, fields in another order.
  const actual = emptyState();
  for (const e of d.neighbours.values()) actual.neighbours.set(e.key, { ...e });
  for (const e of d.fdb.values()) actual.fdb.set(e.key, { ...e });
  for (const r of d.routes.values())
    actual.routes.set(r.key, { mode: r.mode, gateway: r.gateway, cidr: r.cidr, key: r.key, kind: 'route' });
  assert.deepEqual(diff(d, actual), []);
  actual.routes.set('10.244.0.0/26', {
    kind: 'route',
    key: '10.244.0.0/26',
    cidr: '10.244.0.0/26',
    gateway: '192.0.2.99',
    mode: 'direct',
  });
  assert.deepEqual(diff(d, actual), ['+route 10.244.0.0/26']);
  // A stale direct route (its node withdrawn) is deleted like a VXLAN one.
  const gone = computeDesired('self', [self, b], routing('auto'));
  assert.deepEqual(diff(gone, d), ['-route 10.244.0.0/26']);
});

test('IPv6 blocks: through VXLAN over the IPv4 underlay (one FDB entry per node), even for a node routed directly; refused in direct mode', () => {
  const dual = { ...a, blockCidrs: ['10.244.9.0/26', 'fd00:10:244:0000::40/122', 'FD00:10:244::/122'] };
  const vx = computeDesired('self', [self, dual], routing('vxlan'));
  assert.deepEqual(
    [...vx.routes.keys()].sort(),
    ['10.244.9.0/26', 'fd00:10:244::/122', 'fd00:10:244::40/122'],
    'CIDRs in the form the kernel read-back prints',
  );
  assert.deepEqual(vx.routes.get('fd00:10:244::40/122'), {
    kind: 'route',
    key: 'fd00:10:244::40/122',
    cidr: 'fd00:10:244::40/122',
    gateway: 'fd00:10:244::40',
    mode: 'vxlan',
  });
  assert.deepEqual(vx.neighbours.get('fd00:10:244::40'), {
    kind: 'neighbour',
    key: 'fd00:10:244::40',
    ip: 'fd00:10:244::40',
    mac: a.vtepMac.toLowerCase(),
  });
  assert.equal(vx.fdb.size, 1);
  assert.equal(vx.peers[0]!.ipv6, 'vxlan');

  const auto = computeDesired('self', [self, dual], routing('auto'));
  assert.equal(auto.peers[0]!.mode, 'direct', "a is on this node's subnet");
  assert.equal(auto.routes.get('10.244.9.0/26')!.mode, 'direct');
  assert.equal(auto.routes.get('fd00:10:244::/122')!.mode, 'vxlan', 'its IPv6 blocks through VXLAN');
  assert.equal(auto.fdb.size, 1, 'with its FDB entry');
  assert.equal(auto.neighbours.size, 2, 'and one neighbour per IPv6 block, none for the direct IPv4 block');

  const direct = computeDesired('self', [self, dual], routing('direct'));
  assert.deepEqual([...direct.routes.keys()], ['10.244.9.0/26']);
  assert.equal(direct.fdb.size, 0);
  assert.equal(direct.peers[0]!.ipv6, 'refused');
  assert.match(direct.peers[0]!.reason!, /IPv6 blocks \(fd00:10:244::40\/122, fd00:10:244::\/122\) need VXLAN/);
});

test("a node whose block overlaps this node's underlay subnet is refused whole: no route takes the underlay into the overlay", () => {
  const routing: Routing = { mode: 'auto', underlay: { address: '192.0.2.10', prefixLength: 24 } };
  const rogue: RemoteNode = {
    node: 'rogue',
    underlayAddress: '198.51.100.9',
    vtepMac: '02:00:00:00:00:0c',
    blockCidrs: ['10.244.2.0/26', '192.0.2.0/25'],
  };
  const d = computeDesired('self', [a, rogue], routing);
  assert.deepEqual([...d.routes.keys()], ['10.244.0.0/26'], "only a's block is routed");
  const peer = d.peers.find((p) => p.node === 'rogue')!;
  assert.equal(peer.mode, 'refused');
  assert.match(peer.reason ?? '', /192\.0\.2\.0\/25 overlap this node's underlay subnet 192\.0\.2\.0\/24/);
  assert.equal(
    computeDesired('self', [{ ...rogue, blockCidrs: ['10.0.0.0/8'] }], routing).routes.size,
    1,
    'a block beside the subnet is routed',
  );
});
