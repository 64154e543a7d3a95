/**
 * Runs the bundled plugin (dist/bin/weft-cni) the way a container runtime does: CNI_* variables in the
 * environment, the network config on stdin, the result or error read from stdout and the exit status.
 *
 * - "run as a runtime runs it" needs no root: the agent is a fake gRPC server on a unix socket in a temporary
 *   directory. It covers the protocol: every verb and version, the result formats, the errors.
 * - "against a real agent" (root) starts a one-node local cluster (`weft cluster up`) and drives the real agent
 *   and kernel: every verb in every version, CHECK's differences, GC, rollback of a failed ADD, fifty concurrent
 *   ADDs. Everything it makes carries the cluster's prefix and goes with `weft cluster down`, also on failure.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { status, type Server } from '@grpc/grpc-js';
import {
  AgentServiceService,
  type AttachRequest,
  type AttachResponse,
  type CheckRequest,
  type DetachRequest,
  type GarbageCollectRequest,
  type GarbageCollectResponse,
  type StatusResponse,
} from '../gen/weft/agent/v1/agent.js';
import { IpamServiceService, type Allocation } from '../gen/weft/ipam/v1/ipam.js';
import { runCni, type ClusterState, type NodeState, clusterAdminSecurity } from '../cli/cluster/cluster.js';
import { DomainError, type ErrorKind } from '../lib/errors.js';
import { createClient, type PromiseClient } from '../lib/grpc/client.js';
import { listenUnixSocket, type UnixSocketServer } from '../lib/grpc/frame-server.js';
import { addService, createServer, type UnaryMethods } from '../lib/grpc/server.js';
import { silentLogger } from '../lib/logger.js';
import { hostIfnameFor } from '../node-dataplane/kernel/pod-network.js';
import {
  ChainError,
  createChainRunner,
  type CniResultDoc,
  type NetworkConfigList,
  type RuntimeConf,
} from './support/cni-chain.js';
import { privilegedOrSkip, skipOutsideCi } from './support/privileges.js';
import { bringUpTestCluster, takeDownTestCluster, type TestCluster } from './support/local-cluster.js';
import { startUntil, type Started } from './support/processes.js';

const plugin = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../bin/weft-cni');
const VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
const isLegacy = (v: string) => v.startsWith('0.');
const sh = promisify(execFile);

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function runPlugin(env: Record<string, string>, stdin: string | Buffer, file = plugin): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, [], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env }, stdio: 'pipe' });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.stdin.on('error', () => {}); // the plugin may stop reading an oversize config
    child.on('error', reject);
    child.on('close', (code) => resolve({ status: code, stdout, stderr }));
    child.stdin.end(stdin);
  });
}

/** stdout must hold exactly one JSON document (and nothing else: logs belong on stderr). */
function onlyDocument(run: Run): Record<string, unknown> {
  const text = run.stdout.trim();
  assert.notEqual(text, '', `stdout is empty; stderr: ${run.stderr}`);
  assert.equal(text.split('\n').length, 1, `stdout has more than one line:\n${run.stdout}`);
  let doc: unknown;
  assert.doesNotThrow(() => (doc = JSON.parse(text)), `stdout is not one JSON document:\n${run.stdout}`);
  assert.ok(typeof doc === 'object' && doc !== null && !Array.isArray(doc), 'stdout is not a JSON object');
  return doc as Record<string, unknown>;
}

function assertCniError(run: Run, code: number, cniVersion = '1.0.0'): Record<string, unknown> {
  assert.equal(run.status, 1, `exit status; stdout: ${run.stdout} stderr: ${run.stderr}`);
  const doc = onlyDocument(run);
  assert.equal(doc.code, code, `code; msg: ${String(doc.msg)}`);
  assert.equal(doc.cniVersion, cniVersion);
  assert.ok(typeof doc.msg === 'string' && doc.msg.length > 0, 'msg is empty');
  return doc;
}

/** Success without a result (DEL, CHECK, STATUS, GC): exit 0 and nothing on stdout. */
function assertQuietSuccess(run: Run): void {
  assert.equal(run.status, 0, `exit status; stdout: ${run.stdout} stderr: ${run.stderr}`);
  assert.equal(run.stdout, '');
}

const config = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ cniVersion: '1.0.0', name: 'weft', type: 'weft', ...extra });
const addEnv = {
  CNI_COMMAND: 'ADD',
  CNI_CONTAINERID: '6f1c2d3e4b5a',
  CNI_NETNS: '/var/run/netns/cni-weft-test',
  CNI_IFNAME: 'eth0',
  CNI_PATH: '/opt/cni/bin',
  CNI_ARGS:
    'IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=6f1c2d3e4b5a;K8S_POD_UID=0b9c6a52-1f3e-4d2a-8c7b-5e4f3a2b1c0d',
};
const delEnv = { ...addEnv, CNI_COMMAND: 'DEL' };

