import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  DEFAULT_AGENT_SOCKET,
  MAX_CONFIG_BYTES,
  SUPPORTED_VERSIONS,
  compareVersions,
  declaredVersion,
  isLegacyResultVersion,
  parseNetworkConfig,
  readAttachOptions,
  readDns,
  readValidAttachments,
} from './config.js';
import { CniCode, CniError } from './errors.js';

const minimal = { cniVersion: '1.0.0', name: 'weft', type: 'weft' };
const json = (o: unknown) => JSON.stringify(o);

function rejects(raw: Uint8Array | string, code: number, msgPart?: RegExp): CniError {
  try {
    parseNetworkConfig(raw);
  } catch (err) {
    assert.ok(err instanceof CniError, `expected a CniError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.notEqual(err.message, '');
    if (msgPart) assert.match(err.message, msgPart);
    return err;
  }
  assert.fail('expected parseNetworkConfig to throw');
}

describe('parseNetworkConfig', () => {
  it('fills defaults for a minimal config', () => {
    const cfg = parseNetworkConfig(json(minimal));
    assert.deepEqual(cfg, {
      cniVersion: '1.0.0',
      name: 'weft',
      type: 'weft',
      agentSocket: DEFAULT_AGENT_SOCKET,
      pool: '',
      prevResult: undefined,
      runtimeConfig: {},
      args: {},
      gcAttachments: { valid: undefined, legacy: undefined },
      dns: undefined,
    });
    assert.ok(Object.isFrozen(cfg));
  });

  it('reads agentSocket and pool, from bytes as well as text', () => {
    const raw = Buffer.from(json({ ...minimal, agentSocket: '/var/run/weft.sock', pool: 'blue' }));
    const cfg = parseNetworkConfig(raw);
    assert.equal(cfg.agentSocket, '/var/run/weft.sock');
    assert.equal(cfg.pool, 'blue');
  });

  it('keeps the fields the runtime adds as they came, and ignores the rest', () => {
    const cfg = parseNetworkConfig(
      json({
        ...minimal,
        args: { cni: {} },
        runtimeConfig: { portMappings: [] },
        prevResult: { ips: [] },
        capabilities: {},
        foo: 1,
        'cni.dev/valid-attachments': [],
        'cni.dev/attachments': [{ containerID: 'a', ifname: 'eth0' }],
      }),
    );
    assert.equal(cfg.name, 'weft');
    assert.deepEqual(cfg.args, { cni: {} });
    assert.deepEqual(cfg.runtimeConfig, { portMappings: [] });
    assert.deepEqual(cfg.prevResult, { ips: [] });
    assert.deepEqual(cfg.gcAttachments, { valid: [], legacy: [{ containerID: 'a', ifname: 'eth0' }] });
    assert.equal('foo' in cfg, false);
  });

  it('refuses runtimeConfig or args that are not objects with code 7', () => {
    rejects(json({ ...minimal, runtimeConfig: [] }), CniCode.invalidConfig, /"runtimeConfig" must be an object/);
    rejects(json({ ...minimal, args: 'x' }), CniCode.invalidConfig, /"args" must be an object/);
  });

  it('refuses malformed JSON with code 6 and says what is wrong', () => {
    const err = rejects('{"cniVersion": "1.0.0",', CniCode.decodeFailure, /not valid JSON: /);
    assert.match(err.details, /\{"cniVersion"/);
  });

  it('refuses empty stdin, non-objects and invalid UTF-8 with code 6', () => {
    rejects('', CniCode.decodeFailure, /empty/);
    rejects('  \n', CniCode.decodeFailure, /empty/);
    rejects('[]', CniCode.decodeFailure, /an array/);
    rejects('null', CniCode.decodeFailure, /null/);
    rejects('"weft"', CniCode.decodeFailure, /a string/);
    rejects(new Uint8Array([0x7b, 0xff, 0x7d]), CniCode.decodeFailure, /UTF-8/);
  });

  it('refuses a config without cniVersion or name with code 7', () => {
    rejects(json({ name: 'weft', type: 'weft' }), CniCode.invalidConfig, /"cniVersion"/);
    rejects(json({ cniVersion: '1.0.0', type: 'weft' }), CniCode.invalidConfig, /"name"/);
    rejects(json({ ...minimal, cniVersion: 1 }), CniCode.invalidConfig, /"cniVersion"/);
    rejects(json({ ...minimal, cniVersion: '' }), CniCode.invalidConfig, /"cniVersion"/);
  });

  it('accepts every version from 0.3.0 to 1.1.0', () => {
    assert.deepEqual(SUPPORTED_VERSIONS, ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']);
    for (const v of SUPPORTED_VERSIONS)
      assert.equal(parseNetworkConfig(json({ ...minimal, cniVersion: v })).cniVersion, v);
  });

  it('refuses an unsupported cniVersion with code 1 and names the supported ones', () => {
    for (const v of ['0.1.0', '0.2.0', '1.2.0', '2.0.0', 'latest', '1.0']) {
      const err = rejects(
        json({ ...minimal, cniVersion: v }),
        CniCode.incompatibleVersion,
        /supports 0\.3\.0, 0\.3\.1, 0\.4\.0, 1\.0\.0, 1\.1\.0/,
      );
      assert.ok(err.message.includes(JSON.stringify(v)), err.message);
    }
  });

  it('checks the version before the other fields', () => {
    rejects(json({ cniVersion: '0.2.0' }), CniCode.incompatibleVersion);
  });

  it('refuses invalid names, types, sockets and pools with code 7', () => {
    rejects(json({ ...minimal, name: '' }), CniCode.invalidConfig, /"name"/);
    rejects(json({ ...minimal, name: '-weft' }), CniCode.invalidConfig, /"name"/);
    rejects(json({ ...minimal, name: 'we ft' }), CniCode.invalidConfig, /"name"/);
    rejects(json({ ...minimal, name: 7 }), CniCode.invalidConfig, /"name"/);
    rejects(json({ cniVersion: '1.0.0', name: 'weft' }), CniCode.invalidConfig, /"type"/);
    rejects(json({ ...minimal, agentSocket: 'run/weft/agent.sock' }), CniCode.invalidConfig, /absolute path/);
    rejects(json({ ...minimal, agentSocket: '' }), CniCode.invalidConfig, /"agentSocket"/);
    rejects(json({ ...minimal, agentSocket: 42 }), CniCode.invalidConfig, /"agentSocket"/);
    rejects(json({ ...minimal, agentSocket: `/${'s'.repeat(120)}` }), CniCode.invalidConfig, /too long/);
    rejects(json({ ...minimal, pool: 3 }), CniCode.invalidConfig, /"pool"/);
  });

  it('accepts names with letters, digits, "_", "." and "-"', () => {
    assert.equal(parseNetworkConfig(json({ ...minimal, name: 'k8s-pod_network.v1' })).name, 'k8s-pod_network.v1');
  });

  it('refuses a config over 1 MiB with code 7 without parsing it', () => {
    // Not JSON at all: parsing it would give code 6.
    const oversize = Buffer.alloc(MAX_CONFIG_BYTES + 1, '{');
    rejects(oversize, CniCode.invalidConfig, /larger than 1048576 bytes/);
    // Exactly the limit is still parsed.
    const padded = json(minimal).padEnd(MAX_CONFIG_BYTES, ' ');
    assert.equal(parseNetworkConfig(padded).name, 'weft');
  });
});

describe('declaredVersion', () => {
  it('returns the cniVersion of any JSON object that has one', () => {
    assert.equal(declaredVersion(json({ cniVersion: '1.0.0' })), '1.0.0');
    assert.equal(declaredVersion(Buffer.from(json({ cniVersion: '0.4.0', name: 3 }))), '0.4.0');
  });

  it('returns undefined when there is no usable version', () => {
    for (const raw of ['', '{', '[]', json({}), json({ cniVersion: 1 }), json({ cniVersion: '' })]) {
      assert.equal(declaredVersion(raw), undefined, raw);
    }
    assert.equal(declaredVersion(`${json({ cniVersion: '1.0.0' })}${' '.repeat(MAX_CONFIG_BYTES)}`), undefined);
  });
});

describe('compareVersions and isLegacyResultVersion', () => {
  it('orders versions numerically', () => {
    assert.ok(compareVersions('0.3.1', '0.4.0') < 0);
    assert.ok(compareVersions('1.1.0', '1.0.0') > 0);
    assert.ok(compareVersions('0.10.0', '0.4.0') > 0);
    assert.equal(compareVersions('1.0.0', '1.0.0'), 0);
  });

  it('puts 0.3.0-0.4.0 in the old result format and 1.x in the new one', () => {
    assert.deepEqual(SUPPORTED_VERSIONS.map(isLegacyResultVersion), [true, true, true, false, false]);
  });
});

describe('readAttachOptions', () => {
  const cfg = (extra: Record<string, unknown>) => parseNetworkConfig(json({ ...minimal, ...extra }));
  const none = { ip: '', mac: '' };

  function fails(fn: () => unknown, code: number, msg: RegExp): void {
    assert.throws(fn, (err: unknown) => err instanceof CniError && err.code === code && msg.test(err.message));
  }

  it('asks for nothing by default', () => {
    assert.deepEqual(readAttachOptions(cfg({}), none), { mac: '', requestedAddresses: [], podUid: '' });
  });

  it('reads the MAC from runtimeConfig, args.cni or CNI_ARGS, lower-cased', () => {
    assert.equal(
      readAttachOptions(cfg({ runtimeConfig: { mac: '0A:58:0A:F4:00:05' } }), none).mac,
      '0a:58:0a:f4:00:05',
    );
    assert.equal(
      readAttachOptions(cfg({ args: { cni: { mac: '02:00:00:00:00:01' } } }), none).mac,
      '02:00:00:00:00:01',
    );
    assert.equal(readAttachOptions(cfg({}), { ip: '', mac: '02:00:00:00:00:02' }).mac, '02:00:00:00:00:02');
    assert.equal(
      readAttachOptions(cfg({ runtimeConfig: { mac: '02:00:00:00:00:02' } }), { ip: '', mac: '02:00:00:00:00:02' }).mac,
      '02:00:00:00:00:02',
    );
  });

  it('refuses MACs the kernel cannot give a pod: malformed (code 7; code 4 from CNI_ARGS), multicast, zero, conflicting', () => {
    fails(
      () => readAttachOptions(cfg({ runtimeConfig: { mac: 'nope' } }), none),
      CniCode.invalidConfig,
      /runtimeConfig\.mac "nope".*six hex pairs/,
    );
    fails(
      () => readAttachOptions(cfg({ runtimeConfig: { mac: 5 } }), none),
      CniCode.invalidConfig,
      /runtimeConfig\.mac/,
    );
    fails(
      () => readAttachOptions(cfg({ runtimeConfig: { mac: '01:00:5e:00:00:01' } }), none),
      CniCode.invalidConfig,
      /multicast/,
    );
    fails(
      () => readAttachOptions(cfg({ args: { cni: { mac: '00:00:00:00:00:00' } } }), none),
      CniCode.invalidConfig,
      /all zeroes/,
    );
    fails(() => readAttachOptions(cfg({}), { ip: '', mac: 'zz' }), CniCode.invalidEnvironment, /CNI_ARGS MAC=zz/);
    fails(
      () =>
        readAttachOptions(cfg({ runtimeConfig: { mac: '02:00:00:00:00:01' } }), { ip: '', mac: '02:00:00:00:00:02' }),
      CniCode.invalidConfig,
      /conflicting MACs/,
    );
  });

  it('collects requested addresses from runtimeConfig.ips, args.cni.ips and CNI_ARGS IP=, without prefixes or repeats', () => {
    const opts = readAttachOptions(
      cfg({ runtimeConfig: { ips: ['10.244.1.5/24', 'fd00::5/64'] }, args: { cni: { ips: ['10.244.1.5'] } } }),
      { ip: '10.244.1.6,10.244.1.7', mac: '' },
    );
    assert.deepEqual(opts.requestedAddresses, ['10.244.1.5', 'fd00::5', '10.244.1.6', '10.244.1.7']);
  });

  it('refuses requested addresses that are not addresses', () => {
    fails(
      () => readAttachOptions(cfg({ runtimeConfig: { ips: '10.0.0.1' } }), none),
      CniCode.invalidConfig,
      /must be a list/,
    );
    fails(
      () => readAttachOptions(cfg({ runtimeConfig: { ips: ['10.0.0.300'] } }), none),
      CniCode.invalidConfig,
      /"10\.0\.0\.300"/,
    );
    fails(
      () => readAttachOptions(cfg({ runtimeConfig: { ips: ['10.0.0.1/33'] } }), none),
      CniCode.invalidConfig,
      /10\.0\.0\.1\/33/,
    );
    fails(() => readAttachOptions(cfg({}), { ip: '10.0.0.1,x', mac: '' }), CniCode.invalidEnvironment, /CNI_ARGS IP=/);
  });

  it('passes the pod UID on, and refuses one IPAM would refuse (code 4)', () => {
    const uid = '6f1c1a9e-3b4d-4f57-9a0e-1d2c3b4a5f60';
    assert.equal(readAttachOptions(cfg({}), { ...none, podUid: uid }).podUid, uid);
    fails(
      () => readAttachOptions(cfg({}), { ...none, podUid: 'not a uid' }),
      CniCode.invalidEnvironment,
      /CNI_ARGS K8S_POD_UID="not a uid".*at most 128/,
    );
    fails(
      () => readAttachOptions(cfg({}), { ...none, podUid: 'a'.repeat(129) }),
      CniCode.invalidEnvironment,
      /K8S_POD_UID/,
    );
  });
});

describe('readValidAttachments', () => {
  const cfg = (extra: Record<string, unknown>) =>
    parseNetworkConfig(json({ ...minimal, cniVersion: '1.1.0', ...extra }));

  it('reads cni.dev/valid-attachments and the older cni.dev/attachments, as one set', () => {
    const got = readValidAttachments(
      cfg({
        'cni.dev/valid-attachments': [
          { containerID: 'a', ifname: 'eth0' },
          { containerID: 'b', ifname: 'eth0' },
        ],
        'cni.dev/attachments': [
          { containerID: 'a', ifname: 'eth0' },
          { containerID: 'c', ifname: 'net1' },
        ],
      }),
    );
    assert.deepEqual(got, [
      { containerId: 'a', ifname: 'eth0' },
      { containerId: 'b', ifname: 'eth0' },
      { containerId: 'c', ifname: 'net1' },
    ]);
    assert.deepEqual(readValidAttachments(cfg({ 'cni.dev/attachments': [{ containerID: 'c', ifname: 'net1' }] })), [
      { containerId: 'c', ifname: 'net1' },
    ]);
    assert.deepEqual(readValidAttachments(cfg({ 'cni.dev/valid-attachments': [] })), []);
  });

  it('refuses a GC without a list, rather than collect everything', () => {
    assert.throws(
      () => readValidAttachments(cfg({})),
      (err: unknown) =>
        err instanceof CniError &&
        err.code === CniCode.invalidConfig &&
        /cni\.dev\/valid-attachments/.test(err.message),
    );
  });

  it('refuses malformed lists and entries, rather than skip one and free a live address', () => {
    for (const bad of [
      {},
      [{ containerID: 'a' }],
      [{ containerID: '', ifname: 'eth0' }],
      ['a/eth0'],
      [{ containerID: 1, ifname: 'eth0' }],
    ]) {
      assert.throws(
        () => readValidAttachments(cfg({ 'cni.dev/valid-attachments': bad })),
        (err: unknown) => err instanceof CniError && err.code === CniCode.invalidConfig,
        JSON.stringify(bad),
      );
    }
  });
});

describe('readDns', () => {
  const withDns = (dns: unknown) =>
    parseNetworkConfig(JSON.stringify({ cniVersion: '1.0.0', name: 'weft', type: 'weft', dns }));
  it("keeps the spec's four keys, {} when absent", () => {
    assert.deepEqual(readDns(withDns(undefined)), {});
    assert.deepEqual(
      readDns(
        withDns({
          nameservers: ['10.96.0.10', 'fd00::a'],
          domain: 'cluster.local',
          search: ['svc.cluster.local'],
          options: ['ndots:5'],
          other: 1,
        }),
      ),
      {
        nameservers: ['10.96.0.10', 'fd00::a'],
        domain: 'cluster.local',
        search: ['svc.cluster.local'],
        options: ['ndots:5'],
      },
    );
  });
  it('a wrong type or a nameserver that is no address is code 7 naming the field', () => {
    for (const [dns, msg] of [
      [[], /"dns" must be an object/],
      [{ nameservers: '10.0.0.1' }, /dns\.nameservers/],
      [{ nameservers: ['dns.example'] }, /"dns\.example", which is not an IP address/],
      [{ domain: 5 }, /dns\.domain/],
      [{ search: [1] }, /dns\.search/],
    ] as const) {
      assert.throws(
        () => readDns(withDns(dns)),
        (err: unknown) => err instanceof CniError && err.code === CniCode.invalidConfig && msg.test(err.message),
      );
    }
  });
});
