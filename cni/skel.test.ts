import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { silentLogger } from '../lib/logger.js';
import { CniCode, CniError } from './errors.js';
import { handleInvocation, parseCniArgs, readInvocation, type Environment, type VerbContext, type Verbs } from './skel.js';

const addEnv = {
  CNI_COMMAND: 'ADD',
  CNI_CONTAINERID: 'c0ffee',
  CNI_NETNS: '/var/run/netns/cni-1234',
  CNI_IFNAME: 'eth0',
  CNI_PATH: '/opt/cni/bin:/usr/libexec/cni',
  CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=u1',
};
const config = JSON.stringify({ cniVersion: '1.0.0', name: 'weft', type: 'weft' });

function envError(fn: () => unknown, msgPart: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof CniError);
    assert.equal(err.code, CniCode.invalidEnvironment);
    assert.match(err.message, msgPart);
    return true;
  });
}

describe('readInvocation', () => {
  it('reads everything ADD needs', () => {
    assert.deepEqual(readInvocation('ADD', addEnv), {
      command: 'ADD',
      containerId: 'c0ffee',
      netns: '/var/run/netns/cni-1234',
      ifname: 'eth0',
      path: ['/opt/cni/bin', '/usr/libexec/cni'],
      podNamespace: 'default',
      podName: 'web-0',
    });
  });

  it('lists every missing variable for ADD', () => {
    envError(() => readInvocation('ADD', { CNI_COMMAND: 'ADD', CNI_IFNAME: 'eth0' }), /CNI_CONTAINERID, CNI_NETNS, CNI_PATH/);
    envError(() => readInvocation('ADD', { ...addEnv, CNI_NETNS: '' }), /CNI_NETNS/);
  });

  it('lets DEL run without a netns but not without the rest', () => {
    const inv = readInvocation('DEL', { ...addEnv, CNI_COMMAND: 'DEL', CNI_NETNS: '' });
    assert.equal(inv.netns, '');
    envError(() => readInvocation('DEL', { CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'c0ffee' }), /CNI_IFNAME, CNI_PATH/);
  });

  it('refuses container ids and interface names the spec forbids', () => {
    envError(() => readInvocation('ADD', { ...addEnv, CNI_CONTAINERID: '-abc' }), /CNI_CONTAINERID/);
    envError(() => readInvocation('ADD', { ...addEnv, CNI_CONTAINERID: 'a/b' }), /CNI_CONTAINERID/);
    for (const bad of ['.', '..', 'eth0:1', 'a/b', 'eth 0', 'abcdefghijklmnop']) {
      envError(() => readInvocation('ADD', { ...addEnv, CNI_IFNAME: bad }), /CNI_IFNAME/);
    }
    assert.equal(readInvocation('ADD', { ...addEnv, CNI_IFNAME: 'abcdefghijklmno' }).ifname, 'abcdefghijklmno');
  });
});

describe('parseCniArgs', () => {
  it('reads the pod namespace and name; both are optional', () => {
    assert.deepEqual(parseCniArgs('K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns-1'), { podNamespace: 'kube-system', podName: 'dns-1' });
    assert.deepEqual(parseCniArgs(''), { podNamespace: '', podName: '' });
    assert.deepEqual(parseCniArgs('K8S_POD_NAME=a;'), { podNamespace: '', podName: 'a' });
  });

  it('refuses unknown keys unless IgnoreUnknown is true', () => {
    envError(() => parseCniArgs('FOO=bar'), /unknown key FOO; add IgnoreUnknown=1/);
    envError(() => parseCniArgs('IgnoreUnknown=0;FOO=bar'), /FOO/);
    assert.deepEqual(parseCniArgs('FOO=bar;IgnoreUnknown=true;K8S_POD_NAME=a'), { podNamespace: '', podName: 'a' });
  });

  it('refuses malformed pairs and IgnoreUnknown values', () => {
    envError(() => parseCniArgs('K8S_POD_NAME'), /invalid pair "K8S_POD_NAME"/);
    envError(() => parseCniArgs('=x'), /invalid pair/);
    envError(() => parseCniArgs('IgnoreUnknown=maybe'), /IgnoreUnknown/);
  });
});

