import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { AttachResponse } from '../gen/weft/agent/v1/agent.js';
import { CniCode, CniError } from './errors.js';
import { appendResult, buildResult, formatResult, parsePrevResult } from './result.js';

const attached: AttachResponse = {
  interfaces: [
    { name: 'weft3f2a1c', mac: 'aa:bb:cc:00:00:01', sandbox: '' },
    { name: 'eth0', mac: '0a:58:0a:f4:00:05', sandbox: '/var/run/netns/cni-1234' },
  ],
  ips: [
    { address: '10.244.0.5/32', gateway: '169.254.1.1', interface: 1 },
    { address: 'fd00:10:244::5/128', gateway: '', interface: 1 },
  ],
  routes: [
    { dst: '0.0.0.0/0', gw: '169.254.1.1' },
    { dst: '::/0', gw: '' },
  ],
};

describe('buildResult', () => {
  it('turns an AttachResponse into a result, leaving out empty optional fields', () => {
    assert.deepEqual(buildResult(attached), {
      interfaces: [
        { name: 'weft3f2a1c', mac: 'aa:bb:cc:00:00:01' },
        { name: 'eth0', mac: '0a:58:0a:f4:00:05', sandbox: '/var/run/netns/cni-1234' },
      ],
      ips: [
        { address: '10.244.0.5/32', gateway: '169.254.1.1', interface: 1 },
        { address: 'fd00:10:244::5/128', interface: 1 },
      ],
      routes: [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }, { dst: '::/0' }],
      dns: {},
    });
  });

  it('has no 0.x-only fields and survives a JSON round trip', () => {
    const out = JSON.parse(JSON.stringify(formatResult('1.0.0', buildResult(attached)))) as Record<string, unknown>;
    assert.deepEqual(Object.keys(out).sort(), ['cniVersion', 'dns', 'interfaces', 'ips', 'routes']);
    for (const ip of out.ips as Record<string, unknown>[]) assert.equal('version' in ip, false);
  });

  it('leaves out mac when the agent gives none', () => {
    const res = buildResult({
      ...attached,
      interfaces: [{ name: 'eth0', mac: '', sandbox: '/proc/1/ns/net' }],
      ips: [{ address: '10.0.0.2/24', gateway: '', interface: 0 }],
    });
    assert.deepEqual(res.interfaces, [{ name: 'eth0', sandbox: '/proc/1/ns/net' }]);
  });

  const unusable: [string, Partial<AttachResponse>, RegExp][] = [
    ['no addresses', { ips: [] }, /no IP addresses/],
    [
      'an address without a prefix',
      { ips: [{ address: '10.244.0.5', gateway: '', interface: 1 }] },
      /ips\[0\]\.address/,
    ],
    [
      'a prefix that is too long',
      { ips: [{ address: '10.244.0.5/33', gateway: '', interface: 1 }] },
      /ips\[0\]\.address/,
    ],
    ['a bad gateway', { ips: [{ address: '10.244.0.5/32', gateway: 'gw', interface: 1 }] }, /ips\[0\]\.gateway/],
    [
      'an interface index out of range',
      { ips: [{ address: '10.244.0.5/32', gateway: '', interface: 2 }] },
      /out of range/,
    ],
    [
      'an interface without a name',
      { interfaces: [{ name: '', mac: '', sandbox: '' }, ...attached.interfaces] },
      /interfaces\[0\] has no name/,
    ],
    ['a bad route', { routes: [{ dst: 'default', gw: '' }] }, /routes\[0\]\.dst/],
    ['a bad route gateway', { routes: [{ dst: '0.0.0.0/0', gw: '1.2.3' }] }, /routes\[0\]\.gw/],
  ];
  for (const [what, patch, detail] of unusable) {
    it(`refuses ${what} with code 999 rather than print a broken result`, () => {
      assert.throws(
        () => buildResult({ ...attached, ...patch }),
        (err: unknown) => err instanceof CniError && err.code === CniCode.internal && detail.test(err.details),
      );
    });
  }
});

