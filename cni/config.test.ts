import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DEFAULT_AGENT_SOCKET, MAX_CONFIG_BYTES, declaredVersion, parseNetworkConfig } from './config.js';
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
    assert.deepEqual(cfg, { cniVersion: '1.0.0', name: 'weft', type: 'weft', agentSocket: DEFAULT_AGENT_SOCKET, pool: '' });
    assert.ok(Object.isFrozen(cfg));
  });

  it('reads agentSocket and pool, from bytes as well as text', () => {
    const raw = Buffer.from(json({ ...minimal, agentSocket: '/var/run/weft.sock', pool: 'blue' }));
    assert.deepEqual(parseNetworkConfig(raw), { ...minimal, agentSocket: '/var/run/weft.sock', pool: 'blue' });
  });

  it('ignores fields the runtime adds', () => {
    const cfg = parseNetworkConfig(
      json({ ...minimal, args: { cni: {} }, runtimeConfig: { portMappings: [] }, prevResult: { ips: [] }, capabilities: {} }),
    );
    assert.equal(cfg.name, 'weft');
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

  it('refuses an unsupported cniVersion with code 1 and names the supported ones', () => {
    for (const v of ['0.4.0', '1.1.0', '2.0.0', 'latest']) {
      const err = rejects(json({ ...minimal, cniVersion: v }), CniCode.incompatibleVersion, /supports 1\.0\.0/);
      assert.match(err.message, new RegExp(v.replace(/\./g, '\\.')));
    }
  });

  it('checks the version before the other fields', () => {
    rejects(json({ cniVersion: '0.3.1' }), CniCode.incompatibleVersion);
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