describe('weft-cni, run as a runtime runs it', () => {
  let dir = '';
  /** An existing path: ADD checks that CNI_NETNS leads somewhere before it calls the agent. */
  let netns = '';
  let env = addEnv;

  before(async () => {
    assert.ok(existsSync(plugin), `${plugin} is missing; build it with: node scripts/bundle.mjs`);
    dir = await mkdtemp(path.join(tmpdir(), 'weft-cni-'));
    netns = path.join(dir, 'netns');
    await writeFile(netns, '');
    env = { ...addEnv, CNI_NETNS: netns };
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('VERSION prints the supported versions in the version asked, and needs nothing else', async () => {
    for (const v of VERSIONS) {
      const run = await runPlugin({ CNI_COMMAND: 'VERSION' }, JSON.stringify({ cniVersion: v }));
      assert.equal(run.status, 0, run.stderr);
      assert.deepEqual(onlyDocument(run), { cniVersion: v, supportedVersions: [...VERSIONS] });
    }
    const bare = await runPlugin({ CNI_COMMAND: 'VERSION' }, '');
    assert.deepEqual(onlyDocument(bare), { cniVersion: '1.1.0', supportedVersions: [...VERSIONS] });
  });

  it('malformed JSON is code 6', async () => {
    const doc = assertCniError(await runPlugin(env, '{"cniVersion": "1.0.0", "name": '), 6, '1.1.0');
    assert.match(String(doc.msg), /not valid JSON/);
  });

  it('a config without cniVersion or name is code 7', async () => {
    assert.match(
      String(assertCniError(await runPlugin(env, JSON.stringify({ name: 'weft', type: 'weft' })), 7, '1.1.0').msg),
      /cniVersion/,
    );
    assert.match(
      String(
        assertCniError(await runPlugin(env, JSON.stringify({ cniVersion: '0.4.0', type: 'weft' })), 7, '0.4.0').msg,
      ),
      /"name"/,
    );
  });

  it('an unknown cniVersion is code 1 for every verb, and names the supported versions', async () => {
    for (const command of ['ADD', 'DEL', 'CHECK', 'STATUS', 'GC']) {
      const doc = assertCniError(
        await runPlugin({ ...env, CNI_COMMAND: command }, config({ cniVersion: '9.9.9' })),
        1,
        '9.9.9',
      );
      assert.match(String(doc.msg), /9\.9\.9.*0\.3\.0, 0\.3\.1, 0\.4\.0, 1\.0\.0, 1\.1\.0/);
    }
    assertCniError(await runPlugin(env, config({ cniVersion: '0.2.0' })), 1, '0.2.0');
  });

  it('a verb newer than the config version is code 1: CHECK before 0.4.0, STATUS and GC before 1.1.0', async () => {
    for (const v of ['0.3.0', '0.3.1'])
      assert.match(
        String(assertCniError(await runPlugin({ ...env, CNI_COMMAND: 'CHECK' }, config({ cniVersion: v })), 1, v).msg),
        /CHECK needs cniVersion 0\.4\.0/,
      );
    for (const v of ['0.4.0', '1.0.0']) {
      for (const command of ['STATUS', 'GC']) {
        assert.match(
          String(assertCniError(await runPlugin({ CNI_COMMAND: command }, config({ cniVersion: v })), 1, v).msg),
          new RegExp(`${command} needs cniVersion 1\\.1\\.0`),
        );
      }
    }
  });

  it('a config over 1 MiB is code 7, unparsed', async () => {
    const doc = assertCniError(await runPlugin(env, Buffer.alloc(1024 * 1024 + 1, '[')), 7, '1.1.0');
    assert.match(String(doc.msg), /larger than/);
  });

  it('an unknown or missing CNI_COMMAND is code 4', async () => {
    const doc = assertCniError(await runPlugin({ ...env, CNI_COMMAND: 'FROB' }, config()), 4);
    assert.match(String(doc.msg), /FROB.*expected ADD, DEL, CHECK, STATUS, GC or VERSION/);
    const { CNI_COMMAND: _, ...noCommand } = env;
    assert.match(String(assertCniError(await runPlugin(noCommand, config()), 4).msg), /CNI_COMMAND is not set/);
  });

  it('ADD or CHECK without CNI_CONTAINERID, CNI_NETNS or CNI_IFNAME is code 4 naming the variable', async () => {
    for (const command of ['ADD', 'CHECK']) {
      for (const name of ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME'] as const) {
        const { [name]: _, ...rest } = env;
        const doc = assertCniError(await runPlugin({ ...rest, CNI_COMMAND: command }, config()), 4);
        assert.ok(String(doc.msg).includes(name), String(doc.msg));
      }
    }
  });

  it('a CNI_NETNS that is relative or leads nowhere is code 4 for ADD', async () => {
    assert.match(
      String(assertCniError(await runPlugin({ ...env, CNI_NETNS: 'cni-1234' }, config()), 4).msg),
      /CNI_NETNS "cni-1234" is invalid.*absolute/,
    );
    const gone = path.join(dir, 'no-such-netns');
    const doc = assertCniError(await runPlugin({ ...env, CNI_NETNS: gone }, config()), 4);
    assert.ok(String(doc.msg).includes(gone), String(doc.msg));
  });

  it('a CNI_IFNAME the spec forbids is code 4', async () => {
    for (const bad of ['eth 0', 'a/b', 'x:1', 'sixteen-chars-xx', '..']) {
      assert.match(String(assertCniError(await runPlugin({ ...env, CNI_IFNAME: bad }, config()), 4).msg), /CNI_IFNAME/);
    }
  });

  it('ADD with a malformed requested address is refused before the agent is asked', async () => {
    assertCniError(await runPlugin(env, config({ runtimeConfig: { ips: ['not-an-ip'] } })), 7);
    assertCniError(await runPlugin({ ...env, CNI_ARGS: 'IP=300.1.1.1' }, config()), 4);
  });

  it('ADD with an unusable MAC is code 7', async () => {
    assert.match(
      String(assertCniError(await runPlugin(env, config({ runtimeConfig: { mac: '01:00:5e:00:00:01' } })), 7).msg),
      /multicast/,
    );
  });

  it('GC without the list of valid attachments is code 7, not "collect everything"', async () => {
    const doc = assertCniError(await runPlugin({ CNI_COMMAND: 'GC' }, config({ cniVersion: '1.1.0' })), 7, '1.1.0');
    assert.match(String(doc.msg), /cni\.dev\/valid-attachments/);
  });

  it('ADD with no agent socket is code 11 and names the socket; STATUS then says "not available" (50)', async () => {
    const socket = path.join(dir, 'absent', 'agent.sock');
    const doc = assertCniError(await runPlugin(env, config({ agentSocket: socket })), 11);
    assert.ok(String(doc.msg).includes(socket), String(doc.msg));
    assert.match(String(doc.msg), /try again later/);
    const st = assertCniError(
      await runPlugin({ CNI_COMMAND: 'STATUS' }, config({ cniVersion: '1.1.0', agentSocket: socket })),
      50,
      '1.1.0',
    );
    assert.ok(String(st.msg).includes(socket), String(st.msg));
  });

  it('ADD with a socket nobody listens on is code 11; STATUS is 50', async () => {
    const socket = path.join(dir, 'stale.sock');
    await writeFile(socket, '');
    const doc = assertCniError(await runPlugin(env, config({ agentSocket: socket })), 11);
    assert.ok(String(doc.msg).includes(socket), String(doc.msg));
    assertCniError(
      await runPlugin({ CNI_COMMAND: 'STATUS' }, config({ cniVersion: '1.1.0', agentSocket: socket })),
      50,
      '1.1.0',
    );
  });

  describe('with an agent', () => {
    let server: Server;
    let socket = '';
    const attaches: AttachRequest[] = [];
    const detaches: DetachRequest[] = [];
    const checks: CheckRequest[] = [];
    const collects: GarbageCollectRequest[] = [];
    let attachError: { code: status; details: string } | undefined;
    let detachError: { code: status; details: string } | undefined;
    let checkError: { code: status; details: string; metadata?: import('@grpc/grpc-js').Metadata } | undefined;
    let statusAnswer: StatusResponse = { ipamReachable: true, detail: '' };
    let gcAnswer: GarbageCollectResponse = { released: [], removedInterfaces: [], failures: [] };
    /** The agent answers as a dual-stack node's agent does (WEFT_POD_FAMILIES=ipv4,ipv6). */
    let dualStack = false;
    const answer = (): AttachResponse => ({
      interfaces: [
        { name: 'weft6f1c2d3e', mac: 'ee:ee:ee:ee:ee:ee', sandbox: '' },
        { name: 'eth0', mac: '0a:58:0a:f4:01:07', sandbox: netns },
      ],
      ips: [
        { address: '10.244.1.7/32', gateway: '169.254.1.1', interface: 1 },
        ...(dualStack ? [{ address: 'fd00:10:244::7/128', gateway: 'fe80::1', interface: 1 }] : []),
      ],
      routes: [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }, ...(dualStack ? [{ dst: '::/0', gw: 'fe80::1' }] : [])],
    });
    /** The gRPC status a fake answer asks for, as the agent's handlers produce it: a DomainError of that kind. */
    const kindFor: Partial<Record<number, ErrorKind>> = {
      [status.RESOURCE_EXHAUSTED]: 'exhausted',
      [status.INVALID_ARGUMENT]: 'invalid_argument',
      [status.NOT_FOUND]: 'not_found',
      [status.UNAVAILABLE]: 'unavailable',
      [status.FAILED_PRECONDITION]: 'failed_precondition',
    };
    const unary =
      <Req, Res>(
        seen: Req[] | null,
        reply: () => {
          err?: { code: status; details: string; metadata?: import('@grpc/grpc-js').Metadata };
          res?: Res;
        },
      ) =>
      async (request: Req): Promise<Res> => {
        seen?.push(request);
        const { err, res } = reply();
        if (!err) return res!;
        const kind = kindFor[err.code];
        if (!kind) throw new Error(err.details); // INTERNAL, "internal error; see the server log", as the agent answers
        throw new DomainError(String(err.metadata?.get('weft-error-code')[0] ?? 'agent.fake'), kind, err.details);
      };
    let listening: UnixSocketServer;

    before(async () => {
      socket = path.join(dir, 'agent.sock');
      // Served as the node agent serves it (unary frames and gRPC on one socket).
      server = createServer();
      const unaryMethods: UnaryMethods = new Map();
      addService(
        server,
        AgentServiceService,
        {
          attach: unary(attaches, () => (attachError ? { err: attachError } : { res: answer() })),
          detach: unary(detaches, () => (detachError ? { err: detachError } : { res: {} })),
          check: unary(checks, () => (checkError ? { err: checkError } : { res: {} })),
          status: unary(null, () => ({ res: statusAnswer })),
          garbageCollect: unary(collects, () => ({ res: gcAnswer })),
        },
        silentLogger,
        { unaryMethods },
      );
      listening = await listenUnixSocket({ server, socketPath: socket, unaryMethods, logger: silentLogger });
    });
    after(async () => {
      await listening.close();
      server.forceShutdown();
    });

    it('ADD prints the CNI 1.0.0 result and passes the pod to the agent', async () => {
      attachError = undefined;
      const run = await runPlugin(env, config({ agentSocket: socket, pool: 'blue' }));
      assert.equal(run.status, 0, `stdout: ${run.stdout} stderr: ${run.stderr}`);
      assert.deepEqual(onlyDocument(run), {
        cniVersion: '1.0.0',
        interfaces: [
          { name: 'weft6f1c2d3e', mac: 'ee:ee:ee:ee:ee:ee' },
          { name: 'eth0', mac: '0a:58:0a:f4:01:07', sandbox: netns },
        ],
        ips: [{ address: '10.244.1.7/32', gateway: '169.254.1.1', interface: 1 }],
        routes: [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }],
        dns: {},
      });
      assert.deepEqual(attaches.at(-1), {
        containerId: addEnv.CNI_CONTAINERID,
        netns,
        ifname: 'eth0',
        podNamespace: 'default',
        podName: 'web-0',
        podUid: '0b9c6a52-1f3e-4d2a-8c7b-5e4f3a2b1c0d',
        pool: 'blue',
        requestedAddresses: [],
        mac: '',
        network: 'weft',
      });
    });

    it('the packed plugin starts from its V8 code cache on the Node that built it; a cache that does not fit is compiled past, with the same answers', async () => {
      const timingOf = (run: Run) =>
        JSON.parse(run.stderr.split('\n').find((l) => l.includes('"weft-cni timing"')) ?? '{}') as {
          codeCache?: string;
          builtWith?: string;
          node?: string;
        };
      const used = await runPlugin({ ...env, WEFT_CNI_TIMING: '1' }, config({ agentSocket: socket }));
      assert.equal(used.status, 0, used.stderr);
      const timing = timingOf(used);
      assert.match(String(timing.builtWith), /^v\d+\.\d+\.\d+$/, 'the packed plugin names the Node that built it');
      assert.equal(timing.node, process.version, 'the plugin runs on the Node first on PATH, as this test does');
      // On the building Node the cache fits; another Node's V8 (another major line) may refuse it: slower, not wrong.
      if (timing.node === timing.builtWith)
        assert.equal(timing.codeCache, 'used', 'the cache made at build time fits the Node that built it');
      else assert.ok(timing.codeCache === 'used' || timing.codeCache === 'rejected', String(timing.codeCache));
      // V8 refuses bytes that are no cache at all in the same checks as another Node's cache.
      const text = readFileSync(plugin, 'utf8');
      const foreign = text.replace(
        /^const cache = "[^"]*";$/m,
        `const cache = "${Buffer.from('not a V8 code cache').toString('base64')}";`,
      );
      assert.notEqual(foreign, text, 'the packed plugin has a cache line');
      const copy = path.join(dir, 'weft');
      await writeFile(copy, foreign, { mode: 0o755 });
      const rejected = await runPlugin({ ...env, WEFT_CNI_TIMING: '1' }, config({ agentSocket: socket }), copy);
      assert.equal(rejected.status, 0, rejected.stderr);
      assert.equal(timingOf(rejected).codeCache, 'rejected');
      assert.deepEqual(onlyDocument(rejected), onlyDocument(used));
      const version = await runPlugin({ CNI_COMMAND: 'VERSION' }, config(), copy);
      assert.deepEqual(onlyDocument(version), { cniVersion: '1.0.0', supportedVersions: [...VERSIONS] });
    });
    it('ADD writes the result in the config version: ips[].version in 0.3.0, 0.3.1 and 0.4.0, none in 1.x', async () => {
      attachError = undefined;
      for (const v of VERSIONS) {
        const run = await runPlugin(env, config({ cniVersion: v, agentSocket: socket }));
        assert.equal(run.status, 0, run.stdout);
        const doc = onlyDocument(run);
        assert.equal(doc.cniVersion, v);
        const ip = (doc.ips as Record<string, unknown>[])[0]!;
        if (isLegacy(v))
          assert.deepEqual(ip, { version: '4', address: '10.244.1.7/32', gateway: '169.254.1.1', interface: 1 });
        else assert.deepEqual(ip, { address: '10.244.1.7/32', gateway: '169.254.1.1', interface: 1 });
        assert.deepEqual(Object.keys(doc).sort(), ['cniVersion', 'dns', 'interfaces', 'ips', 'routes']);
      }
    });

    it('a dual-stack ADD lists both addresses on the pod interface and both default routes, in every version; CHECK sends both back', async () => {
      attachError = undefined;
      dualStack = true;
      try {
        for (const v of VERSIONS) {
          const run = await runPlugin(env, config({ cniVersion: v, agentSocket: socket }));
          assert.equal(run.status, 0, run.stdout);
          const doc = onlyDocument(run);
          const ver = (n: '4' | '6') => (isLegacy(v) ? { version: n } : {});
          assert.deepEqual(
            doc.ips,
            [
              { ...ver('4'), address: '10.244.1.7/32', gateway: '169.254.1.1', interface: 1 },
              { ...ver('6'), address: 'fd00:10:244::7/128', gateway: 'fe80::1', interface: 1 },
            ],
            `ips in ${v}`,
          );
          assert.deepEqual(
            doc.routes,
            [
              { dst: '0.0.0.0/0', gw: '169.254.1.1' },
              { dst: '::/0', gw: 'fe80::1' },
            ],
            `routes in ${v}`,
          );
          assert.equal(
            (doc.interfaces as { sandbox?: string }[])[1]!.sandbox,
            netns,
            'interface 1 is the pod interface',
          );
          if (v === '0.3.0' || v === '0.3.1') continue; // CHECK is 0.4.0 and later
          const check = await runPlugin(
            { ...env, CNI_COMMAND: 'CHECK' },
            config({ cniVersion: v, agentSocket: socket, prevResult: doc }),
          );
          assertQuietSuccess(check);
          assert.deepEqual(
            checks.at(-1)!.reportedAddresses,
            ['10.244.1.7/32', 'fd00:10:244::7/128'],
            `CHECK in ${v} compares both addresses`,
          );
        }
        // A requested IPv6 address goes to the agent (which refuses it unless its pods are dual-stack).
        assert.equal(
          (
            await runPlugin(
              env,
              config({ agentSocket: socket, runtimeConfig: { ips: ['10.244.1.9/32', 'fd00:10:244::9/128'] } }),
            )
          ).status,
          0,
        );
        assert.deepEqual(attaches.at(-1)!.requestedAddresses, ['10.244.1.9', 'fd00:10:244::9']);
      } finally {
        dualStack = false;
      }
    });

    it('ADD passes the MAC from runtimeConfig or CNI_ARGS to the agent', async () => {
      await runPlugin(env, config({ agentSocket: socket, runtimeConfig: { mac: '0A:58:0A:F4:00:AA' } }));
      assert.equal(attaches.at(-1)!.mac, '0a:58:0a:f4:00:aa');
      await runPlugin({ ...env, CNI_ARGS: `${env.CNI_ARGS};MAC=0a:58:0a:f4:00:bb` }, config({ agentSocket: socket }));
      assert.equal(attaches.at(-1)!.mac, '0a:58:0a:f4:00:bb');
    });

    it("ADD in a chain passes the previous plugin's result on with ours appended (converted to the config version)", async () => {
      const prevResult = {
        cniVersion: '0.4.0',
        interfaces: [{ name: 'dummy0' }],
        ips: [{ version: '4', address: '192.168.9.2/24', interface: 0 }],
        dns: { nameservers: ['192.168.9.1'] },
      };
      const doc = onlyDocument(await runPlugin(env, config({ cniVersion: '0.4.0', agentSocket: socket, prevResult })));
      assert.deepEqual(
        (doc.interfaces as { name: string }[]).map((i) => i.name),
        ['dummy0', 'weft6f1c2d3e', 'eth0'],
      );
      assert.deepEqual(doc.ips, [
        { version: '4', address: '192.168.9.2/24', interface: 0 },
        { version: '4', address: '10.244.1.7/32', gateway: '169.254.1.1', interface: 2 },
      ]);
      assert.deepEqual(doc.dns, { nameservers: ['192.168.9.1'] });
      assertCniError(await runPlugin(env, config({ agentSocket: socket, prevResult: { ips: 'x' } })), 7);
    });

    it('ADD when the pool is exhausted is code 100 with the agent message', async () => {
      attachError = { code: status.RESOURCE_EXHAUSTED, details: 'pool "default" has no free address' };
      const doc = assertCniError(await runPlugin(env, config({ agentSocket: socket })), 100);
      assert.equal(doc.msg, 'pool "default" has no free address');
    });

    it('ADD the agent rejects as invalid is code 7', async () => {
      attachError = { code: status.INVALID_ARGUMENT, details: 'unknown pool "green"' };
      const doc = assertCniError(await runPlugin(env, config({ agentSocket: socket, pool: 'green' })), 7);
      assert.equal(doc.msg, 'unknown pool "green"');
    });

    it('ADD failing inside the agent is code 999 with the agent message', async () => {
      attachError = { code: status.INTERNAL, details: 'internal error; see the server log' };
      const doc = assertCniError(await runPlugin(env, config({ agentSocket: socket })), 999);
      assert.equal(doc.msg, 'internal error; see the server log');
    });

    it('DEL prints nothing and exits 0, with or without a netns, whatever runtimeConfig holds', async () => {
      detachError = undefined;
      for (const ns of [netns, '']) {
        assertQuietSuccess(
          await runPlugin(
            { ...delEnv, CNI_NETNS: ns },
            config({ agentSocket: socket, runtimeConfig: { mac: 'bad', ips: ['x'] } }),
          ),
        );
        assert.deepEqual(detaches.at(-1), { containerId: addEnv.CNI_CONTAINERID, netns: ns, ifname: 'eth0' });
      }
    });

    it('DEL of something the agent no longer knows succeeds', async () => {
      detachError = { code: status.NOT_FOUND, details: 'no such attachment' };
      assertQuietSuccess(await runPlugin(delEnv, config({ agentSocket: socket })));
    });

    it('DEL when the agent fails is an error, so the runtime retries', async () => {
      detachError = { code: status.UNAVAILABLE, details: 'shutting down' };
      assertCniError(await runPlugin(delEnv, config({ agentSocket: socket })), 11);
    });

    it("CHECK passes prevResult's address and MAC for the pod interface to the agent, and prints nothing", async () => {
      checkError = undefined;
      attachError = undefined;
      for (const v of ['0.4.0', '1.0.0', '1.1.0']) {
        const prevResult = onlyDocument(await runPlugin(env, config({ cniVersion: v, agentSocket: socket })));
        assertQuietSuccess(
          await runPlugin({ ...env, CNI_COMMAND: 'CHECK' }, config({ cniVersion: v, agentSocket: socket, prevResult })),
        );
        assert.deepEqual(checks.at(-1), {
          containerId: addEnv.CNI_CONTAINERID,
          netns,
          ifname: 'eth0',
          reportedAddresses: ['10.244.1.7/32'],
          reportedMac: '0a:58:0a:f4:01:07',
        });
      }
      // SPEC: CHECK without prevResult is an error; the agent is not asked.
      const asked = checks.length;
      const doc = assertCniError(await runPlugin({ ...env, CNI_COMMAND: 'CHECK' }, config({ agentSocket: socket })), 7);
      assert.match(String(doc.msg), /CHECK needs "prevResult"/);
      assert.equal(checks.length, asked);
    });

    it("CHECK with a prevResult that is not this attachment's is code 101", async () => {
      const prevResult = {
        cniVersion: '1.0.0',
        interfaces: [{ name: 'net1', sandbox: netns }],
        ips: [{ address: '10.0.0.2/32', interface: 0 }],
      };
      const doc = assertCniError(
        await runPlugin({ ...env, CNI_COMMAND: 'CHECK' }, config({ agentSocket: socket, prevResult })),
        101,
      );
      assert.match(String(doc.msg), /lists no interface eth0/);
    });

    it('CHECK reports what the agent found different as code 101 with its message', async () => {
      const { Metadata } = await import('@grpc/grpc-js');
      const metadata = new Metadata();
      metadata.set('weft-error-code', 'agent.check_failed');
      checkError = {
        code: status.FAILED_PRECONDITION,
        details: 'proxy ARP is off on host interface weft6f1c2d3e',
        metadata,
      };
      const prevResult = {
        cniVersion: '1.0.0',
        interfaces: [{ name: 'weft6f1c2d3e' }, { name: 'eth0', sandbox: netns }],
        ips: [{ address: '10.244.1.7/32', interface: 1 }],
      };
      const doc = assertCniError(
        await runPlugin({ ...env, CNI_COMMAND: 'CHECK' }, config({ agentSocket: socket, prevResult })),
        101,
      );
      assert.equal(doc.msg, 'proxy ARP is off on host interface weft6f1c2d3e');
      checkError = undefined;
    });

    it('STATUS is quiet when the agent reaches IPAM, and 50 with the reason when it does not', async () => {
      statusAnswer = { ipamReachable: true, detail: '' };
      assertQuietSuccess(
        await runPlugin({ CNI_COMMAND: 'STATUS' }, config({ cniVersion: '1.1.0', agentSocket: socket })),
      );
      statusAnswer = {
        ipamReachable: false,
        detail: 'the agent cannot reach IPAM at dns:10.0.0.1:7400: connection refused',
      };
      const doc = assertCniError(
        await runPlugin({ CNI_COMMAND: 'STATUS' }, config({ cniVersion: '1.1.0', agentSocket: socket })),
        50,
        '1.1.0',
      );
      assert.match(String(doc.msg), /cannot reach IPAM at dns:10\.0\.0\.1:7400/);
    });

    it('GC passes the union of cni.dev/valid-attachments and cni.dev/attachments; failures are code 11', async () => {
      gcAnswer = {
        released: [{ handle: 'old/eth0', address: '10.244.1.3' }],
        removedInterfaces: ['weft00000000003'],
        failures: [],
      };
      assertQuietSuccess(
        await runPlugin(
          { CNI_COMMAND: 'GC', CNI_PATH: '/opt/cni/bin' },
          config({
            cniVersion: '1.1.0',
            agentSocket: socket,
            'cni.dev/valid-attachments': [{ containerID: 'a', ifname: 'eth0' }],
            'cni.dev/attachments': [
              { containerID: 'a', ifname: 'eth0' },
              { containerID: 'b', ifname: 'net1' },
            ],
          }),
        ),
      );
      assert.deepEqual(collects.at(-1), {
        validAttachments: [
          { containerId: 'a', ifname: 'eth0' },
          { containerId: 'b', ifname: 'net1' },
        ],
        network: 'weft',
      });
      gcAnswer = {
        released: [],
        removedInterfaces: [],
        failures: ['releasing 10.244.1.4 (handle x/eth0) failed: IPAM unavailable'],
      };
      const doc = assertCniError(
        await runPlugin(
          { CNI_COMMAND: 'GC' },
          config({ cniVersion: '1.1.0', agentSocket: socket, 'cni.dev/valid-attachments': [] }),
        ),
        11,
        '1.1.0',
      );
      assert.match(String(doc.msg), /left 1 item behind \(releasing 10\.244\.1\.4/);
    });
  });
});

