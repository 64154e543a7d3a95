import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { findAttachmentDifference, type ExpectedAttachment, type ObservedAttachment } from './attachment-check.js';

const want: ExpectedAttachment = {
  handle: 'c1/eth0',
  node: 'node1',
  netns: '/var/run/netns/pod',
  ifname: 'eth0',
  hostIfname: 'weft0123456789a',
  gateway: '169.254.1.1',
  gateway6: 'fe80::1',
  routeProtocol: 87,
  reportedAddresses: [],
  reportedMac: '',
};

/** Exactly what ADD makes, as the kernel and IPAM report it. */
const healthy: ObservedAttachment = {
  allocation: { address: '10.244.0.5' },
  netnsExists: true,
  podLink: {
    ifindex: 2,
    kind: 'veth',
    up: true,
    mac: '0a:58:0a:f4:00:05',
    peerIfindex: 9,
    addresses: ['10.244.0.5/32', 'fe80::858:aff:fef4:5/64'],
  },
  podRoutes: [
    { dst: 'default', gateway: '169.254.1.1', dev: 'eth0', scope: 'global', protocol: 'boot' },
    { dst: '169.254.1.1', gateway: '', dev: 'eth0', scope: 'link', protocol: 'boot' },
  ],
  hostLink: { ifindex: 9, kind: 'veth', up: true, mac: '1e:b1:3c:f9:82:98', peerIfindex: 2, addresses: [] },
  hostProxyArp: true,
  hostRoutes: [{ dst: '10.244.0.5', gateway: '', dev: 'weft0123456789a', scope: 'link', protocol: '87' }],
};

const differs = (patch: Partial<ObservedAttachment>, expected: Partial<ExpectedAttachment> = {}) =>
  findAttachmentDifference({ ...want, ...expected }, { ...healthy, ...patch });