describe('formatResult', () => {
  const ours = buildResult(attached);

  it('writes 1.0.0 and 1.1.0 results without ips[].version', () => {
    for (const v of ['1.0.0', '1.1.0']) {
      const out = formatResult(v, ours);
      assert.equal(out.cniVersion, v);
      assert.deepEqual(out.ips, [
        { address: '10.244.0.5/32', gateway: '169.254.1.1', interface: 1 },
        { address: 'fd00:10:244::5/128', interface: 1 },
      ]);
      assert.deepEqual(out.dns, {});
    }
  });

  it('writes 0.3.0, 0.3.1 and 0.4.0 results with ips[].version "4" or "6" and the rest unchanged', () => {
    for (const v of ['0.3.0', '0.3.1', '0.4.0']) {
      assert.deepEqual(formatResult(v, ours), {
        cniVersion: v,
        interfaces: [
          { name: 'weft3f2a1c', mac: 'aa:bb:cc:00:00:01' },
          { name: 'eth0', mac: '0a:58:0a:f4:00:05', sandbox: '/var/run/netns/cni-1234' },
        ],
        ips: [
          { version: '4', address: '10.244.0.5/32', gateway: '169.254.1.1', interface: 1 },
          { version: '6', address: 'fd00:10:244::5/128', interface: 1 },
        ],
        routes: [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }, { dst: '::/0' }],
        dns: {},
      });
    }
  });

  it('round-trips through parsePrevResult in every version', () => {
    for (const v of ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']) {
      assert.deepEqual(parsePrevResult(v, JSON.parse(JSON.stringify(formatResult(v, ours)))), ours, v);
    }
  });
});

describe('parsePrevResult', () => {
  const fails = (v: string, value: unknown, msg: RegExp) =>
    assert.throws(
      () => parsePrevResult(v, value),
      (err: unknown) => err instanceof CniError && err.code === CniCode.invalidConfig && msg.test(err.message),
    );

  it('reads a minimal result, and keeps fields it does not know', () => {
    assert.deepEqual(parsePrevResult('1.1.0', { ips: [{ address: '10.0.0.2/24' }] }), {
      interfaces: [],
      ips: [{ address: '10.0.0.2/24' }],
      routes: [],
      dns: {},
    });
    const withExtras = parsePrevResult('1.1.0', {
      interfaces: [{ name: 'eth0', sandbox: '/x', mtu: 1450, socketPath: '/s' }],
      ips: [{ address: '10.0.0.2/24', interface: 0 }],
      routes: [{ dst: '10.1.0.0/16', priority: 5 }],
      dns: { nameservers: ['10.0.0.10'] },
    });
    assert.deepEqual(withExtras.interfaces[0], { name: 'eth0', sandbox: '/x', mtu: 1450, socketPath: '/s' });
    assert.deepEqual(withExtras.routes[0], { dst: '10.1.0.0/16', priority: 5 });
    assert.deepEqual(withExtras.dns, { nameservers: ['10.0.0.10'] });
  });

  it('refuses what is not a result, naming what is wrong (code 7)', () => {
    fails('1.0.0', 'x', /must be an object/);
    fails('1.0.0', { ips: {} }, /"ips" must be a list/);
    fails('1.0.0', { ips: [{ address: '10.0.0.2' }] }, /ips\[0\]\.address/);
    fails('1.0.0', { ips: [{ address: '10.0.0.2/24', interface: 0 }] }, /ips\[0\]\.interface 0 is not an index/);
    fails('1.0.0', { interfaces: [{ mac: 'x' }], ips: [] }, /interfaces\[0\]\.name/);
    fails('1.0.0', { ips: [], routes: [{ gw: '10.0.0.1' }] }, /routes\[0\]\.dst/);
    fails('1.0.0', { ips: [], dns: [] }, /"dns" must be an object/);
    fails('0.4.0', { ips: [{ version: '6', address: '10.0.0.2/24' }] }, /version "6" does not match/);
  });
});

describe('appendResult', () => {
  it("puts our interfaces after the previous plugin's and moves our interface indexes along", () => {
    const previous = parsePrevResult('1.0.0', {
      interfaces: [{ name: 'cni0' }, { name: 'net1', sandbox: '/x' }],
      ips: [{ address: '192.168.0.5/24', interface: 1 }],
      routes: [{ dst: '192.168.0.0/16' }],
      dns: { nameservers: ['192.168.0.1'] },
    });
    const merged = appendResult(previous, buildResult(attached));
    assert.deepEqual(
      merged.interfaces.map((i) => i.name),
      ['cni0', 'net1', 'weft3f2a1c', 'eth0'],
    );
    assert.deepEqual(
      merged.ips.map((i) => [i.address, i.interface]),
      [
        ['192.168.0.5/24', 1],
        ['10.244.0.5/32', 3],
        ['fd00:10:244::5/128', 3],
      ],
    );
    assert.equal(merged.routes.length, 3);
    assert.deepEqual(merged.dns, { nameservers: ['192.168.0.1'] });
  });
});
