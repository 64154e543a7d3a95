import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseUnderlay, validateUnderlayWanted, type UnderlayLink } from './underlay-choice.js';

const links: UnderlayLink[] = [
  {
    ifindex: 1,
    ifname: 'lo',
    mtu: 65536,
    addr_info: [{ family: 'inet', local: '127.0.0.1', prefixlen: 8, scope: 'host' }],
  },
  {
    ifindex: 2,
    ifname: 'eth0',
    mtu: 1500,
    addr_info: [{ family: 'inet', local: '192.0.2.11', prefixlen: 24, scope: 'global' }],
  },
  {
    ifindex: 3,
    ifname: 'ens5',
    mtu: 9001,
    addr_info: [
      { family: 'inet', local: '198.51.100.7', prefixlen: 24, scope: 'global' },
      { family: 'inet6', local: 'fe80::1', prefixlen: 64, scope: 'link' },
    ],
  },
  { ifindex: 4, ifname: 'docker0', mtu: 1500, addr_info: [] },
];
const none = { address: '', cidrs: '', interfaces: '', routeTo: '' };

test('the underlay by address, CIDR, interface pattern, route, default route, first global address; MTU and subnet come with it', () => {
  assert.deepEqual(chooseUnderlay(links, { ...none, address: '198.51.100.7' }, {}), {
    interface: 'ens5',
    ifindex: 3,
    address: '198.51.100.7',
    prefixLength: 24,
    mtu: 9001,
    by: 'address 198.51.100.7',
  });
  assert.equal(chooseUnderlay(links, { ...none, cidrs: '10.0.0.0/8, 198.51.100.0/24' }, {}).interface, 'ens5');
  assert.equal(
    chooseUnderlay(links, { ...none, cidrs: '192.0.2.0/24,198.51.100.0/24' }, {}).interface,
    'eth0',
    'CIDRs are tried in order',
  );
  assert.equal(
    chooseUnderlay(links, { ...none, interfaces: 'ens*,eth*' }, {}).interface,
    'ens5',
    'patterns are tried in order',
  );
  assert.equal(
    chooseUnderlay(links, { ...none, interfaces: 'docker0,eth?' }, {}).interface,
    'eth0',
    'an interface without an address is passed over',
  );
  assert.deepEqual(
    chooseUnderlay(links, { ...none, routeTo: '203.0.113.9' }, { routeTo: { dev: 'ens5', prefsrc: '198.51.100.7' } })
      .by,
    'route to 203.0.113.9',
  );
  assert.equal(chooseUnderlay(links, none, { defaultDev: 'ens5' }).interface, 'ens5');
  assert.equal(chooseUnderlay(links, none, {}).interface, 'eth0');
  assert.equal(
    chooseUnderlay(links, { ...none, address: '192.0.2.11', cidrs: '198.51.100.0/24' }, {}).interface,
    'eth0',
    'an address wins over the rest',
  );
});

test("what cannot be found, or is malformed, is said in the setting's terms", () => {
  assert.throws(
    () => chooseUnderlay(links, { ...none, cidrs: '10.0.0.0/8' }, {}),
    /no interface has a global IPv4 address inside WEFT_UNDERLAY_CIDR 10\.0\.0\.0\/8/,
  );
  assert.throws(
    () => chooseUnderlay(links, { ...none, interfaces: 'wlan*' }, {}),
    /no interface matching WEFT_UNDERLAY_INTERFACE wlan\*/,
  );
  assert.throws(
    () => chooseUnderlay(links, { ...none, address: '192.0.2.99' }, {}),
    /no interface holds WEFT_UNDERLAY_ADDRESS 192\.0\.2\.99/,
  );
  assert.throws(
    () => chooseUnderlay(links, { ...none, routeTo: '203.0.113.9' }, { routeTo: null }),
    /no route to WEFT_UNDERLAY_ROUTE_TO/,
  );
  assert.throws(() => chooseUnderlay([links[0]!], none, {}), /no interface has a global IPv4 address/);
  assert.throws(
    () => validateUnderlayWanted({ ...none, cidrs: '10.0.0.1/8' }),
    /WEFT_UNDERLAY_CIDR="10\.0\.0\.1\/8": /,
  );
  assert.throws(
    () => validateUnderlayWanted({ ...none, address: 'fd00::1' }),
    /WEFT_UNDERLAY_ADDRESS="fd00::1": not an IPv4 address/,
  );
  assert.throws(
    () => validateUnderlayWanted({ ...none, routeTo: 'gateway' }),
    /WEFT_UNDERLAY_ROUTE_TO="gateway": not an IP address/,
  );
});