describe('weft-cni against a real agent on a local cluster', privilegedOrSkip(), () => {
  let cluster: TestCluster | undefined;
  let state: ClusterState | null = null;
  let stateDir = '';
  let node: NodeState;
  let ipam: PromiseClient<typeof IpamServiceService>;
  let podCount = 0;
  let chainDir = '';

  interface Pod {
    containerId: string;
    netns: string;
    netnsName: string;
    ifname: string;
  }

  /** A pod namespace carrying the cluster's prefix, so that `cluster down` removes it whatever happens. */
  async function newPod(label: string): Promise<Pod> {
    const netnsName = `${state!.prefix}-pod-${label}`;
    await sh('ip', ['netns', 'add', netnsName]);
    return {
      containerId: `${label}-${++podCount}-${state!.prefix}`,
      netns: `/var/run/netns/${netnsName}`,
      netnsName,
      ifname: 'eth0',
    };
  }
  const dropPod = (p: Pod) => sh('ip', ['netns', 'del', p.netnsName]).catch(() => {});

  const netconf = (version: string, extra: Record<string, unknown> = {}) =>
    JSON.stringify({ cniVersion: version, name: 'weft', type: 'weft', agentSocket: node.socket, ...extra });

  async function cni(
    command: string,
    pod: Pod | null,
    stdin: string,
    extraEnv: Record<string, string> = {},
  ): Promise<Run> {
    const env: Record<string, string> = { CNI_COMMAND: command, ...extraEnv };
    if (pod) Object.assign(env, { CNI_CONTAINERID: pod.containerId, CNI_NETNS: pod.netns, CNI_IFNAME: pod.ifname });
    const out = await runCni(node, env, stdin);
    return { status: out.exitCode, stdout: out.stdout, stderr: out.stderr };
  }

  const nodeAllocations = async (): Promise<Allocation[]> =>
    (await ipam.listAllocations({ pool: '', node: node.name }, { timeoutMs: 10_000 })).allocations;
  const allocationOf = async (p: Pod) =>
    (await nodeAllocations()).find((a) => a.handle === `${p.containerId}/${p.ifname}`);
  const ipn = async (ns: string, ...args: string[]) => (await sh('ip', ['-n', ns, ...args])).stdout;
  const podHostLinks = async () =>
    (JSON.parse(await ipn(node.netns, '-j', 'link', 'show', 'type', 'veth')) as { ifname: string }[])
      .map((l) => l.ifname)
      .filter((n) => /^weft[0-9a-f]{11}$/.test(n))
      .sort();
  /** The node's Weft host routes to pods (protocol 87 through a pod veth). */
  const podHostRoutes = async () =>
    (JSON.parse(await ipn(node.netns, '-j', 'route', 'show', 'proto', '87')) as { dst: string; dev: string }[])
      .filter((r) => r.dev.startsWith('weft') && r.dev !== 'weft.vxlan')
      .map((r) => `${r.dst} dev ${r.dev}`)
      .sort();
  const hostLinkOf = (p: Pod) => hostIfnameFor(p.containerId, p.ifname);

  /** ADD that must succeed; returns the result document. */
  async function add(
    pod: Pod,
    version = '1.1.0',
    extra: Record<string, unknown> = {},
  ): Promise<Record<string, unknown>> {
    const run = await cni('ADD', pod, netconf(version, extra));
    assert.equal(run.status, 0, `ADD failed: ${run.stdout} ${run.stderr}`);
    return onlyDocument(run);
  }
  const addressOf = (result: Record<string, unknown>) =>
    String((result.ips as { address: string }[])[0]!.address).split('/')[0]!;

  before(async () => {
    // CNI_PATH for chains: Weft installed as `weft` (its type), as a runtime finds it, then Debian's reference plugins.
    chainDir = mkdtempSync(path.join(tmpdir(), 'weft-cni-chain-'));
    mkdirSync(path.join(chainDir, 'bin'));
    symlinkSync(plugin, path.join(chainDir, 'bin', 'weft'));
    const started = bringUpTestCluster('cni-cluster');
    cluster = started.cluster;
    stateDir = cluster.stateDir;
    state = await started.up;
    node = state.nodes[0]!;
    ipam = createClient(IpamServiceService, `unix://${state!.controlPlane.socket}`, {
      security: clusterAdminSecurity(state!),
    });
  });

  after(async () => {
    ipam?.close();
    if (state) {
      try {
        process.kill(state.controlPlane.pid, 'SIGCONT'); // in case the STATUS test stopped it
      } catch {
        // not running
      }
    }
    if (chainDir) rmSync(chainDir, { recursive: true, force: true });
    await takeDownTestCluster(cluster);
  });

  for (const version of VERSIONS) {
    it(`ADD, CHECK and DEL in ${version}: the result in ${version}'s format, the kernel and IPAM agree`, async () => {
      const pod = await newPod(`v${version.replace(/\./g, '')}`);
      try {
        const result = await add(pod, version);
        assert.equal(result.cniVersion, version);
        const ips = result.ips as Record<string, unknown>[];
        assert.equal(ips.length, 1);
        assert.equal(
          'version' in ips[0]!,
          isLegacy(version),
          `ips[0].version present in ${version}: ${JSON.stringify(ips[0])}`,
        );
        if (isLegacy(version)) assert.equal(ips[0]!.version, '4');
        assert.equal(ips[0]!.interface, 1);
        assert.equal(ips[0]!.gateway, '169.254.1.1');
        const [host, eth0] = result.interfaces as { name: string; mac: string; sandbox?: string }[];
        assert.deepEqual([host!.name, host!.sandbox], [hostLinkOf(pod), undefined]);
        assert.deepEqual([eth0!.name, eth0!.sandbox], ['eth0', pod.netns]);
        assert.deepEqual(result.routes, [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }]);
        assert.deepEqual(result.dns, {});

        const address = addressOf(result);
        assert.equal((await allocationOf(pod))?.address, address, 'IPAM holds the address under the handle');
        const podAddr = JSON.parse(await ipn(pod.netnsName, '-j', 'addr', 'show', 'dev', 'eth0')) as {
          address: string;
          addr_info: { local: string; prefixlen: number }[];
        }[];
        assert.ok(podAddr[0]!.addr_info.some((a) => a.local === address && a.prefixlen === 32));
        assert.equal(podAddr[0]!.address, eth0!.mac);
        assert.ok((await podHostLinks()).includes(hostLinkOf(pod)));

        const check = await cni('CHECK', pod, netconf(version, { prevResult: result }));
        if (version === '0.3.0' || version === '0.3.1') assertCniError(check, 1, version);
        else assertQuietSuccess(check);

        assertQuietSuccess(await cni('DEL', pod, netconf(version, { prevResult: result })));
        assert.equal(await allocationOf(pod), undefined, 'DEL released the address');
        assert.ok(!(await podHostLinks()).includes(hostLinkOf(pod)), 'DEL removed the host veth');
        assert.ok(!(await podHostRoutes()).some((r) => r.startsWith(`${address} `)), 'DEL removed the host route');
        assertQuietSuccess(await cni('DEL', pod, netconf(version)));
      } finally {
        await dropPod(pod);
      }
    });
  }

  it("the pod UID from CNI_ARGS K8S_POD_UID reaches IPAM with the pod's allocation; a malformed one is code 4 and allocates nothing", async () => {
    const pod = await newPod('uid');
    const uid = '7d3e1c9a-2b4f-4a6e-9c8d-0f1e2d3c4b5a';
    try {
      const args = `IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_INFRA_CONTAINER_ID=${pod.containerId};K8S_POD_UID=`;
      const bad = await cni('ADD', pod, netconf('1.1.0'), { CNI_ARGS: `${args}not/a-uid` });
      assert.match(String(assertCniError(bad, 4, '1.1.0').msg), /K8S_POD_UID/);
      assert.equal(await allocationOf(pod), undefined, 'nothing was allocated');

      const run = await cni('ADD', pod, netconf('1.1.0'), { CNI_ARGS: `${args}${uid}` });
      assert.equal(run.status, 0, `ADD failed: ${run.stdout} ${run.stderr}`);
      const held = await allocationOf(pod);
      assert.deepEqual(
        [held?.address, held?.podNamespace, held?.podName, held?.podUid],
        [addressOf(onlyDocument(run)), 'shop', 'cart-0', uid],
      );
      assertQuietSuccess(await cni('DEL', pod, netconf('1.1.0')));
      const history = (await ipam.listAllocationHistory({ handle: `${pod.containerId}/eth0` }, { timeoutMs: 10_000 }))
        .entries;
      assert.deepEqual(
        history.map((e) => [e.allocation!.podUid, Boolean(e.releaseTime)]),
        [[uid, true]],
        'the released row keeps the UID',
      );
    } finally {
      await dropPod(pod);
    }
  });

  it('VERSION and STATUS answer from the node; STATUS is 50 while the control plane does not answer', async () => {
    const version = await cni('VERSION', null, JSON.stringify({ cniVersion: '1.1.0' }));
    assert.deepEqual(onlyDocument(version), { cniVersion: '1.1.0', supportedVersions: [...VERSIONS] });
    assertQuietSuccess(await cni('STATUS', null, netconf('1.1.0')));
    process.kill(state!.controlPlane.pid, 'SIGSTOP');
    let stalled: Run;
    try {
      stalled = await cni('STATUS', null, netconf('1.1.0'));
    } finally {
      process.kill(state!.controlPlane.pid, 'SIGCONT');
    }
    const doc = assertCniError(stalled, 50, '1.1.0');
    assert.match(String(doc.msg), /cannot reach IPAM at 192\.0\.2\.2:7400/);
    assertQuietSuccess(await cni('STATUS', null, netconf('1.1.0')));
  });

  it('runtimeConfig mac sets the pod interface MAC', async () => {
    const pod = await newPod('mac');
    try {
      const result = await add(pod, '1.0.0', { runtimeConfig: { mac: '0a:58:0a:f4:12:34' } });
      assert.equal((result.interfaces as { mac: string }[])[1]!.mac, '0a:58:0a:f4:12:34');
      const link = JSON.parse(await ipn(pod.netnsName, '-j', 'link', 'show', 'dev', 'eth0')) as { address: string }[];
      assert.equal(link[0]!.address, '0a:58:0a:f4:12:34');
      assertQuietSuccess(await cni('CHECK', pod, netconf('1.0.0', { prevResult: result })));
      assertQuietSuccess(await cni('DEL', pod, netconf('1.0.0')));
    } finally {
      await dropPod(pod);
    }
  });

  it('CHECK names the first difference from what ADD made (code 101), and passes again once it is repaired', async () => {
    const pod = await newPod('check');
    try {
      const result = await add(pod, '1.0.0');
      const address = addressOf(result);
      const host = hostLinkOf(pod);
      const check = (prevResult: unknown = result) => cni('CHECK', pod, netconf('1.0.0', { prevResult }));
      const differs = async (msg: RegExp, prevResult?: unknown) =>
        assert.match(String(assertCniError(await check(prevResult), 101).msg), msg);
      assertQuietSuccess(await check());

      const otherAddress = JSON.parse(JSON.stringify(result).replace(`${address}/32`, '10.244.255.254/32'));
      await differs(/prevResult reports 10\.244\.255\.254\/32 for eth0, but IPAM holds/, otherAddress);
      const otherMac = {
        ...result,
        interfaces: [
          (result.interfaces as object[])[0],
          { ...(result.interfaces as object[])[1], mac: '0a:58:00:00:00:01' },
        ],
      };
      await differs(/has MAC .*, but the runtime's prevResult reports 0a:58:00:00:00:01/, otherMac);
      await differs(/lists no interface eth0/, {
        ...result,
        interfaces: [(result.interfaces as object[])[0], { ...(result.interfaces as object[])[1], name: 'net1' }],
      });

      await sh('ip', ['netns', 'exec', node.netns, 'sh', '-c', `echo 0 > /proc/sys/net/ipv4/conf/${host}/proxy_arp`]);
      await differs(new RegExp(`proxy ARP is off on host interface ${host}`));
      await sh('ip', ['netns', 'exec', node.netns, 'sh', '-c', `echo 1 > /proc/sys/net/ipv4/conf/${host}/proxy_arp`]);

      await ipn(node.netns, 'route', 'del', `${address}/32`, 'dev', host);
      await differs(new RegExp(`the node has no route to ${address.replace(/\./g, '\\.')}/32 through ${host}`));
      await ipn(node.netns, 'route', 'replace', `${address}/32`, 'dev', host, 'scope', 'link', 'proto', '87');

      await ipn(pod.netnsName, 'route', 'del', 'default');
      await differs(/no default route via 169\.254\.1\.1 dev eth0/);
      await ipn(pod.netnsName, 'route', 'add', 'default', 'via', '169.254.1.1', 'dev', 'eth0');

      await ipn(pod.netnsName, 'link', 'set', 'eth0', 'down');
      await differs(/interface eth0 in network namespace .* is down/);
      await ipn(pod.netnsName, 'link', 'set', 'eth0', 'up');
      await differs(/no link route to its gateway 169\.254\.1\.1 on eth0/); // taking a link down drops its routes
      await ipn(pod.netnsName, 'route', 'add', '169.254.1.1', 'dev', 'eth0', 'scope', 'link');
      await ipn(pod.netnsName, 'route', 'add', 'default', 'via', '169.254.1.1', 'dev', 'eth0');
      assertQuietSuccess(await check());

      await ipam.release({ handle: `${pod.containerId}/eth0` }, { timeoutMs: 10_000 });
      await differs(/IPAM holds no address for handle .*\/eth0 on node node1/);
      assertQuietSuccess(await cni('DEL', pod, netconf('1.0.0')));

      // A pod whose namespace is gone: the allocation is still held, the namespace is the difference.
      const gone = await newPod('gone');
      const goneResult = await add(gone, '1.0.0');
      await dropPod(gone);
      assert.match(
        String(assertCniError(await cni('CHECK', gone, netconf('1.0.0', { prevResult: goneResult })), 101).msg),
        /network namespace .* does not exist/,
      );
      assertQuietSuccess(await cni('DEL', gone, netconf('1.0.0')));
      assert.equal(await allocationOf(gone), undefined);
    } finally {
      await dropPod(pod);
    }
  });

  it('a failed ADD leaves nothing: CNI_IFNAME already in the pod namespace fails after allocation and is rolled back', async () => {
    const pod = await newPod('rollback');
    try {
      await ipn(pod.netnsName, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0peer');
      const [allocsBefore, linksBefore, routesBefore] = await Promise.all([
        nodeAllocations(),
        podHostLinks(),
        podHostRoutes(),
      ]);
      const doc = assertCniError(await cni('ADD', pod, netconf('1.0.0')), 999);
      assert.match(String(doc.msg), /an interface named eth0 already exists in network namespace/);
      const [allocsAfter, linksAfter, routesAfter] = await Promise.all([
        nodeAllocations(),
        podHostLinks(),
        podHostRoutes(),
      ]);
      assert.deepEqual(
        allocsAfter.map((a) => a.handle).sort(),
        allocsBefore.map((a) => a.handle).sort(),
        'no allocation remains',
      );
      assert.deepEqual(linksAfter, linksBefore, 'no host veth remains');
      assert.deepEqual(routesAfter, routesBefore, 'no host route remains');
      // The failure came after the address was allocated: the agent says it released it.
      const log = readFileSync(path.join(stateDir, node.name, 'agent.log'), 'utf8')
        .split('\n')
        .filter((l) => l.includes(`"handle":"${pod.containerId}/eth0"`));
      assert.ok(
        log.some((l) => l.includes('released after a failed attach') && l.includes('"released":true')),
        `agent log:\n${log.join('\n')}`,
      );
      assertQuietSuccess(await cni('DEL', pod, netconf('1.0.0'))); // what the runtime does next
    } finally {
      await dropPod(pod);
    }
  });

  it('a requested address (CNI_ARGS IP= or runtimeConfig ips) is what the pod gets; one already held is refused', async () => {
    const [p1, p2] = (await Promise.all(['req-a', 'req-b'].map(newPod))) as [Pod, Pod];
    try {
      const fromArgs = await cni('ADD', p1, netconf('1.0.0'), {
        CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=req-a;IP=10.244.3.3`,
      });
      assert.equal(fromArgs.status, 0, fromArgs.stdout);
      assert.equal(addressOf(onlyDocument(fromArgs)), '10.244.3.3');
      assert.equal((await allocationOf(p1))?.address, '10.244.3.3');
      const taken = assertCniError(
        await cni('ADD', p2, netconf('1.0.0', { runtimeConfig: { ips: ['10.244.3.3/16'] } })),
        999,
      );
      assert.match(String(taken.msg), /10\.244\.3\.3 is held by/);
      assert.equal(await allocationOf(p2), undefined, 'the refused pod holds nothing');
      // The agent makes the veth while IPAM allocates: a refused allocation removes it again, in the node and the pod.
      assert.ok(!(await podHostLinks()).includes(hostLinkOf(p2)), 'no host veth remains for the refused pod');
      assert.doesNotMatch(await ipn(p2.netnsName, 'link', 'show'), /eth0/, 'no interface remains in the refused pod');
      const viaRuntime = await cni('ADD', p2, netconf('1.0.0', { runtimeConfig: { ips: ['10.244.3.4/16'] } }));
      assert.equal(viaRuntime.status, 0, viaRuntime.stdout);
      assert.equal(addressOf(onlyDocument(viaRuntime)), '10.244.3.4');
      for (const p of [p1, p2]) assertQuietSuccess(await cni('DEL', p, netconf('1.0.0')));
    } finally {
      await Promise.all([p1, p2].map(dropPod));
    }
  });

  it('a second ADD for a live attachment is refused and leaves the pod working', async () => {
    const pod = await newPod('dup');
    try {
      const result = await add(pod, '1.0.0');
      const doc = assertCniError(await cni('ADD', pod, netconf('1.0.0')), 999);
      assert.match(String(doc.msg), /already has interface eth0 attached/);
      assert.equal((await allocationOf(pod))?.address, addressOf(result));
      assertQuietSuccess(await cni('CHECK', pod, netconf('1.0.0', { prevResult: result })));
      assertQuietSuccess(await cni('DEL', pod, netconf('1.0.0')));
    } finally {
      await dropPod(pod);
    }
  });

  it('bad input gets a CNI error and changes nothing', async () => {
    const pod = await newPod('bad');
    try {
      const before = {
        allocations: (await nodeAllocations()).map((a) => a.handle).sort(),
        links: await podHostLinks(),
      };
      const cases: [string, Run, number, string?][] = [
        ['malformed JSON', await cni('ADD', pod, '{"cniVersion": "1.0.0", "name": '), 6, '1.1.0'],
        [
          'no name',
          await cni('ADD', pod, JSON.stringify({ cniVersion: '1.0.0', type: 'weft', agentSocket: node.socket })),
          7,
        ],
        ['unknown cniVersion', await cni('ADD', pod, netconf('9.9.9')), 1, '9.9.9'],
        ['unknown verb', await cni('FROB', pod, netconf('1.0.0')), 4],
        ['oversize config', await cni('ADD', pod, netconf('1.0.0').padEnd(1024 * 1024 + 10, ' ')), 7, '1.1.0'],
        [
          'missing CNI_NETNS',
          await cni('ADD', null, netconf('1.0.0'), { CNI_CONTAINERID: pod.containerId, CNI_IFNAME: 'eth0' }),
          4,
        ],
        [
          'relative CNI_NETNS',
          await cni('ADD', null, netconf('1.0.0'), {
            CNI_CONTAINERID: pod.containerId,
            CNI_IFNAME: 'eth0',
            CNI_NETNS: pod.netnsName,
          }),
          4,
        ],
        ['CNI_NETNS leading nowhere', await cni('ADD', { ...pod, netns: `${pod.netns}-gone` }, netconf('1.0.0')), 4],
        ['CNI_NETNS that is no namespace', await cni('ADD', { ...pod, netns: '/etc/hostname' }, netconf('1.0.0')), 999],
        [
          'requested IPv6 address',
          await cni('ADD', pod, netconf('1.0.0', { runtimeConfig: { ips: ['fd00::5/64'] } })),
          7,
        ],
        [
          'requested address outside every pool',
          await cni('ADD', pod, netconf('1.0.0'), { CNI_ARGS: 'IgnoreUnknown=1;IP=192.0.2.200' }),
          999,
        ],
        ['multicast MAC', await cni('ADD', pod, netconf('1.0.0', { runtimeConfig: { mac: '03:00:00:00:00:01' } })), 7],
      ];
      for (const [what, run, code, version] of cases) {
        try {
          assertCniError(run, code, version ?? '1.0.0');
        } catch (err) {
          throw new Error(`${what}: ${(err as Error).message}`, { cause: err });
        }
      }
      assert.deepEqual(
        { allocations: (await nodeAllocations()).map((a) => a.handle).sort(), links: await podHostLinks() },
        before,
        'nothing was allocated or created',
      );
    } finally {
      await dropPod(pod);
    }
  });

  it("GC releases what no valid attachment holds, removes its host veth, and never touches a valid attachment or another system's allocation", async () => {
    const pods = await Promise.all(['gc-a', 'gc-b', 'gc-c'].map(newPod));
    const [a, b, c] = pods as [Pod, Pod, Pod];
    try {
      const results = new Map<Pod, Record<string, unknown>>();
      for (const p of pods) results.set(p, await add(p, '1.1.0'));
      const reserved = `reserved-by-test-${state!.prefix}`;
      await ipam.allocate(
        { handle: reserved, node: node.name, pool: '', podNamespace: '', podName: '', containerId: '' },
        { timeoutMs: 10_000 },
      );
      // A leftover veth with a Weft pod name and no attachment behind it (e.g. from a crashed agent).
      const orphan = hostIfnameFor(`orphan-${state!.prefix}`, 'eth0');
      await ipn(node.netns, 'link', 'add', orphan, 'type', 'veth', 'peer', 'name', `${orphan.slice(0, 11)}p`);

      const gc = await cni(
        'GC',
        null,
        netconf('1.1.0', {
          'cni.dev/valid-attachments': [{ containerID: a.containerId, ifname: 'eth0' }],
          'cni.dev/attachments': [{ containerID: b.containerId, ifname: 'eth0' }],
        }),
        { CNI_PATH: '/opt/cni/bin' },
      );
      assertQuietSuccess(gc);

      const held = new Set((await nodeAllocations()).map((x) => x.handle));
      assert.ok(
        held.has(`${a.containerId}/eth0`) && held.has(`${b.containerId}/eth0`),
        'valid attachments keep their addresses',
      );
      assert.ok(!held.has(`${c.containerId}/eth0`), 'the stale attachment lost its address');
      assert.ok(held.has(reserved), "another system's allocation stays");
      const links = await podHostLinks();
      assert.ok(links.includes(hostLinkOf(a)) && links.includes(hostLinkOf(b)));
      assert.ok(!links.includes(hostLinkOf(c)) && !links.includes(orphan), `stale veths removed: ${links.join(', ')}`);
      assert.ok(
        !(await podHostRoutes()).some((r) => r.startsWith(`${addressOf(results.get(c)!)} `)),
        'and their host routes with them',
      );
      for (const p of [a, b])
        assertQuietSuccess(await cni('CHECK', p, netconf('1.1.0', { prevResult: results.get(p) })));

      // The runtime still DELs what it knows about; after GC that is already gone and succeeds.
      for (const p of pods) assertQuietSuccess(await cni('DEL', p, netconf('1.1.0')));
      assert.ok((await nodeAllocations()).some((x) => x.handle === reserved));
      await ipam.release({ handle: reserved }, { timeoutMs: 10_000 });
    } finally {
      await Promise.all(pods.map(dropPod));
    }
  });

  it("GC naming another network leaves this network's attachments alone, also those made before attachments recorded their network", async () => {
    const [mine, legacy] = (await Promise.all(['gcnet-a', 'gcnet-l'].map(newPod))) as [Pod, Pod];
    try {
      const results = new Map<Pod, Record<string, unknown>>();
      for (const p of [mine, legacy]) results.set(p, await add(p, '1.1.0'));
      // An attachment made before the agent recorded networks: its host veth carries no record.
      await ipn(node.netns, 'link', 'set', 'dev', hostLinkOf(legacy), 'alias', '');
      // A runtime with two networks of the same plugin type: GC for the other one, which holds no attachment.
      const other = JSON.stringify({
        cniVersion: '1.1.0',
        name: 'weft-second',
        type: 'weft',
        agentSocket: node.socket,
        'cni.dev/valid-attachments': [],
      });
      assertQuietSuccess(await cni('GC', null, other, { CNI_PATH: '/opt/cni/bin' }));
      const held = new Set((await nodeAllocations()).map((x) => x.handle));
      for (const p of [mine, legacy]) {
        assert.ok(held.has(`${p.containerId}/eth0`), `${p.containerId} keeps its address after another network's GC`);
        assert.ok((await podHostLinks()).includes(hostLinkOf(p)), `${p.containerId} keeps its host veth`);
        assertQuietSuccess(await cni('CHECK', p, netconf('1.1.0', { prevResult: results.get(p) })));
      }
      // Its own network's GC still collects it; the unrecorded attachment is never collected by GC.
      assertQuietSuccess(
        await cni('GC', null, netconf('1.1.0', { 'cni.dev/valid-attachments': [] }), { CNI_PATH: '/opt/cni/bin' }),
      );
      const after = new Set((await nodeAllocations()).map((x) => x.handle));
      assert.ok(!after.has(`${mine.containerId}/eth0`), "this network's GC released its stale attachment");
      assert.ok(after.has(`${legacy.containerId}/eth0`), 'an attachment without a recorded network is left to its DEL');
      for (const p of [mine, legacy]) assertQuietSuccess(await cni('DEL', p, netconf('1.1.0')));
      assert.ok(!(await nodeAllocations()).some((x) => x.containerId === legacy.containerId));
    } finally {
      await Promise.all([mine, legacy].map(dropPod));
    }
  });

  it('a second interface in the same container (net1 after eth0) gets its own veth, address and host route; its DEL leaves eth0 as it was', async () => {
    const pod = await newPod('twoif');
    const peer = await newPod('twoif-peer');
    const net1: Pod = { ...pod, ifname: 'net1' };
    try {
      const first = await add(pod, '1.1.0');
      const eth0Address = addressOf(first);
      const podState = async () => ({
        eth0: (
          JSON.parse(await ipn(pod.netnsName, '-j', 'addr', 'show', 'dev', 'eth0')) as {
            addr_info: { local: string; prefixlen: number }[];
          }[]
        )[0]!.addr_info.map((a) => `${a.local}/${a.prefixlen}`),
        routes: (
          JSON.parse(await ipn(pod.netnsName, '-j', 'route', 'show')) as {
            dst: string;
            gateway?: string;
            dev: string;
          }[]
        )
          .map((r) => `${r.dst} ${r.gateway ?? ''} ${r.dev}`)
          .sort(),
        rules: (await ipn(pod.netnsName, 'rule', 'show')).trim(),
      });
      const before = await podState();
      const secondRun = await cni('ADD', net1, netconf('1.1.0'));
      assert.equal(secondRun.status, 0, `ADD of net1 failed: ${secondRun.stdout} ${secondRun.stderr}`);
      const second = onlyDocument(secondRun);
      const net1Address = addressOf(second);
      assert.notEqual(net1Address, eth0Address);
      const [host, inPod] = second.interfaces as { name: string; sandbox?: string }[];
      assert.deepEqual([host!.name, inPod!.name, inPod!.sandbox], [hostLinkOf(net1), 'net1', pod.netns]);
      assert.notEqual(hostLinkOf(net1), hostLinkOf(pod));
      assert.deepEqual(second.routes, [], 'net1 adds no route to the main table: the default route stays with eth0');
      assert.equal((await allocationOf(net1))?.address, net1Address);
      const net1Addr = JSON.parse(await ipn(pod.netnsName, '-j', 'addr', 'show', 'dev', 'net1')) as {
        addr_info: { local: string; prefixlen: number }[];
      }[];
      assert.ok(net1Addr[0]!.addr_info.some((a) => a.local === net1Address && a.prefixlen === 32));
      const during = await podState();
      assert.deepEqual(during.eth0, before.eth0, 'eth0 keeps its address');
      assert.deepEqual(
        during.routes,
        before.routes,
        "the pod's main table is as it was: the default route stays with eth0",
      );
      // net1's routes are in its own table, for traffic from its address only.
      const table = /from (\S+) lookup (\d+)/.exec(
        during.rules.split('\n').find((l) => l.includes(`from ${net1Address} `)) ?? '',
      );
      assert.ok(table, `a source rule for ${net1Address}:\n${during.rules}`);
      assert.match(
        await ipn(pod.netnsName, 'route', 'show', 'table', table[2]!),
        new RegExp(`default via 169\\.254\\.1\\.1 dev net1`),
      );
      assert.ok(
        (await podHostRoutes()).includes(`${net1Address} dev ${hostLinkOf(net1)}`),
        "the node routes net1's address to its veth",
      );
      // net1's address answers from the node and from another pod (forwarded, through network policy).
      const ping = (ns: string) =>
        sh('ip', ['netns', 'exec', ns, 'ping', '-c', '1', '-W', '2', net1Address]).then(
          () => 'ok',
          (e: Error) => e.message,
        );
      assert.equal(await ping(node.netns), 'ok');
      await add(peer, '1.1.0');
      let fromPeer = '';
      for (let i = 0; i < 10 && fromPeer !== 'ok'; i++) fromPeer = await ping(peer.netnsName); // while the peer's rules arrive
      assert.equal(fromPeer, 'ok', 'another pod reaches net1');
      assertQuietSuccess(await cni('CHECK', net1, netconf('1.1.0', { prevResult: second })));
      assertQuietSuccess(await cni('CHECK', pod, netconf('1.1.0', { prevResult: first })));
      // Network policy knows the pod by both addresses: each veth dispatches to the pod's rules (not fail closed).
      const filter = async () =>
        (await sh('ip', ['netns', 'exec', node.netns, 'iptables-save', '-t', 'filter'])).stdout;
      const dispatched = (rules: string, p: Pod) => rules.includes(`-A WEFT-FROM-POD -i ${hostLinkOf(p)} `);
      const until = async (ok: (rules: string) => boolean, ms: number) => {
        const end = Date.now() + ms;
        let rules = await filter();
        while (!ok(rules) && Date.now() < end) {
          await new Promise((r) => setTimeout(r, 100));
          rules = await filter();
        }
        return rules;
      };
      const both = await until((r) => dispatched(r, pod) && dispatched(r, net1), 10_000);
      assert.ok(
        dispatched(both, pod) && dispatched(both, net1),
        `both veths dispatch to the pod's rules:\n${both
          .split('\n')
          .filter((l) => l.includes('WEFT-FROM-POD'))
          .join('\n')}`,
      );

      assertQuietSuccess(await cni('DEL', net1, netconf('1.1.0')));
      // The pod stays known to policy by eth0's address: its dispatch stays (watched for 2 s, as the report settles).
      const lost = await until((r) => !dispatched(r, pod), 2000);
      assert.ok(dispatched(lost, pod), "eth0 still dispatches to the pod's rules after net1's DEL");
      assert.equal(await allocationOf(net1), undefined, "DEL released net1's address");
      assert.equal((await allocationOf(pod))?.address, eth0Address, 'eth0 keeps its address in IPAM');
      assert.deepEqual(await podState(), before, "the pod's eth0 address, routes and rules are as before net1");
      const hostRoutes = await podHostRoutes();
      assert.ok(
        hostRoutes.includes(`${eth0Address} dev ${hostLinkOf(pod)}`) &&
          !hostRoutes.some((r) => r.startsWith(`${net1Address} `)),
      );
      assertQuietSuccess(await cni('CHECK', pod, netconf('1.1.0', { prevResult: first })));
      assertQuietSuccess(await cni('DEL', pod, netconf('1.1.0')));
      assertQuietSuccess(await cni('DEL', peer, netconf('1.1.0')));
    } finally {
      await Promise.all([pod, peer].map(dropPod));
    }
  });

  it("DEL returns with the pod's policy rules gone: the node's filter table is as before its ADD", async () => {
    const pod = await newPod('delrules');
    // The node's filter table, without counters; rules of other pods' veths (a failed test's leftovers, which the
    // resync removes) are not this pod's business.
    const filter = async () =>
      (await sh('ip', ['netns', 'exec', node.netns, 'iptables-save', '-t', 'filter'])).stdout
        .split('\n')
        .filter((l) => l !== '' && !l.startsWith('#'))
        .map((l) => l.replace(/\[\d+:\d+\]$/, ''))
        .filter((l) => l.includes(hostLinkOf(pod)) || !/weft[0-9a-f]{11}/.test(l))
        .join('\n');
    try {
      const before = await filter();
      const result = await add(pod, '1.1.0');
      const veth = hostLinkOf(pod);
      // The ADD's rules appear once its policy pass has run (within a few seconds at most).
      const deadline = Date.now() + 10_000;
      while (!(await filter()).includes(`WEFT-P-${veth}`) && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 50));
      assert.ok((await filter()).includes(`WEFT-P-${veth}`), 'the pod got its policy chain');
      assertQuietSuccess(await cni('DEL', pod, netconf('1.1.0', { prevResult: result })));
      const after = await filter();
      assert.ok(
        !after.includes(veth),
        `rules naming ${veth} remain after DEL returned:\n${after
          .split('\n')
          .filter((l) => l.includes(veth))
          .join('\n')}`,
      );
      assert.equal(after, before);
    } finally {
      await dropPod(pod);
    }
  });

  it("CHECK without prevResult is code 7 naming prevResult; the network config's dns is reported in the ADD result", async () => {
    const pod = await newPod('dns');
    try {
      const dns = {
        nameservers: ['10.96.0.10'],
        domain: 'cluster.local',
        search: ['default.svc.cluster.local', 'svc.cluster.local'],
        options: ['ndots:5'],
      };
      for (const version of ['0.4.0', '1.0.0', '1.1.0']) {
        const result = await add(pod, version, { dns });
        assert.deepEqual(result.dns, dns, `dns in ${version}`);
        const doc = assertCniError(await cni('CHECK', pod, netconf(version, { dns })), 7, version);
        assert.match(String(doc.msg), /prevResult/);
        assertQuietSuccess(await cni('CHECK', pod, netconf(version, { dns, prevResult: result })));
        assertQuietSuccess(await cni('DEL', pod, netconf(version, { dns })));
      }
    } finally {
      await dropPod(pod);
    }
  });

  /** Debian's reference plugins (containernetworking-plugins), chained after Weft as a runtime's conflist would. */
  const referencePlugins = '/usr/lib/cni';
  const chainSkip = () =>
    skipOutsideCi(
      ['loopback', 'tuning', 'bandwidth', 'portmap'].some((p) => !existsSync(path.join(referencePlugins, p))) ||
        !existsSync('/usr/sbin/iptables')
        ? `needs ${referencePlugins}/{loopback,tuning,bandwidth,portmap} and iptables (containernetworking-plugins, iptables: scripts/install-deps.sh)`
        : null,
    );
  const chain = (list: NetworkConfigList) =>
    createChainRunner({ list, netns: node.netns, cniPath: [path.join(chainDir, 'bin'), referencePlugins] });
  const runtimeConf = (pod: Pod, capabilityArgs: Record<string, unknown> = {}): RuntimeConf => ({
    containerId: pod.containerId,
    netns: pod.netns,
    ifname: pod.ifname,
    args: `IgnoreUnknown=1;K8S_POD_NAMESPACE=chain;K8S_POD_NAME=${pod.netnsName}`,
    capabilityArgs,
  });
  const natRules = async () =>
    (await sh('ip', ['netns', 'exec', node.netns, 'iptables', '-w', '5', '-t', 'nat', '-S'])).stdout;
  const ifbLinks = async () =>
    (JSON.parse(await ipn(node.netns, '-j', 'link', 'show', 'type', 'ifb')) as { ifname: string }[])
      .map((l) => l.ifname)
      .sort();
  const podIndexOf = (result: CniResultDoc, pod: Pod) =>
    (result.interfaces as { name: string; sandbox?: string }[]).findIndex(
      (i) => i.name === pod.ifname && i.sandbox === pod.netns,
    );

  /**
   * CHECK over the whole list with the cached result. Debian's portmap 1.1.1 fails CHECK for every IPv4-only pod
   * ("could not check ipv6 dnat: chain CNI-DN-… not found", containernetworking/plugins#819, fixed in 1.2.0); it runs
   * last, so when that is the one failure every plugin before it (Weft's included) has passed.
   */
  async function checkChain(
    runner: ReturnType<typeof chain>,
    rt: RuntimeConf,
    cached: CniResultDoc,
    t: TestContext,
  ): Promise<void> {
    try {
      await runner.check(rt, cached);
    } catch (err) {
      if (!(
        err instanceof ChainError &&
        err.plugin === 'portmap' &&
        err.command === 'CHECK' &&
        /could not check ipv6 dnat: chain CNI-DN-\w+ not found/.test(err.output)
      ))
        throw err;
      t.diagnostic(
        `every plugin before portmap passed CHECK; portmap 1.1.1 fails it for IPv4-only pods (containernetworking/plugins#819)`,
      );
    }
  }

  /** One TCP connection from a namespace; what the server sent, or the error code. Bounded retries while rules settle. */
  async function tcpAnswer(netns: string, host: string, port: number): Promise<string> {
    const script = `const s = require('net').connect({ host: ${JSON.stringify(host)}, port: ${port}, timeout: 3000 }); let d = '';
      s.on('data', (x) => (d += x)); s.on('end', () => console.log(d)); s.on('timeout', () => { console.log('timeout'); s.destroy(); });
      s.on('error', (e) => console.log(e.code));`;
    let answer = '';
    for (let attempt = 0; attempt < 5; attempt++) {
      answer = (
        await sh('ip', ['netns', 'exec', netns, process.execPath, '-e', script], { timeout: 10_000 })
      ).stdout.trim();
      if (!/^(timeout|E[A-Z]+)$/.test(answer)) return answer;
      await new Promise((r) => setTimeout(r, 300));
    }
    return answer;
  }

  for (const version of ['0.4.0', '1.0.0'] as const) {
    it(
      `a conflist Weft → tuning → bandwidth → portmap in ${version}, run as libcni runs it: ADD in order, CHECK, DEL in reverse leave nothing`,
      chainSkip(),
      async (t: TestContext) => {
        const pod = await newPod(`chain${version.replace(/\./g, '')}`);
        const hostPort = 18080;
        const list: NetworkConfigList = {
          cniVersion: version,
          name: 'weft',
          plugins: [
            { type: 'weft', agentSocket: node.socket },
            {
              type: 'tuning',
              mtu: 1400,
              sysctl: { 'net.ipv4.conf.eth0.log_martians': '1' },
              dataDir: path.join(chainDir, 'tuning'),
            },
            { type: 'bandwidth', capabilities: { bandwidth: true } },
            { type: 'portmap', capabilities: { portMappings: true }, snat: true },
          ],
        };
        const rt = runtimeConf(pod, {
          portMappings: [{ hostPort, containerPort: 8080, protocol: 'tcp' }],
          bandwidth: {
            ingressRate: 100_000_000,
            ingressBurst: 1_000_000,
            egressRate: 100_000_000,
            egressBurst: 1_000_000,
          },
          ignored: { notAskedFor: true }, // no plugin declares this capability: it must reach none
        });
        const runner = chain(list);
        let listener: Started | null = null;
        let result: CniResultDoc | undefined;
        const ifbBefore = await ifbLinks();
        try {
          result = await runner.add(rt);
          // The list's result is still Weft's: its interfaces and address, passed through every later plugin.
          assert.equal(result.cniVersion, version);
          const address = addressOf(result);
          assert.equal((await allocationOf(pod))?.address, address, 'IPAM holds the address the chain reports');
          // bandwidth appends the ifb device it made; everything of Weft's is as Weft printed it.
          const names = (result.interfaces as { name: string }[]).map((i) => i.name);
          assert.deepEqual(names.slice(0, 2), [hostLinkOf(pod), 'eth0']);
          assert.deepEqual(
            names.slice(2),
            (await ifbLinks()).filter((n) => !ifbBefore.includes(n)),
          );
          assert.deepEqual(result.ips, [
            {
              ...(isLegacy(version) ? { version: '4' } : {}),
              address: `${address}/32`,
              gateway: '169.254.1.1',
              interface: podIndexOf(result, pod),
            },
          ]);

          // tuning: MTU and a sysctl in the pod's namespace.
          const link = JSON.parse(await ipn(pod.netnsName, '-j', 'link', 'show', 'dev', 'eth0')) as { mtu: number }[];
          assert.equal(link[0]!.mtu, 1400);
          assert.equal(
            (
              await sh('ip', ['netns', 'exec', pod.netnsName, 'cat', '/proc/sys/net/ipv4/conf/eth0/log_martians'])
            ).stdout.trim(),
            '1',
          );
          // bandwidth: a tbf qdisc on the host veth (ingress) and an ifb device shaping egress.
          assert.match(
            (await sh('ip', ['netns', 'exec', node.netns, 'tc', 'qdisc', 'show', 'dev', hostLinkOf(pod)])).stdout,
            /qdisc tbf .*rate 100Mbit/,
          );
          assert.equal((await ifbLinks()).length, ifbBefore.length + 1, 'bandwidth made one ifb device');
          // portmap: DNAT from the host port to the pod's address.
          const rules = await natRules();
          assert.match(
            rules,
            new RegExp(`--dport ${hostPort} .*-j DNAT --to-destination ${address.replace(/\./g, '\\.')}:8080`),
            rules,
          );

          // A listener in the pod is reached through the node's host port: from the node itself (OUTPUT) and from
          // another machine on the underlay (PREROUTING; the control plane's namespace).
          const podNs = pod.netnsName;
          listener = await startUntil(
            'ip',
            [
              'netns',
              'exec',
              podNs,
              process.execPath,
              '-e',
              `require('net').createServer((s) => s.end('pod ' + ${JSON.stringify(podNs)})).listen(8080, '0.0.0.0', () => console.log('listening'))`,
            ],
            /listening/,
            { timeoutMs: 20_000 },
          );
          assert.equal(await tcpAnswer(node.netns, node.address, hostPort), `pod ${podNs}`);
          assert.equal(await tcpAnswer(state!.controlPlane.netns, node.address, hostPort), `pod ${podNs}`);

          // CHECK with the cached result: every plugin agrees.
          await checkChain(runner, rt, result, t);

          // DEL in reverse order removes the DNAT rules, the qdisc and ifb, tuning's saved state, and Weft's attachment.
          await runner.del(rt, result);
          result = undefined;
          const after = await natRules();
          assert.ok(
            !after.includes(`--dport ${hostPort}`) && !after.includes('CNI-DN-'),
            `portmap's rules are gone:\n${after}`,
          );
          assert.deepEqual(await ifbLinks(), ifbBefore, "bandwidth's ifb device is gone");
          assert.ok(!(await podHostLinks()).includes(hostLinkOf(pod)), 'the host veth (and its qdisc) is gone');
          assert.equal(await allocationOf(pod), undefined, 'the address is released');
          assert.deepEqual(
            existsSync(path.join(chainDir, 'tuning')) ? readdirSync(path.join(chainDir, 'tuning')) : [],
            [],
            "tuning's saved state is gone",
          );
          await runner.del(rt); // DEL again: every plugin finds nothing to do
        } finally {
          await listener?.stop(2000);
          if (result) await runner.del(rt, result).catch(() => {});
          await dropPod(pod);
        }
      },
    );
  }

  for (const version of ['0.3.1', '0.4.0'] as const) {
    it(
      `a conflist loopback → Weft → tuning → bandwidth → portmap in ${version}: Weft appends to a chained prevResult, in ${version}'s format, and later plugins read it`,
      chainSkip(),
      async (t: TestContext) => {
        const pod = await newPod(`lo${version.replace(/\./g, '')}`);
        const list: NetworkConfigList = {
          cniVersion: version,
          name: 'weft',
          plugins: [
            { type: 'loopback' },
            { type: 'weft', agentSocket: node.socket },
            {
              type: 'tuning',
              sysctl: { 'net.ipv4.conf.eth0.log_martians': '1' },
              dataDir: path.join(chainDir, 'tuning'),
            },
            { type: 'bandwidth', capabilities: { bandwidth: true } },
            { type: 'portmap', capabilities: { portMappings: true } },
          ],
        };
        const hostPort = 18081;
        const rt = runtimeConf(pod, {
          bandwidth: { ingressRate: 100_000_000, ingressBurst: 1_000_000 },
          portMappings: [{ hostPort, containerPort: 8080, protocol: 'tcp' }],
        });
        const runner = chain(list);
        let result: CniResultDoc | undefined;
        try {
          result = await runner.add(rt);
          assert.equal(result.cniVersion, version);
          assert.deepEqual(
            (result.interfaces as { name: string }[]).map((i) => i.name),
            ['lo', hostLinkOf(pod), 'eth0'],
          );
          const ips = result.ips as { version?: string; address: string; interface?: number }[];
          assert.deepEqual(
            ips.map((ip) => [ip.version, ip.address, ip.interface]),
            [
              ['4', '127.0.0.1/8', 0],
              ['6', '::1/128', 0],
              ['4', `${(await allocationOf(pod))!.address}/32`, 2],
            ],
            "loopback's entries first, then Weft's with its interface index shifted, every one with its 0.x version",
          );
          assert.equal(
            (
              await sh('ip', ['netns', 'exec', pod.netnsName, 'cat', '/proc/sys/net/ipv4/conf/eth0/log_martians'])
            ).stdout.trim(),
            '1',
          );
          // bandwidth found Weft's host veth, and portmap Weft's address (not lo's 127.0.0.1), in the prevResult Weft passed on.
          assert.match(
            (await sh('ip', ['netns', 'exec', node.netns, 'tc', 'qdisc', 'show', 'dev', hostLinkOf(pod)])).stdout,
            /qdisc tbf /,
          );
          assert.match(
            await natRules(),
            new RegExp(
              `--dport ${hostPort} .*-j DNAT --to-destination ${ips[2]!.address.split('/')[0]!.replace(/\./g, '\\.')}:8080`,
            ),
          );
          if (version === '0.4.0') await checkChain(runner, rt, result, t);
          else await assert.rejects(runner.check(rt, result), /does not support the CHECK command/);
          await runner.del(rt, result);
          result = undefined;
          assert.ok(!(await podHostLinks()).includes(hostLinkOf(pod)), 'the host veth (and its qdisc) is gone');
          assert.ok(!(await natRules()).includes(`--dport ${hostPort}`), "portmap's rules are gone");
          assert.equal(await allocationOf(pod), undefined);
        } finally {
          if (result) await runner.del(rt, result).catch(() => {});
          await dropPod(pod);
        }
      },
    );
  }

  it('fifty concurrent ADDs on one node all succeed with distinct addresses; CHECK passes for each; DELs remove everything', async (t: TestContext) => {
    const pods: Pod[] = [];
    try {
      for (let i = 0; i < 50; i++) pods.push(await newPod(`c${i}`));
      const [allocsBefore, linksBefore, routesBefore] = await Promise.all([
        nodeAllocations(),
        podHostLinks(),
        podHostRoutes(),
      ]);
      const started = Date.now();
      const runs = await Promise.all(
        pods.map(async (p) => {
          const t0 = performance.now();
          const run = await cni('ADD', p, netconf('1.1.0'), {
            CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=load;K8S_POD_NAME=${p.netnsName}`,
          });
          return { run, ms: performance.now() - t0 };
        }),
      );
      const wall = Date.now() - started;
      const failed = runs.filter((r) => r.run.status !== 0).map((r) => r.run.stdout || r.run.stderr);
      assert.deepEqual(failed, [], 'every ADD succeeded');
      const results = runs.map((r) => onlyDocument(r.run));
      const addresses = results.map(addressOf);
      assert.equal(new Set(addresses).size, 50, `distinct addresses: ${addresses.join(', ')}`);
      const held = new Map((await nodeAllocations()).map((a) => [a.handle, a.address]));
      pods.forEach((p, i) =>
        assert.equal(held.get(`${p.containerId}/eth0`), addresses[i], `IPAM holds ${p.containerId}'s address`),
      );

      const sorted = runs.map((r) => r.ms).sort((x, y) => x - y);
      const pct = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!.toFixed(0);
      t.diagnostic(
        `50 concurrent ADDs on one node: wall ${wall} ms, p50 ${pct(0.5)} ms, p95 ${pct(0.95)} ms, max ${sorted.at(-1)!.toFixed(0)} ms`,
      );

      const checks = await Promise.all(
        pods.map((p, i) => cni('CHECK', p, netconf('1.1.0', { prevResult: results[i] }))),
      );
      checks.forEach(assertQuietSuccess);

      const t1 = Date.now();
      const dels = await Promise.all(pods.map((p) => cni('DEL', p, netconf('1.1.0'))));
      t.diagnostic(`50 concurrent DELs: wall ${Date.now() - t1} ms`);
      dels.forEach(assertQuietSuccess);
      const [allocsAfter, linksAfter, routesAfter] = await Promise.all([
        nodeAllocations(),
        podHostLinks(),
        podHostRoutes(),
      ]);
      assert.deepEqual(
        allocsAfter.map((a) => a.handle).sort(),
        allocsBefore.map((a) => a.handle).sort(),
        'every address released',
      );
      assert.deepEqual(linksAfter, linksBefore, 'every host veth removed');
      assert.deepEqual(routesAfter, routesBefore, 'every host route removed');
    } finally {
      for (const p of pods) await dropPod(p);
    }
  });
});
