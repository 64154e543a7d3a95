import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { AttachResponse } from '../gen/weft/agent/v1/agent.js';
import { CniCode, CniError } from './errors.js';
import { buildResult } from './result.js';

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
  it('turns an AttachResponse into a CNI 1.0.0 result, leaving out empty optional fields', () => {
    assert.deepEqual(buildResult('1.0.0', attached), {
      cniVersion: '1.0.0',
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
    const out = JSON.parse(JSON.stringify(buildResult('1.0.0', attached))) as Record<string, unknown>;
    assert.deepEqual(Object.keys(out).sort(), ['cniVersion', 'dns', 'interfaces', 'ips', 'routes']);
    for (const ip of out.ips as Record<string, unknown>[]) assert.equal('version' in ip, false);
  });

  it('leaves out mac when the agent gives none', () => {
    const res = buildResult('1.0.0', { ...attached, interfaces: [{ name: 'eth0', mac: '', sandbox: '/proc/1/ns/net' }], ips: [{ address: '10.0.0.2/24', gateway: '', interface: 0 }] });
    assert.deepEqual(res.interfaces, [{ name: 'eth0', sandbox: '/proc/1/ns/net' }]);
  });

  const unusable: [string, Partial<AttachResponse>, RegExp][] = [
    ['no addresses', { ips: [] }, /no IP addresses/],
    ['an address without a prefix', { ips: [{ address: '10.244.0.5', gateway: '', interface: 1 }] }, /ips\[0\]\.address/],
    ['a prefix that is too long', { ips: [{ address: '10.244.0.5/33', gateway: '', interface: 1 }] }, /ips\[0\]\.address/],
    ['a bad gateway', { ips: [{ address: '10.244.0.5/32', gateway: 'gw', interface: 1 }] }, /ips\[0\]\.gateway/],
    ['an interface index out of range', { ips: [{ address: '10.244.0.5/32', gateway: '', interface: 2 }] }, /out of range/],
    ['an interface without a name', { interfaces: [{ name: '', mac: '', sandbox: '' }, ...attached.interfaces] }, /interfaces\[0\] has no name/],
    ['a bad route', { routes: [{ dst: 'default', gw: '' }] }, /routes\[0\]\.dst/],
    ['a bad route gateway', { routes: [{ dst: '0.0.0.0/0', gw: '1.2.3' }] }, /routes\[0\]\.gw/],
  ];
  for (const [what, patch, detail] of unusable) {
    it(`refuses ${what} with code 999 rather than print a broken result`, () => {
      assert.throws(
        () => buildResult('1.0.0', { ...attached, ...patch }),
        (err: unknown) => err instanceof CniError && err.code === CniCode.internal && detail.test(err.details),
      );
    });
  }
});
