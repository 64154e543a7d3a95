import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { silentLogger } from '../lib/logger.js';
import { CniCode, CniError } from './errors.js';
import {
  createTiming,
  handleInvocation,
  parseCniArgs,
  readInvocation,
  type Environment,
  type VerbContext,
  type Verbs,
} from './skel.js';

const addEnv = {
  CNI_COMMAND: 'ADD',
  CNI_CONTAINERID: 'c0ffee',
  CNI_NETNS: '/var/run/netns/cni-1234',
  CNI_IFNAME: 'eth0',
  CNI_PATH: '/opt/cni/bin:/usr/libexec/cni',
  CNI_ARGS:
    'IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=u1',
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
      cniArgs: { ip: '', mac: '', podUid: 'u1' },
    });
  });

  it('lists every missing variable for ADD and CHECK; CNI_PATH is optional (Weft delegates to nothing)', () => {
    for (const command of ['ADD', 'CHECK'] as const) {
      envError(
        () => readInvocation(command, { CNI_COMMAND: command, CNI_IFNAME: 'eth0' }),
        /CNI_CONTAINERID, CNI_NETNS/,
      );
      envError(() => readInvocation(command, { ...addEnv, CNI_NETNS: '' }), /CNI_NETNS/);
    }
    const { CNI_PATH: _, ...noPath } = addEnv;
    assert.deepEqual(readInvocation('ADD', noPath).path, []);
  });

  it('refuses a CNI_NETNS that is not an absolute path for ADD and CHECK', () => {
    envError(
      () => readInvocation('ADD', { ...addEnv, CNI_NETNS: 'cni-1234' }),
      /CNI_NETNS "cni-1234" is invalid.*absolute path/,
    );
    envError(() => readInvocation('CHECK', { ...addEnv, CNI_NETNS: './ns' }), /CNI_NETNS/);
  });

  it('lets DEL run without a netns, or with any, but not without the rest', () => {
    const inv = readInvocation('DEL', { ...addEnv, CNI_COMMAND: 'DEL', CNI_NETNS: '' });
    assert.equal(inv.netns, '');
    assert.equal(readInvocation('DEL', { ...addEnv, CNI_NETNS: 'gone' }).netns, 'gone');
    envError(() => readInvocation('DEL', { CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'c0ffee' }), /CNI_IFNAME/);
  });

  it('needs nothing but the command for STATUS and GC, and ignores per-attachment variables there', () => {
    for (const command of ['STATUS', 'GC'] as const) {
      const inv = readInvocation(command, { CNI_COMMAND: command, CNI_CONTAINERID: '-bad', CNI_IFNAME: 'a/b' });
      assert.deepEqual([inv.containerId, inv.ifname, inv.netns], ['', '', '']);
    }
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
    const none = { ip: '', mac: '', podUid: '' };
    assert.deepEqual(parseCniArgs('K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns-1'), {
      podNamespace: 'kube-system',
      podName: 'dns-1',
      ...none,
    });
    assert.deepEqual(parseCniArgs(''), { podNamespace: '', podName: '', ...none });
    assert.deepEqual(parseCniArgs('K8S_POD_NAME=a;'), { podNamespace: '', podName: 'a', ...none });
  });

  it('reads IP= and MAC= as given (ADD checks them)', () => {
    assert.deepEqual(parseCniArgs('IP=10.244.0.9,10.244.0.10;MAC=0a:58:0a:f4:00:09'), {
      podNamespace: '',
      podName: '',
      ip: '10.244.0.9,10.244.0.10',
      mac: '0a:58:0a:f4:00:09',
      podUid: '',
    });
  });

  it('reads K8S_POD_UID as given (what containerd and CRI-O send; ADD checks it)', () => {
    const uid = '6f1c1a9e-3b4d-4f57-9a0e-1d2c3b4a5f60';
    assert.deepEqual(
      parseCniArgs(
        `IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=${uid}`,
      ),
      { podNamespace: 'shop', podName: 'cart-0', ip: '', mac: '', podUid: uid },
    );
    // Known without IgnoreUnknown, and a later pair wins as for every key.
    assert.equal(parseCniArgs(`K8S_POD_UID=old;K8S_POD_UID=${uid}`).podUid, uid);
    assert.equal(parseCniArgs('K8S_POD_UID=').podUid, '');
  });

  it('refuses unknown keys unless IgnoreUnknown is true', () => {
    envError(() => parseCniArgs('FOO=bar'), /unknown key FOO; add IgnoreUnknown=1/);
    envError(() => parseCniArgs('IgnoreUnknown=0;FOO=bar'), /FOO/);
    assert.deepEqual(parseCniArgs('FOO=bar;IgnoreUnknown=true;K8S_POD_NAME=a'), {
      podNamespace: '',
      podName: 'a',
      ip: '',
      mac: '',
      podUid: '',
    });
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
    CHECK: async (ctx) => {
      seen.push(ctx);
    },
    STATUS: async (ctx) => {
      seen.push(ctx);
    },
    GC: async (ctx) => {
      seen.push(ctx);
    },
  };
  const run = (env: Environment, stdin = config, v: Verbs = verbs) =>
    handleInvocation(v, env, Buffer.from(stdin), { signal: new AbortController().signal, logger: silentLogger });

  const supported = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'];

  it('marks the phases it passes, for WEFT_CNI_TIMING, and the verb gets the same marker', async () => {
    const marks: string[] = [];
    const out = await handleInvocation(verbs, addEnv, Buffer.from(config), {
      signal: new AbortController().signal,
      logger: silentLogger,
      mark: (p) => marks.push(p),
    });
    assert.equal(out.exitCode, 0);
    assert.deepEqual(marks, ['parsed', 'verb']);
    seen.at(-1)!.mark('connected');
    assert.deepEqual(marks, ['parsed', 'verb', 'connected']);
    const timing = createTiming(true);
    timing.mark('started');
    assert.match(
      timing.report()!,
      /^\{"msg":"weft-cni timing","marks":\{"started":[\d.]+\},"node":"v\d+\.\d+\.\d+"\}\n$/,
    );
    const packed = createTiming(true, { codeCache: 'rejected', builtWith: 'v20.0.0' });
    assert.deepEqual(JSON.parse(packed.report()!), {
      msg: 'weft-cni timing',
      marks: {},
      node: process.version,
      codeCache: 'rejected',
      builtWith: 'v20.0.0',
    });
    assert.equal(createTiming(false).report(), undefined);
  });

  it('answers VERSION with the config version and the supported list, without a config or env', async () => {
    assert.deepEqual(await run({ CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}'), {
      stdout: `{"cniVersion":"1.0.0","supportedVersions":${JSON.stringify(supported)}}`,
      exitCode: 0,
    });
    assert.deepEqual(JSON.parse((await run({ CNI_COMMAND: 'VERSION' }, '')).stdout), {
      cniVersion: '1.1.0',
      supportedVersions: supported,
    });
    assert.deepEqual(
      JSON.parse((await run({ CNI_COMMAND: 'VERSION' }, '{"cniVersion":"0.3.1"}')).stdout).cniVersion,
      '0.3.1',
    );
  });

  it('runs CHECK, STATUS and GC, printing nothing on success', async () => {
    seen.length = 0;
    const v11 = JSON.stringify({ cniVersion: '1.1.0', name: 'weft', type: 'weft' });
    assert.deepEqual(await run({ ...addEnv, CNI_COMMAND: 'CHECK' }, v11), { stdout: '', exitCode: 0 });
    assert.deepEqual(await run({ CNI_COMMAND: 'STATUS' }, v11), { stdout: '', exitCode: 0 });
    assert.deepEqual(await run({ CNI_COMMAND: 'GC' }, v11), { stdout: '', exitCode: 0 });
    assert.deepEqual(
      seen.map((c) => [c.invocation.command, c.invocation.containerId]),
      [
        ['CHECK', 'c0ffee'],
        ['STATUS', ''],
        ['GC', ''],
      ],
    );
  });

  it('refuses a verb that the config version predates with code 1: CHECK before 0.4.0, STATUS and GC before 1.1.0', async () => {
    const cases: [Record<string, string>, string, RegExp][] = [
      [
        { ...addEnv, CNI_COMMAND: 'CHECK' },
        '0.3.1',
        /CHECK needs cniVersion 0\.4\.0 or later; the network config declares 0\.3\.1/,
      ],
      [{ CNI_COMMAND: 'STATUS' }, '1.0.0', /STATUS needs cniVersion 1\.1\.0/],
      [{ CNI_COMMAND: 'GC' }, '0.4.0', /GC needs cniVersion 1\.1\.0/],
    ];
    for (const [env, version, msg] of cases) {
      const out = await run(env, JSON.stringify({ cniVersion: version, name: 'weft', type: 'weft' }));
      assert.equal(out.exitCode, 1);
      const err = JSON.parse(out.stdout);
      assert.equal(err.code, 1);
      assert.equal(err.cniVersion, version);
      assert.match(err.msg, msg);
    }
    assert.equal(
      (
        await run(
          { ...addEnv, CNI_COMMAND: 'CHECK' },
          JSON.stringify({ cniVersion: '0.4.0', name: 'weft', type: 'weft' }),
        )
      ).exitCode,
      0,
    );
  });

  it('prints the ADD result and nothing for DEL', async () => {
    seen.length = 0;
    const add = await run(addEnv);
    assert.equal(add.exitCode, 0);
    assert.equal(JSON.parse(add.stdout).cniVersion, '1.0.0');
    assert.deepEqual(await run({ ...addEnv, CNI_COMMAND: 'DEL', CNI_NETNS: '' }), { stdout: '', exitCode: 0 });
    assert.deepEqual(
      seen.map((c) => [c.invocation.command, c.invocation.podName, c.config.agentSocket]),
      [
        ['ADD', 'web-0', '/run/weft/agent.sock'],
        ['DEL', 'web-0', '/run/weft/agent.sock'],
      ],
    );
  });

  it('rejects a missing or unknown CNI_COMMAND with code 4', async () => {
    for (const env of [{}, { CNI_COMMAND: 'INIT' }, { CNI_COMMAND: 'add' }, { CNI_COMMAND: 'toString' }]) {
      const out = await run(env);
      assert.equal(out.exitCode, 1);
      const err = JSON.parse(out.stdout);
      assert.equal(err.code, 4);
      assert.match(err.msg, /expected ADD, DEL, CHECK, STATUS, GC or VERSION/);
    }
  });

  it('writes errors in the config version when it has one, else 1.1.0', async () => {
    const bad = await run(addEnv, JSON.stringify({ cniVersion: '0.2.0', name: 'weft', type: 'weft' }));
    assert.deepEqual(Object.keys(JSON.parse(bad.stdout)), ['cniVersion', 'code', 'msg', 'details']);
    assert.equal(JSON.parse(bad.stdout).cniVersion, '0.2.0');
    assert.equal(JSON.parse(bad.stdout).code, 1);
    assert.equal(JSON.parse((await run(addEnv, '{')).stdout).cniVersion, '1.1.0');
  });

  it('reports environment errors before config errors, as the reference skeleton does', async () => {
    const { CNI_CONTAINERID: _, ...noId } = addEnv;
    assert.equal(JSON.parse((await run(noId, '{')).stdout).code, 4);
  });

  it('passes a verb CniError through and turns anything else into code 999', async () => {
    const failing = (err: unknown): Verbs => ({ ...verbs, ADD: async () => Promise.reject(err) });
    const known = JSON.parse(
      (await run(addEnv, config, failing(new CniError(CniCode.poolExhausted, 'pool "blue" is full')))).stdout,
    );
    assert.deepEqual(known, { cniVersion: '1.0.0', code: 100, msg: 'pool "blue" is full', details: '' });
    const unknown = await run(addEnv, config, failing(new TypeError('x is undefined')));
    assert.equal(unknown.exitCode, 1);
    assert.equal(JSON.parse(unknown.stdout).code, 999);
    assert.match(JSON.parse(unknown.stdout).msg, /x is undefined/);
  });
});