describe('findAttachmentDifference', () => {
  it('finds nothing when everything ADD made is there', () => {
    assert.equal(differs({}), null);
  });

  it('agrees with a prevResult that reports the same address and MAC (any case, with or without /32)', () => {
    assert.equal(differs({}, { reportedAddresses: ['10.244.0.5/32'], reportedMac: '0A:58:0A:F4:00:05' }), null);
  });

  it('allows what a later chained plugin added: more routes, more addresses', () => {
    assert.equal(
      differs({
        podRoutes: [
          ...healthy.podRoutes,
          { dst: '10.96.0.0/12', gateway: '169.254.1.1', dev: 'eth0', scope: 'global', protocol: 'boot' },
        ],
        podLink: { ...healthy.podLink!, addresses: [...healthy.podLink!.addresses, '192.168.7.7/24'] },
      }),
      null,
    );
  });

  const cases: [string, Partial<ObservedAttachment>, Partial<ExpectedAttachment>, RegExp][] = [
    ['no IPAM allocation', { allocation: null }, {}, /^IPAM holds no address for handle c1\/eth0 on node node1$/],
    [
      'a prevResult address that IPAM does not hold',
      {},
      { reportedAddresses: ['10.244.0.9/32'] },
      /prevResult reports 10\.244\.0\.9\/32 for eth0, but IPAM holds 10\.244\.0\.5\/32/,
    ],
    ['a missing namespace', { netnsExists: false }, {}, /network namespace \/var\/run\/netns\/pod does not exist/],
    ['a missing pod interface', { podLink: null }, {}, /interface eth0 does not exist in network namespace/],
    [
      'a pod interface that is not a veth',
      { podLink: { ...healthy.podLink!, kind: 'dummy' } },
      {},
      /eth0 .* is a dummy device, not Weft's veth/,
    ],
    [
      'a pod interface without the address',
      { podLink: { ...healthy.podLink!, addresses: ['10.244.0.6/32'] } },
      {},
      /has 10\.244\.0\.6\/32, not 10\.244\.0\.5\/32/,
    ],
    [
      'the address with another prefix length',
      { podLink: { ...healthy.podLink!, addresses: ['10.244.0.5/24'] } },
      {},
      /not 10\.244\.0\.5\/32/,
    ],
    [
      'a reported address gone from the interface',
      {},
      { reportedAddresses: ['10.244.0.5/32', '10.244.9.9/32'] },
      /lacks 10\.244\.9\.9\/32, which the runtime's prevResult reports/,
    ],
    ['a pod interface that is down', { podLink: { ...healthy.podLink!, up: false } }, {}, /interface eth0 .* is down/],
    [
      'another MAC than reported',
      {},
      { reportedMac: '0a:58:0a:f4:00:99' },
      /has MAC 0a:58:0a:f4:00:05, but the runtime's prevResult reports 0a:58:0a:f4:00:99/,
    ],
    [
      'no link route to the gateway',
      { podRoutes: healthy.podRoutes.filter((r) => r.dst !== '169.254.1.1') },
      {},
      /no link route to its gateway 169\.254\.1\.1 on eth0/,
    ],
    [
      'no default route',
      { podRoutes: healthy.podRoutes.filter((r) => r.dst !== 'default') },
      {},
      /no default route via 169\.254\.1\.1 dev eth0/,
    ],
    [
      'a default route elsewhere',
      {
        podRoutes: [
          healthy.podRoutes[1]!,
          { dst: 'default', gateway: '10.0.0.1', dev: 'eth0', scope: 'global', protocol: 'boot' },
        ],
      },
      {},
      /no default route via 169\.254\.1\.1/,
    ],
    [
      'a missing host interface',
      { hostLink: null },
      {},
      /host interface weft0123456789a \(the node's end of eth0\) does not exist/,
    ],
    [
      'a host interface that is not a veth',
      { hostLink: { ...healthy.hostLink!, kind: '' } },
      {},
      /is a non-veth device/,
    ],
    [
      "a host veth that is not the pod interface's peer",
      { hostLink: { ...healthy.hostLink!, ifindex: 10 } },
      {},
      /is not the other end of eth0/,
    ],
    [
      'a pod veth peered elsewhere',
      { podLink: { ...healthy.podLink!, peerIfindex: 11 } },
      {},
      /is not the other end of eth0/,
    ],
    [
      'a host interface that is down',
      { hostLink: { ...healthy.hostLink!, up: false } },
      {},
      /host interface weft0123456789a is down/,
    ],
    ['proxy ARP off', { hostProxyArp: false }, {}, /proxy ARP is off on host interface weft0123456789a/],
    ['proxy ARP unreadable', { hostProxyArp: null }, {}, /proxy ARP is off/],
    ['no host route', { hostRoutes: [] }, {}, /the node has no route to 10\.244\.0\.5\/32 through weft0123456789a/],
    [
      'a host route of another protocol',
      { hostRoutes: [{ ...healthy.hostRoutes[0]!, protocol: 'static' }] },
      {},
      /has protocol static, not Weft's 87/,
    ],
  ];
  for (const [what, patch, expected, message] of cases) {
    it(`reports ${what}`, () => {
      const got = differs(patch, expected);
      assert.ok(got, 'a difference');
      assert.match(got, message);
    });
  }

  /** A dual-stack pod, exactly as ADD makes it. */
  const dual: ObservedAttachment = {
    ...healthy,
    allocation: { address: '10.244.0.5', address6: 'fd00:10:244::5' },
    podLink: { ...healthy.podLink!, addresses: ['10.244.0.5/32', 'fd00:10:244::5/128', 'fe80::858:aff:fef4:5/64'] },
    podRoutes6: [
      { dst: 'fe80::/64', gateway: '', dev: 'eth0', scope: 'global', protocol: 'kernel' },
      { dst: 'default', gateway: 'fe80::1', dev: 'eth0', scope: 'global', protocol: 'boot' },
    ],
    hostLink: { ...healthy.hostLink!, addresses: ['fe80::1/64', 'fe80::1cb1:3cff:fef9:8298/64'] },
    hostRoutes6: [{ dst: 'fd00:10:244::5', gateway: '', dev: 'weft0123456789a', scope: 'global', protocol: '87' }],
  };
  const differs6 = (patch: Partial<ObservedAttachment>, expected: Partial<ExpectedAttachment> = {}) =>
    findAttachmentDifference({ ...want, ...expected }, { ...dual, ...patch });

  it('finds nothing when a dual-stack pod has everything ADD made, also against a prevResult with both addresses', () => {
    assert.equal(differs6({}), null);
    assert.equal(differs6({}, { reportedAddresses: ['10.244.0.5/32', 'fd00:10:244::5/128'] }), null);
  });

  const cases6: [string, Partial<ObservedAttachment>, Partial<ExpectedAttachment>, RegExp][] = [
    [
      'a prevResult without the IPv6 address',
      {},
      { reportedAddresses: ['10.244.0.5/32'] },
      /prevResult reports 10\.244\.0\.5\/32 for eth0, but IPAM holds fd00:10:244::5\/128/,
    ],
    [
      'a pod interface without its IPv6 address',
      { podLink: { ...dual.podLink!, addresses: ['10.244.0.5/32'] } },
      {},
      /eth0 .* lacks fd00:10:244::5\/128 \(the IPv6 address IPAM holds/,
    ],
    [
      'no IPv6 default route',
      { podRoutes6: dual.podRoutes6!.filter((r) => r.dst !== 'default') },
      {},
      /no IPv6 default route via fe80::1 dev eth0/,
    ],
    [
      'no IPv6 gateway on the host end',
      { hostLink: { ...dual.hostLink!, addresses: ['fe80::1cb1:3cff:fef9:8298/64'] } },
      {},
      /weft0123456789a lacks fe80::1\/64/,
    ],
    ['no IPv6 host route', { hostRoutes6: [] }, {}, /no route to fd00:10:244::5\/128 through weft0123456789a/],
    [
      'an IPv6 host route of another protocol',
      { hostRoutes6: [{ ...dual.hostRoutes6![0]!, protocol: 'boot' }] },
      {},
      /fd00:10:244::5\/128 .* has protocol boot, not Weft's 87/,
    ],
  ];
  for (const [what, patch, expected, message] of cases6) {
    it(`reports, for a dual-stack pod, ${what}`, () => {
      const got = differs6(patch, expected);
      assert.ok(got, 'a difference');
      assert.match(got, message);
    });
  }

  it('reports the first difference only, in order: record, pod side, host side', () => {
    assert.match(differs({ allocation: null, podLink: null, hostLink: null })!, /^IPAM/);
    assert.match(differs({ podLink: null, hostLink: null })!, /interface eth0 does not exist/);
  });
});