describe('handleInvocation', () => {
  const seen: VerbContext[] = [];
  const verbs: Verbs = {
    ADD: async (ctx) => {
      seen.push(ctx);
      return { cniVersion: ctx.config.cniVersion, interfaces: [], ips: [], routes: [], dns: {} };
    },
    DEL: async (ctx) => {
      seen.push(ctx);
    },
  };
  const run = (env: Environment, stdin = config, v: Verbs = verbs) =>
    handleInvocation(v, env, Buffer.from(stdin), { signal: new AbortController().signal, logger: silentLogger });

  it('answers VERSION with the config version and the supported list, without a config or env', async () => {
    assert.deepEqual(await run({ CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}'), {
      stdout: '{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}',
      exitCode: 0,
    });
    assert.deepEqual(JSON.parse((await run({ CNI_COMMAND: 'VERSION' }, '')).stdout), { cniVersion: '1.0.0', supportedVersions: ['1.0.0'] });
  });

  it('prints the ADD result and nothing for DEL', async () => {
    seen.length = 0;
    const add = await run(addEnv);
    assert.equal(add.exitCode, 0);
    assert.equal(JSON.parse(add.stdout).cniVersion, '1.0.0');
    assert.deepEqual(await run({ ...addEnv, CNI_COMMAND: 'DEL', CNI_NETNS: '' }), { stdout: '', exitCode: 0 });
    assert.deepEqual(seen.map((c) => [c.invocation.command, c.invocation.podName, c.config.agentSocket]), [
      ['ADD', 'web-0', '/run/weft/agent.sock'],
      ['DEL', 'web-0', '/run/weft/agent.sock'],
    ]);
  });

  it('rejects a missing or unknown CNI_COMMAND with code 4', async () => {
    for (const env of [{}, { CNI_COMMAND: 'CHECK' }, { CNI_COMMAND: 'add' }]) {
      const out = await run(env);
      assert.equal(out.exitCode, 1);
      const err = JSON.parse(out.stdout);
      assert.equal(err.code, 4);
      assert.match(err.msg, /expected ADD, DEL or VERSION/);
    }
  });

  it('writes errors in the config version when it has one, else 1.0.0', async () => {
    const bad = await run(addEnv, JSON.stringify({ cniVersion: '0.4.0', name: 'weft', type: 'weft' }));
    assert.deepEqual(Object.keys(JSON.parse(bad.stdout)), ['cniVersion', 'code', 'msg', 'details']);
    assert.equal(JSON.parse(bad.stdout).cniVersion, '0.4.0');
    assert.equal(JSON.parse(bad.stdout).code, 1);
    assert.equal(JSON.parse((await run(addEnv, '{')).stdout).cniVersion, '1.0.0');
  });

  it('reports environment errors before config errors, as the reference skeleton does', async () => {
    const { CNI_CONTAINERID: _, ...noId } = addEnv;
    assert.equal(JSON.parse((await run(noId, '{')).stdout).code, 4);
  });

  it('passes a verb CniError through and turns anything else into code 999', async () => {
    const failing = (err: unknown): Verbs => ({ ADD: async () => Promise.reject(err), DEL: async () => {} });
    const known = JSON.parse((await run(addEnv, config, failing(new CniError(CniCode.poolExhausted, 'pool "blue" is full')))).stdout);
    assert.deepEqual(known, { cniVersion: '1.0.0', code: 100, msg: 'pool "blue" is full', details: '' });
    const unknown = await run(addEnv, config, failing(new TypeError('x is undefined')));
    assert.equal(unknown.exitCode, 1);
    assert.equal(JSON.parse(unknown.stdout).code, 999);
    assert.match(JSON.parse(unknown.stdout).msg, /x is undefined/);
  });
});
