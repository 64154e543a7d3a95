import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  checkAddressSet,
  checkCidr,
  checkPod,
  checkPolicyEntry,
  checkPoolCidr,
  checkRemoteNode,
  setNameProblem,
  type StreamPolicyEntry,
} from './stream-validation.js';

/** Every field of the control plane's streams, checked before it can reach iptables-restore, ipset or netlink. */
const e = (over: Partial<StreamPolicyEntry> = {}): StreamPolicyEntry => ({
  tier: 'networkpolicy',
  action: 'allow',
  peerSet: 'weft-00000000000000aa',
  protocol: 'TCP',
  portFrom: 80,
  portTo: 80,
  source: 'NetworkPolicy/x/p ingress[0]',
  ...over,
});
const refused = (c: { refused?: string }) => c.refused ?? null;

test("set names: Weft's prefix, lower-case letters and digits, short enough for ipset with weft6- and a temporary suffix", () => {
  assert.equal(setNameProblem('weft-00000000000000aa'), null);
  assert.equal(setNameProblem('weft-1'), null);
  for (const bad of [
    '',
    'weft-',
    'kube-abc',
    'weft-ABC',
    'weft-a b',
    'weft-a\n-A FORWARD -j ACCEPT',
    'weft-a;b',
    `weft-${'a'.repeat(25)}`,
    'weft6-aa',
  ]) {
    assert.match(setNameProblem(bad) ?? '', /is not Weft's/, JSON.stringify(bad));
  }
});

test('policy entries: known tier, action and protocol, ports in range and only with a protocol, a printable source', () => {
  assert.deepEqual(checkPolicyEntry(e()).value, {
    tier: 'networkpolicy',
    action: 'allow',
    peerSet: 'weft-00000000000000aa',
    protocol: 'TCP',
    ports: { from: 80, to: 80 },
    source: 'NetworkPolicy/x/p ingress[0]',
  });
  assert.deepEqual(checkPolicyEntry(e({ peerSet: '', protocol: '', portFrom: 0, portTo: 0 })).value, {
    tier: 'networkpolicy',
    action: 'allow',
    peerSet: null,
    protocol: null,
    ports: null,
    source: 'NetworkPolicy/x/p ingress[0]',
  });
  assert.deepEqual(
    checkPolicyEntry(e({ portFrom: 1000, portTo: 0 })).value?.ports,
    { from: 1000, to: 1000 },
    'port_to 0: one port',
  );
  assert.deepEqual(checkPolicyEntry(e({ protocol: 'SCTP', portFrom: 1, portTo: 65535 })).value?.ports, {
    from: 1,
    to: 65535,
  });
  const cases: [Partial<StreamPolicyEntry>, RegExp][] = [
    [{ tier: 'root' }, /tier "root"/],
    [{ action: 'accept' }, /action "accept"/],
    [{ protocol: 'tcp' }, /protocol "tcp" is not one of TCP, UDP, SCTP/],
    [{ protocol: 'ICMP' }, /protocol "ICMP"/],
    [{ protocol: 'TCP -j ACCEPT' }, /protocol/],
    [{ peerSet: 'weft-x -j ACCEPT' }, /peer set name/],
    [{ portFrom: 70000, portTo: 70000 }, /not in 1-65535/],
    [{ portFrom: 0, portTo: 80 }, /not in 1-65535/],
    [{ portFrom: 90, portTo: 80 }, /ends before it starts/],
    [{ protocol: '', portFrom: 80, portTo: 80 }, /without a protocol/],
    [{ source: 'NetworkPolicy/x/p\n-A FORWARD -j ACCEPT' }, /control characters/],
    [{ source: 'x'.repeat(2000) }, /longer than 1024/],
  ];
  for (const [over, why] of cases) assert.match(refused(checkPolicyEntry(e(over))) ?? '', why, JSON.stringify(over));
});

test('CIDRs and sets: strictly parsed, family checked, canonical; a set with one bad member is refused whole', () => {
  assert.equal(checkCidr('10.244.0.0/16', 'pool').value, '10.244.0.0/16');
  assert.equal(checkCidr('FD00:10:244:0::/48', 'pool').value, 'fd00:10:244::/48', 'canonical');
  for (const bad of [
    '10.0.0.0/8 -j ACCEPT',
    '10.0.0.0/8\n',
    ' 10.0.0.0/8',
    '10.0.0.1/8',
    '10.0.0.0/33',
    '10.0.0.0',
    '10.0.0.0/8,1.2.3.4/32',
  ]) {
    assert.ok(refused(checkCidr(bad, 'member')), JSON.stringify(bad));
  }
  assert.match(refused(checkCidr('fd00::/64', 'block', 4)) ?? '', /is not IPv4/);
  assert.deepEqual(checkAddressSet({ name: 'weft-ab', cidrs: ['10.244.1.7/32', 'fd00::1/128'] }).value, {
    name: 'weft-ab',
    cidrs: ['10.244.1.7/32', 'fd00::1/128'],
  });
  const cidrs = ['10.244.1.7/32'];
  assert.equal(
    checkAddressSet({ name: 'weft-ab', cidrs }).value?.cidrs,
    cidrs,
    'the array itself when nothing changed',
  );
  assert.match(
    refused(checkAddressSet({ name: 'weft-ab', cidrs: ['10.244.1.7/32', '10.0.0.0/8 -j ACCEPT'] })) ?? '',
    /member of weft-ab "10.0.0.0\/8 -j ACCEPT" is not a CIDR/,
  );
  assert.match(refused(checkAddressSet({ name: 'weft-a\nflush', cidrs: [] })) ?? '', /set name/);
  // Canonical IPv4 members take a fast path; it refuses what the general parser refuses.
  for (const bad of ['10.0.0.1/8', '128.0.0.0/0', '10.244.1.7/33', '256.0.0.0/8', '10.0.0.0/8 ', '10.244.1.7']) {
    assert.ok(refused(checkAddressSet({ name: 'weft-ab', cidrs: [bad] })), JSON.stringify(bad));
  }
  for (const all of ['0.0.0.0/0', '::/0'])
    assert.match(
      refused(checkAddressSet({ name: 'weft-ab', cidrs: ['10.0.0.0/8', all] })) ?? '',
      /hash:net cannot hold a \/0/,
      all,
    );
  assert.deepEqual(
    checkAddressSet({ name: 'weft-ab', cidrs: ['0.0.0.0/1', '255.255.255.255/32', '10.0.0.0/08'] }).value?.cidrs,
    ['0.0.0.0/1', '255.255.255.255/32', '10.0.0.0/8'],
  );
  assert.equal(checkPoolCidr('10.244.0.0/16').value, '10.244.0.0/16');
  assert.ok(refused(checkPoolCidr('10.244.0.0/16 ! -d 1.1.1.1')));
});

test('pods: names, addresses and every entry checked; a pod naming a set that is not held is refused', () => {
  const pod = {
    namespace: 'x',
    name: 'web-0',
    addresses: ['10.244.0.5', 'fd00:10:244::5'],
    ingress: [e()],
    egress: [],
  };
  assert.deepEqual(checkPod(pod).value?.addresses, ['10.244.0.5', 'fd00:10:244::5']);
  assert.match(refused(checkPod({ ...pod, namespace: 'x y' })) ?? '', /namespace "x y"/);
  assert.match(refused(checkPod({ ...pod, name: 'a\n-A' })) ?? '', /pod name/);
  assert.match(refused(checkPod({ ...pod, addresses: ['10.244.0.5/32'] })) ?? '', /pod address/);
  assert.match(
    refused(checkPod({ ...pod, egress: [e(), e({ protocol: 'IGMP' })] })) ?? '',
    /^egress\[1\]: protocol "IGMP"/,
  );
  assert.match(
    refused(checkPod(pod, (name) => name !== 'weft-00000000000000aa')) ?? '',
    /ingress\[0\] names the set weft-00000000000000aa, which is not held/,
  );
});

test('remote nodes: a DNS name, an IPv4 underlay address, a MAC and strict block CIDRs', () => {
  const n = {
    node: 'node-2',
    underlayAddress: '192.0.2.12',
    vtepMac: '02:57:C0:00:02:0C',
    blockCidrs: ['10.244.1.0/26', 'fd00:10:244:0:1::/80'],
  };
  assert.deepEqual(checkRemoteNode(n).value, { ...n, vtepMac: '02:57:c0:00:02:0c' });
  assert.match(refused(checkRemoteNode({ ...n, node: 'node 2' })) ?? '', /node name/);
  assert.match(refused(checkRemoteNode({ ...n, underlayAddress: 'fd00::12' })) ?? '', /is not IPv4/);
  assert.match(refused(checkRemoteNode({ ...n, underlayAddress: '192.0.2.12 dev lo' })) ?? '', /underlay address/);
  assert.match(refused(checkRemoteNode({ ...n, vtepMac: '02:57:c0:00:02' })) ?? '', /VTEP MAC/);
  assert.match(refused(checkRemoteNode({ ...n, blockCidrs: ['10.244.1.0/26', '10.244.2.1/26'] })) ?? '', /host bits/);
  assert.match(
    refused(checkRemoteNode({ ...n, blockCidrs: ['0.0.0.0/0'] })) ?? '',
    /every address/,
    'a route to it would replace the default route',
  );
  assert.match(refused(checkRemoteNode({ ...n, blockCidrs: ['::/0'] })) ?? '', /every address/);
  assert.match(refused(checkRemoteNode({ ...n, blockCidrs: ['192.0.2.0/24'] })) ?? '', /its own underlay address/);
});
